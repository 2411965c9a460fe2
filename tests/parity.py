"""The shared parity machinery: relocated exports and the matrix every LLM family must pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .triton_requests import batch_statistics, infer_concurrently, settled_engine_counters

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / ".work" / "figures"
SHORT_PROMPT = "a photo of"
LONG_QUESTION = "what colour is the large object near the middle of this small image?"
DECODING = {"greedy": {}, "beam3": {"beam_width": 3}}
# Different sizes, formats and modes: palette PNG, TIFF, WebP, 16-bit grey PNG, RGBA PNG, CMYK JPEG,
# BMP, animated GIF.
MATRIX_IMAGES = (
    "checkerboard_palette.png",
    "colour_tiles.tif",
    "gradient_square.webp",
    "gray16_ramp.png",
    "green_stripes_rgba.png",
    "house_cmyk.jpg",
    "sailboat.bmp",
    "traffic_light.gif",
)
# The server waits this long to fill a batch, so that requests sent together share one.
QUEUE_DELAY_US = 50_000


def build_relocated_repository(base: Path, family: str, **export_options) -> dict[str, Path]:
    """A tiny checkpoint, its export, then the export moved elsewhere and the checkpoint deleted.

    Every served test then also proves the repository is relocatable and self-contained. A copy of
    the checkpoint is kept aside for the transformers reference.
    """
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint(base / "checkpoint", family, image_size=64)
    reference_copy = shutil.copytree(checkpoint, base / "reference_checkpoint")
    exported = base / "exported"
    options = ExportOptions(**{"max_batch_size": 8, "queue_delay_us": QUEUE_DELAY_US, **export_options})
    export_repository(str(checkpoint), exported, options, quiet=True)
    moved = base / "moved" / "repository"
    moved.parent.mkdir()
    shutil.move(exported, moved)
    shutil.rmtree(checkpoint)
    return {"repository": moved, "reference_checkpoint": reference_copy}


def parity_cases(vqa_prompt: str) -> list[tuple[str, str | None, dict, str, str]]:
    """(image, prompt or None, settings, decoding, kind); each group of four is sent at once."""
    long_prompt = vqa_prompt.replace("{question}", LONG_QUESTION)
    vqa = vqa_prompt.replace("{question}", "what is in the picture?")
    cases = []
    for name in MATRIX_IMAGES:
        for decoding, settings in DECODING.items():
            cases.append((name, None, settings, decoding, "caption"))
            cases.append((name, vqa, settings, decoding, "vqa"))
            cases.append((name, SHORT_PROMPT, settings, decoding, "pair"))
            cases.append((name, long_prompt, settings, decoding, "pair"))
    return cases


def run_parity_matrix(served, images: dict[str, bytes], vqa_prompt: str, family: str) -> tuple[dict, list]:
    """Serve the whole matrix and compare with transformers; returns (figures, mismatches).

    Each (image, decoding) group of four goes at once: the two prompts of different lengths and the
    caption and VQA requests reach the LLM stage together and share its batch.
    """
    cases = parity_cases(vqa_prompt)
    before = batch_statistics(served.grpc_url, "blip2_stream")
    steps_before, rows_before = settled_engine_counters(served.server.metrics_url)
    outcomes = []
    for start in range(0, len(cases), 4):
        group = cases[start : start + 4]
        requests = [
            {"image": images[name], "prompt": prompt, **settings} for name, prompt, settings, *_ in group
        ]
        outcomes.extend(infer_concurrently(served.grpc_url, requests))
    after = batch_statistics(served.grpc_url, "blip2_stream", at_least=before[0] + len(cases))
    steps_after, rows_after = settled_engine_counters(served.server.metrics_url)

    served.reference_model.margins.clear()
    mismatches, counts, captions = [], {}, set()
    for (name, prompt, settings, decoding, kind), outcome in zip(cases, outcomes, strict=True):
        expected = served.reference(images[name], prompt, **settings)
        if kind == "caption":
            captions.add(expected)
        tally = counts.setdefault(f"{kind}/{decoding}", [0, 0])
        tally[1] += 1
        if outcome.text == expected:
            tally[0] += 1
        else:
            mismatches.append((name, prompt, decoding, outcome, expected))
    margins = served.reference_model.margins
    figures = {
        "family": family,
        "cases": len(cases),
        "equal": len(cases) - len(mismatches),
        "by_kind": {key: f"{ok}/{total}" for key, (ok, total) in counts.items()},
        "smallest_greedy_margin": min(margins),
        "greedy_steps_checked": len(margins),
        "llm_inferences": after[0] - before[0],
        "llm_executions": after[1] - before[1],
        "engine_decode_steps": steps_after - steps_before,
        "engine_decoded_rows": rows_after - rows_before,
        "distinct_captions": len(captions),
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{family}_parity.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\n{family} parity:", json.dumps(figures))
    return figures, mismatches


def check_parity_figures(figures: dict, mismatches: list) -> None:
    """What every family's matrix must show."""
    assert not mismatches, mismatches[:3]
    assert figures["llm_inferences"] == figures["cases"]
    assert figures["engine_decoded_rows"] > figures["engine_decode_steps"], (
        "requests sent together never shared a decode step"
    )
    # fp32 differences between a batched, left-padded run and a single one measured 4e-6 in these
    # logits: a top-1 margin ten times larger keeps an equal answer from being luck.
    assert figures["smallest_greedy_margin"] > 1e-4
    assert figures["distinct_captions"] > 2, "the image barely influences the text"


# Every contract setting, checked against transformers for each family.
GENERATION_SETTINGS_CASES = [
    {"max_tokens": 5},
    {"min_tokens": 12, "max_tokens": 14},
    {"repetition_penalty": 1.5},
    {"no_repeat_ngram_size": 2},
    {"beam_width": 2, "length_penalty": 0.5},
    {"temperature": 0.7, "top_p": 0.9, "random_seed": 7},
    {"temperature": 1.0, "top_k": 5, "random_seed": 11},
]


def check_seeded_sampling(served, image: bytes) -> None:
    """Same seed and request → same text, sent together or not, equal to seeded transformers."""
    settings = {"temperature": 1.0, "top_k": 20, "random_seed": 1234, "max_tokens": 12}
    other = {**settings, "random_seed": 99}
    first, second, third = infer_concurrently(
        served.grpc_url,
        [{"image": image, **settings}, {"image": image, **settings}, {"image": image, **other}],
    )
    assert first.text == second.text
    assert first.text == served.reference(image, None, **settings)
    assert third.text == served.reference(image, None, **other)


def check_settings_parity(served, image: bytes, prompt: str, settings: dict) -> None:
    (outcome,) = infer_concurrently(served.grpc_url, [{"image": image, "prompt": prompt, **settings}])
    assert outcome.text == served.reference(image, prompt, **settings)
