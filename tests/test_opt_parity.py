"""Served OPT captions and answers equal transformers, string for string (fp32, greedy and beam)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .triton_requests import batch_statistics, infer_concurrently

pytestmark = pytest.mark.server

VQA_PROMPT = "Question: what is in the picture? Answer:"
SHORT_PROMPT = "a photo of"
LONG_PROMPT = "Question: what colour is the large object near the middle of this small image? Answer:"
DECODING = {"greedy": {}, "beam3": {"beam_width": 3}}
FIGURES = Path(__file__).resolve().parent.parent / ".work" / "figures"


def _cases(images: list[Path]) -> list[tuple[str, str, dict]]:
    """(image name, prompt or None, settings) for the whole matrix; pairs of prompts stay adjacent."""
    cases = []
    for image in images:
        for decoding, settings in DECODING.items():
            cases.append((image.name, None, settings, decoding, "caption"))
            cases.append((image.name, VQA_PROMPT, settings, decoding, "vqa"))
            cases.append((image.name, SHORT_PROMPT, settings, decoding, "pair"))
            cases.append((image.name, LONG_PROMPT, settings, decoding, "pair"))
    return cases


def test_parity_matrix_equals_transformers(opt_server, sample_images):
    images = sample_images[:8]
    assert len(images) >= 6
    data = {path.name: path.read_bytes() for path in images}
    cases = _cases(images)
    before = batch_statistics(opt_server.grpc_url, "blip2_llm")
    served = []
    # Each (image, decoding) group of four goes at once: the two prompts of different lengths and the
    # caption and VQA requests reach the LLM stage together and share its batch.
    for start in range(0, len(cases), 4):
        group = cases[start : start + 4]
        requests = [
            {"image": data[name], "prompt": prompt, **settings} for name, prompt, settings, *_ in group
        ]
        served.extend(infer_concurrently(opt_server.grpc_url, requests))
    after = batch_statistics(opt_server.grpc_url, "blip2_llm")

    opt_server.reference_model.margins.clear()
    mismatches, counts = [], {}
    for (name, prompt, settings, decoding, kind), outcome in zip(cases, served, strict=True):
        expected = opt_server.reference(data[name], prompt, **settings)
        key = f"{kind}/{decoding}"
        counts.setdefault(key, [0, 0])
        counts[key][1] += 1
        if outcome.text == expected:
            counts[key][0] += 1
        else:
            mismatches.append((name, prompt, decoding, outcome, expected))
    margins = opt_server.reference_model.margins
    inferences, executions = after[0] - before[0], after[1] - before[1]
    figures = {
        "cases": len(cases),
        "equal": len(cases) - len(mismatches),
        "by_kind": {k: f"{v[0]}/{v[1]}" for k, v in counts.items()},
        "smallest_greedy_margin": min(margins),
        "greedy_steps_checked": len(margins),
        "llm_inferences": inferences,
        "llm_executions": executions,
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "opt_parity.json").write_text(json.dumps(figures, indent=2))
    print("\nOPT parity:", json.dumps(figures))
    assert not mismatches, mismatches[:3]
    assert inferences == len(cases)
    assert executions < inferences, "requests sent together never shared a batch in the LLM stage"
    assert min(margins) > 1e-3


def test_sampling_with_seed_is_reproducible(opt_server, sample_images):
    image = sample_images[0].read_bytes()
    settings = {"temperature": 1.0, "top_k": 20, "random_seed": 1234, "max_tokens": 12}
    first, second, other = infer_concurrently(
        opt_server.grpc_url,
        [
            {"image": image, **settings},
            {"image": image, **settings},
            {"image": image, **{**settings, "random_seed": 99}},
        ],
    )
    assert first.text == second.text
    assert first.text == opt_server.reference(image, None, **settings)
    assert other.text == opt_server.reference(image, None, **{**settings, "random_seed": 99})


@pytest.mark.parametrize(
    "settings",
    [
        {"max_tokens": 5},
        {"min_tokens": 12, "max_tokens": 14},
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
        {"beam_width": 2, "length_penalty": 0.5},
    ],
    ids=lambda s: ",".join(s),
)
def test_generation_settings_equal_transformers(opt_server, sample_images, settings):
    image = sample_images[1].read_bytes()
    (outcome,) = infer_concurrently(opt_server.grpc_url, [{"image": image, "prompt": VQA_PROMPT, **settings}])
    assert outcome.text == opt_server.reference(image, VQA_PROMPT, **settings)
