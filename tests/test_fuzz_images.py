"""Image decoding, fuzzed property-style with hypothesis.

Random bytes, mutated JPEG / PNG / GIF / WebP / TIFF / BMP files and freshly encoded images of random
size, mode and format options go through ``decode_image`` and the preprocessor a stub runs. Each
must end in a valid result (an RGB image within the limits; finite ``[3, H, W]`` pixel values) or
``RequestValidationError``: nothing else may escape, and no case may take long.

The default run is short and derandomised (the same cases every run, a few hundred in all, well
under a minute). ``BLIP2_FUZZ_EXAMPLES=20000`` makes each test run that many cases, with a fresh
random seed, for long runs; ``.work/figures/fuzz.json`` records how many cases ran.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from blip2_triton.fixtures import samples_dir
from blip2_triton.runtime.contract import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
from blip2_triton.runtime.errors import RequestValidationError
from blip2_triton.runtime.images import decode_image

LONG_RUN = int(os.environ.get("BLIP2_FUZZ_EXAMPLES", "0"))
# A decode of any case here takes milliseconds; the bound only catches a hang or a runaway decode on
# a loaded machine, so it is generous.
TIME_BOUND_S = 10.0
FIGURES = Path(__file__).resolve().parent.parent / ".work" / "figures"
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")
CASES: dict[str, int] = {}


def fuzz_settings(default_examples: int):
    return settings(
        max_examples=LONG_RUN or default_examples,
        derandomize=not LONG_RUN,
        database=None,
        deadline=None,  # time is checked by the property itself, with a generous bound
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _seed_files() -> list[bytes]:
    """Valid files of every fuzzed format: the shipped samples and small encoded images."""
    suffixes = (".jpg", ".png", ".gif", ".webp", ".tif", ".bmp")
    seeds = [p.read_bytes() for p in sorted(samples_dir().iterdir()) if p.suffix.lower() in suffixes]
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    for fmt in FORMATS:
        seeds.append(_encode(picture, fmt))
    seeds.append(_encode(picture.convert("RGBA"), "PNG"))
    seeds.append(_encode(picture.convert("P"), "GIF", save_all=True, append_images=[picture.convert("P")]))
    seeds.append(_encode(picture, "JPEG", progressive=True, quality=30))
    seeds.append(_encode(picture, "TIFF", compression="tiff_deflate"))
    seeds.append(_encode(picture, "WEBP", lossless=True))
    return [s for s in seeds if s]


SEEDS = _seed_files()


def check_decoding(data: bytes, kind: str) -> None:
    """The property: a valid RGB image or RequestValidationError, quickly; nothing else."""
    CASES[kind] = CASES.get(kind, 0) + 1
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; the stub logs it
            image = decode_image(data)
    except RequestValidationError as exc:
        message = str(exc)
        assert message and "\n" not in message
    else:
        assert image.mode == "RGB"
        width, height = image.size
        assert width > 0 and height > 0 and width * height <= MAX_IMAGE_PIXELS
        assert max(width, height) / min(width, height) <= MAX_ASPECT_RATIO
        image.load()
    assert time.perf_counter() - started < TIME_BOUND_S


@st.composite
def mutated_files(draw) -> bytes:
    """A seed file with a few random flips, cuts, insertions, duplications or splices."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(("flip", "truncate", "insert", "duplicate", "splice", "zero")))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif action == "duplicate":
            length = draw(st.integers(1, 512))
            data[position:position] = data[position : position + length]
        elif action == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[position:] = other[draw(st.integers(0, len(other) - 1)) :]
        elif action == "zero":
            length = draw(st.integers(1, 64))
            data[position : position + length] = bytes(len(data[position : position + length]))
    return bytes(data)


@st.composite
def header_with_junk(draw) -> bytes:
    """The first bytes of a valid file (a real header), then random bytes."""
    seed = draw(st.sampled_from(SEEDS))
    cut = draw(st.integers(1, min(len(seed), 256)))
    return seed[:cut] + draw(st.binary(max_size=2048))


@st.composite
def encoded_images(draw) -> bytes:
    """A freshly encoded image of random size, mode and format options."""
    fmt = draw(st.sampled_from(FORMATS))
    modes = {"JPEG": ("RGB", "L", "CMYK"), "BMP": ("RGB", "L", "P", "1"), "GIF": ("P", "L", "RGB")}
    mode = draw(st.sampled_from(modes.get(fmt, ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"))))
    width = draw(st.integers(1, 96))
    height = draw(st.integers(1, 96))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode if mode != "I;16" else "I").convert(mode)
    options = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(1, 95)), "progressive": draw(st.booleans())}
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans()), "quality": draw(st.integers(0, 100))}
    try:
        return _encode(image, fmt, **options)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store
        return _encode(image.convert("RGB"), "PNG")


@fuzz_settings(100)
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check_decoding(data, "random bytes")


@fuzz_settings(200)
@given(mutated_files())
def test_mutated_files(data: bytes) -> None:
    check_decoding(data, "mutated files")


@fuzz_settings(60)
@given(header_with_junk())
def test_valid_header_then_junk(data: bytes) -> None:
    check_decoding(data, "header + junk")


@fuzz_settings(60)
@given(encoded_images())
def test_encoded_images_decode(data: bytes) -> None:
    check_decoding(data, "encoded images")


@pytest.fixture(scope="module")
def preprocessor(tmp_path_factory):
    """The preprocessor a ``blip2_preprocess`` stub runs, with a saved BLIP image processor."""
    from transformers import BlipImageProcessor

    from blip2_triton.runtime.vision.preprocess import ImagePreprocessor

    folder = tmp_path_factory.mktemp("processor")
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return ImagePreprocessor(folder)


def test_preprocessor_on_fuzzed_files(preprocessor) -> None:
    @fuzz_settings(60)
    @given(st.one_of(mutated_files(), encoded_images(), header_with_junk()))
    def run(data: bytes) -> None:
        CASES["preprocessor"] = CASES.get("preprocessor", 0) + 1
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pixels = preprocessor(data)
        except RequestValidationError:
            pass
        else:
            assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
            assert np.isfinite(pixels).all()
        assert time.perf_counter() - started < TIME_BOUND_S

    run()


def test_record_fuzz_figures() -> None:
    """Runs last in this file: how many cases the tests above ran."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = {"cases": CASES, "total": sum(CASES.values()), "long_run": bool(LONG_RUN)}
    (FIGURES / "fuzz.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nfuzz cases:", json.dumps(figures))
