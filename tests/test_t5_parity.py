"""Flan-T5 BLIP-2 (encoder-decoder LLM stage): served text equals transformers, string for string.

A tiny T5-style checkpoint is built here, exported, the repository moved elsewhere and the
checkpoint deleted (relocation), and a real tritonserver serves it through the same public `blip2`
ensemble as OPT. The parity matrix, the generation settings, bad inputs and the fp16 refusal are
checked against it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import tritonclient.grpc as grpcclient

from .conftest import SAMPLES
from .parity import (
    GENERATION_SETTINGS_CASES,
    MATRIX_IMAGES,
    SHORT_PROMPT,
    check_parity_figures,
    check_seeded_sampling,
    check_settings_parity,
    run_parity_matrix,
)
from .triton_requests import assert_rejected, infer_concurrently, settled_engine_counters

pytestmark = pytest.mark.server

VQA_PROMPT = "Question: what is in the picture? Short answer:"
LONG_PROMPT = "Question: what colour is the large object near the middle of this small image? Short answer:"


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {name: (SAMPLES / name).read_bytes() for name in MATRIX_IMAGES}


def test_checkpoint_is_flan_t5_shaped(t5_build):
    from transformers import AutoConfig, AutoTokenizer

    text = AutoConfig.from_pretrained(t5_build["reference_checkpoint"]).text_config
    assert (text.model_type, text.decoder_start_token_id, text.pad_token_id, text.eos_token_id) == (
        "t5",
        0,
        0,
        1,
    )
    assert text.bos_token_id == 1  # what transformers' BLIP-2 conversion sets for Flan-T5
    tokenizer = AutoTokenizer.from_pretrained(t5_build["reference_checkpoint"])
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert tokenizer("a photo of")["input_ids"][-1] == 1
    assert tokenizer("")["input_ids"] == [1]


def test_served_llm_stage_says_t5(t5_server):
    client = grpcclient.InferenceServerClient(t5_server.grpc_url)
    try:
        config = client.get_model_config("blip2_stream", as_json=True)["config"]
    finally:
        client.close()
    assert config["parameters"]["llm_family"]["string_value"] == "t5"


def test_parity_matrix_equals_transformers(t5_server, images):
    figures, mismatches = run_parity_matrix(t5_server, images, "Question: {question} Short answer:", "t5")
    check_parity_figures(figures, mismatches)


def test_two_prompts_of_different_length_in_one_batch_equal_transformers(t5_server, images):
    """The pair shares decode steps of the engine (each with its own encoder output and mask) and
    each gets what it gets alone. Sent again if the server happened to run them apart."""
    image = images["green_stripes_rgba.png"]
    requests = [{"image": image, "prompt": SHORT_PROMPT}, {"image": image, "prompt": LONG_PROMPT}]
    metrics = t5_server.server.metrics_url
    for _ in range(5):
        steps, rows = settled_engine_counters(metrics)
        outcomes = infer_concurrently(t5_server.grpc_url, requests)
        after_steps, after_rows = settled_engine_counters(metrics)
        if after_rows - rows > after_steps - steps:
            break
    else:
        pytest.fail("the two requests never shared a decode step")
    assert [o.text for o in outcomes] == [t5_server.reference(image, r["prompt"]) for r in requests]


def test_sampling_with_seed_is_reproducible(t5_server, images):
    check_seeded_sampling(t5_server, images["sailboat.bmp"])


@pytest.mark.parametrize("settings", GENERATION_SETTINGS_CASES, ids=lambda s: ",".join(s))
def test_generation_settings_equal_transformers(t5_server, images, settings):
    check_settings_parity(t5_server, images["colour_tiles.tif"], VQA_PROMPT, settings)


def test_bad_inputs_are_rejected_and_good_neighbours_answered(t5_server, images):
    good = images["house_cmyk.jpg"]
    bad_requests = [
        ({"image": b"hello, this is plain text and no image at all"}, "not a recognised image format"),
        ({"image": good, "max_tokens": 0}, "'max_tokens' must be between 1 and 512"),
        ({"image": good, "temperature": math.nan}, "'temperature' must be a finite number"),
        (
            {"image": good, "prompt": "a photo of a small red dog " * 80},
            "the encoder takes at most 512 tokens",
        ),
        ({"image": good, "prompt": "a <image> of"}, "must not contain the image token"),
    ]
    outcomes = infer_concurrently(
        t5_server.grpc_url,
        [request for request, _ in bad_requests] + [{"image": good, "prompt": SHORT_PROMPT}],
    )
    for outcome, (_, fragment) in zip(outcomes, bad_requests, strict=False):
        assert_rejected(outcome, fragment)
    assert outcomes[-1].text == t5_server.reference(good, SHORT_PROMPT)


def test_engine_without_bos_uses_the_empty_prompt_encoding(t5_server, images):
    """A T5 checkpoint without ``text_config.bos_token_id`` (transformers' ``generate`` then fails
    without a prompt) gets what ``Blip2Processor`` gives for the prompt "": image tokens + ``</s>``."""
    import torch

    from blip2_triton.runtime.images import decode_image
    from blip2_triton.runtime.llm.beam_search import BeamSearch
    from blip2_triton.runtime.llm.checkpoint import GenerationRequest, load_language_model
    from blip2_triton.runtime.llm.prompt_check import PromptChecker
    from blip2_triton.runtime.settings import parse_settings
    from blip2_triton.runtime.vision.encoder import OnnxVisionEncoder
    from blip2_triton.runtime.vision.preprocess import ImagePreprocessor

    repository = t5_server.repository
    model, tokenizer, settings = load_language_model(repository / "blip2_stream" / "1")
    settings = dataclasses.replace(settings, bos_token_id=None)
    preprocess = ImagePreprocessor(repository / "blip2_preprocess" / "1" / "image_processor")
    vision = OnnxVisionEncoder(repository / "blip2_vision" / "1" / "model.onnx")
    image = images["gradient_square.webp"]
    request = GenerationRequest(vision(preprocess(image)[None])[0], "", parse_settings({}))
    ids = PromptChecker(tokenizer, settings).check(request.prompt, request.settings)
    assert ids[-1] == 1  # image tokens + "</s>": the tokenizer's encoding of ""
    text = BeamSearch(model, tokenizer, settings).generate(request, ids)

    reference = t5_server.reference_model
    inputs = reference.processor(images=decode_image(image), text="", return_tensors="pt")
    assert inputs["input_ids"][0, -1].item() == 1
    with torch.inference_mode():
        sequences = reference.model.generate(**inputs, max_new_tokens=30)
    assert text == reference.processor.tokenizer.decode(sequences[0], skip_special_tokens=True).strip()
    assert text == t5_server.reference(image, None)  # the same as with bos_token_id 1


def test_fp16_export_is_refused_unless_forced(t5_build, tmp_path):
    from blip2_triton.export.errors import ExportError
    from blip2_triton.export.repository import ExportOptions, export_repository

    source = str(t5_build["reference_checkpoint"])
    for device in ("cpu", "cuda"):
        with pytest.raises(ExportError) as refused:
            export_repository(
                source, tmp_path / f"refused-{device}", ExportOptions(dtype="fp16", device=device)
            )
        message = str(refused.value)
        assert "\n" not in message
        assert "refused for Flan-T5" in message and "bf16 or fp32" in message and "--force" in message
        assert not (tmp_path / f"refused-{device}").exists()
    manifest = export_repository(
        source, tmp_path / "forced", ExportOptions(dtype="fp16", force=True), quiet=True
    )
    assert manifest["dtype"] == "fp16" and manifest["family"] == "t5"
    settings = json.loads((tmp_path / "forced" / "blip2_stream" / "1" / "llm_settings.json").read_text())
    assert settings["family"] == "t5" and settings["dtype"] == "fp16"
