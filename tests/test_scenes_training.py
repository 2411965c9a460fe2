"""The scene training feeds the models what serving feeds them, and scores what serving scores."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from blip2_triton.scenes import caption, generate_scene, render_scene
from blip2_triton.scenes.generator import POSITIONS, SHAPES
from blip2_triton.scenes.language import POSITION_PHRASES, questions, vqa_prompt
from blip2_triton.scenes.metrics import recall_at_k, rerank, token_f1
from blip2_triton_train.data import IGNORE, SceneSet, SequenceBuilder, pixel_values, shape_positions
from blip2_triton_train.models import SceneModelSpec, new_captioner, new_retriever, processor_for
from blip2_triton_train.negatives import altered_caption
from blip2_triton_train.plot import plot_losses
from blip2_triton_train.retriever_training import TextBatcher, image_features, itm_logits, text_features
from blip2_triton_train.vocab import bert_tokenizer, opt_tokenizer

SPEC = SceneModelSpec()


@pytest.fixture(scope="module")
def opt_processor():
    return processor_for(opt_tokenizer(SPEC.vocab_size), SPEC)


def test_scene_words_are_single_tokens(opt_processor) -> None:
    tokenizer = opt_processor.tokenizer
    text = "two purple triangles and an orange star on a grey background"
    assert tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])[1:] == [
        f"▁{w}" for w in text.split()
    ]


def test_training_sequences_are_the_served_input_ids(opt_processor) -> None:
    model = new_captioner(opt_processor.tokenizer, SPEC)
    builder = SequenceBuilder(opt_processor.tokenizer, SPEC.num_query_tokens, model.config.image_token_id)
    image = render_scene(generate_scene(3), SPEC.image_size)
    prompt = vqa_prompt("how many stars are there?")
    ids, labels = builder.example(prompt, "two")
    served = opt_processor(images=image, text=prompt)["input_ids"][0]
    assert ids[: len(served)] == list(served)
    tail = ids[len(served) :]
    assert opt_processor.tokenizer.decode(tail, skip_special_tokens=True).strip() == "two"
    assert tail[-1] == opt_processor.tokenizer.eos_token_id
    assert labels == [IGNORE] * len(served) + tail
    caption_ids, _ = builder.example("", "a red circle on a white background")
    # No prompt: generate() appends the text config's bos after the image tokens.
    assert caption_ids[: SPEC.num_query_tokens + 1] == [
        model.config.image_token_id
    ] * SPEC.num_query_tokens + [model.config.text_config.bos_token_id]


def test_position_targets_are_the_answers_to_where_questions() -> None:
    scenes = [generate_scene(seed) for seed in range(200)]
    targets = shape_positions(scenes)
    asked = 0
    for scene, row in zip(scenes, targets.tolist(), strict=True):
        answers = {
            qa.question.removeprefix("where is the ").removesuffix("?"): qa.answer
            for qa in questions(scene)
            if qa.kind == "position"
        }
        for shape, target in zip(SHAPES, row, strict=True):
            if shape in answers:
                asked += 1
                assert POSITION_PHRASES[list(POSITIONS)[target]] == answers[shape]
            else:
                assert target == IGNORE
    assert asked > 100


def test_pixel_values_are_the_image_processor_s(opt_processor) -> None:
    data = SceneSet.render([1, 2], SPEC.image_size)
    ours = pixel_values(
        data.images, opt_processor.image_processor.image_mean, opt_processor.image_processor.image_std
    )
    theirs = opt_processor.image_processor(
        [render_scene(s, SPEC.image_size) for s in data.scenes], return_tensors="pt"
    )["pixel_values"]
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_retrieval_training_scores_are_the_model_s() -> None:
    processor = processor_for(bert_tokenizer(SPEC.vocab_size), SPEC)
    torch.manual_seed(0)
    model = new_retriever(processor.tokenizer, SPEC).eval()
    scene = generate_scene(5)
    text = caption(scene)
    inputs = processor(images=render_scene(scene, SPEC.image_size), text=text, return_tensors="pt")
    with torch.no_grad():
        itm = model(**inputs, use_image_text_matching_head=True).logits_per_image
        itc = model(**inputs).logits_per_image
        vision = model.vision_model(inputs["pixel_values"]).last_hidden_state
        ids, mask = TextBatcher(processor.tokenizer)([text])
        ours_itm = itm_logits(model, vision, ids, mask)
        ours_itc = torch.einsum("bqd,td->bqt", image_features(model, vision), text_features(model, ids, mask))
    assert torch.allclose(itm, ours_itm, atol=1e-5)
    assert torch.allclose(itc, ours_itc.amax(dim=1), atol=1e-5)


def test_altered_captions_differ_from_the_caption() -> None:
    rng = random.Random(0)
    for seed in range(200):
        scene = generate_scene(seed)
        assert altered_caption(scene, rng) != caption(scene)


def test_metrics() -> None:
    assert token_f1("two red circles", "two red circles") == 1.0
    assert token_f1("three red circles", "two red circles") == pytest.approx(2 / 3)
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.1, 0.2]])
    assert recall_at_k(scores, [0, 1, 2], ks=(1, 2)) == {1: pytest.approx(2 / 3), 2: 1.0}
    fixed = rerank(scores, lambda row, cols: [1.0 if c == row else 0.0 for c in cols], top=2)
    assert recall_at_k(fixed, [0, 1, 2], ks=(1,)) == {1: 1.0}


def test_loss_plot(tmp_path) -> None:
    path = plot_losses({"a": [3.0, 2.0, 1.0, 0.5], "b": [1.0, 0.9]}, tmp_path / "loss.png", "t")
    assert path.stat().st_size > 1000


def test_captioned_grid(tmp_path) -> None:
    from PIL import Image

    from blip2_triton.scenes.figure import TEXT_HEIGHT, TILE, save_grid

    truth = caption(generate_scene(7))
    path = save_grid([(7, truth, truth), (8, caption(generate_scene(8)), "a red circle")], tmp_path / "g.png")
    with Image.open(path) as image:
        assert image.size == (4 * TILE, TILE + TEXT_HEIGHT)


def test_train_settings_parse_booleans() -> None:
    from blip2_triton_train.train import _overridden
    from blip2_triton_train.training import TrainConfig

    assert _overridden(TrainConfig(), ["retrieval_tunes_vision=0"]).retrieval_tunes_vision is False
    assert _overridden(TrainConfig(), ["retrieval_tunes_vision=true"]).retrieval_tunes_vision is True
    with pytest.raises(SystemExit):
        _overridden(TrainConfig(), ["retrieval_tunes_vision=yes please"])
