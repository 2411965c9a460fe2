"""Served OPT captions and answers equal transformers, string for string (fp32, greedy and beam)."""

from __future__ import annotations

import pytest

from .conftest import SAMPLES
from .parity import MATRIX_IMAGES, check_parity_figures, run_parity_matrix
from .triton_requests import infer_concurrently

pytestmark = pytest.mark.server

VQA_PROMPT = "Question: what is in the picture? Answer:"


def test_parity_matrix_equals_transformers(opt_server):
    images = {name: (SAMPLES / name).read_bytes() for name in MATRIX_IMAGES}
    figures, mismatches = run_parity_matrix(opt_server, images, "Question: {question} Answer:", "opt")
    check_parity_figures(figures, mismatches)


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
