"""Served OPT captions and answers equal transformers, string for string (fp32, greedy and beam)."""

from __future__ import annotations

import pytest

from .conftest import SAMPLES
from .parity import (
    GENERATION_SETTINGS_CASES,
    MATRIX_IMAGES,
    check_parity_figures,
    check_seeded_sampling,
    check_settings_parity,
    run_parity_matrix,
)

pytestmark = pytest.mark.server

VQA_PROMPT = "Question: what is in the picture? Answer:"


def test_parity_matrix_equals_transformers(opt_server):
    images = {name: (SAMPLES / name).read_bytes() for name in MATRIX_IMAGES}
    figures, mismatches = run_parity_matrix(opt_server, images, "Question: {question} Answer:", "opt")
    check_parity_figures(figures, mismatches)


def test_sampling_with_seed_is_reproducible(opt_server, sample_images):
    check_seeded_sampling(opt_server, sample_images[0].read_bytes())


@pytest.mark.parametrize("settings", GENERATION_SETTINGS_CASES, ids=lambda s: ",".join(s))
def test_generation_settings_equal_transformers(opt_server, sample_images, settings):
    check_settings_parity(opt_server, sample_images[1].read_bytes(), VQA_PROMPT, settings)
