"""Bad requests get INVALID_ARG with a one-line message; good requests batched with them still get
their right answers, and the server stays ready."""

from __future__ import annotations

import io
import math

import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from .test_images import png_with_size
from .triton_requests import assert_rejected, infer_concurrently

pytestmark = pytest.mark.server


def _png(width: int, height: int, colour=(30, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _ppm() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="PPM")
    return buffer.getvalue()


def _bad_images(sample_images) -> dict[str, tuple[bytes, str]]:
    jpeg = next(p for p in sample_images if p.name == "sky_circle.jpg").read_bytes()
    png = next(p for p in sample_images if p.name == "green_stripes_rgba.png").read_bytes()
    return {
        "empty": (b"", "image is empty"),
        "not an image": (b"hello, this is plain text and no image at all", "not a recognised image format"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "truncated png": (png[: int(len(png) * 0.6)], "truncated or corrupt"),
        "format outside the allow-list": (_ppm(), "PPM is not allowed"),
        "decompression bomb": (png_with_size(100_000, 100_000), "pixels"),
        "1x100000": (_png(1, 100_000), "aspect ratio"),
    }


BAD_SETTINGS = {
    "max_tokens 0": ({"max_tokens": 0}, "'max_tokens' must be between 1 and 512"),
    "max_tokens negative": ({"max_tokens": -3}, "'max_tokens' must be between 1 and 512"),
    "max_tokens over the cap": ({"max_tokens": 513}, "'max_tokens' must be between 1 and 512"),
    "min over max": ({"max_tokens": 5, "min_tokens": 9}, "'min_tokens' must be between 0 and 5"),
    "beam width 0": ({"beam_width": 0}, "'beam_width' must be between 1 and 8"),
    "negative temperature": ({"temperature": -0.5}, "'temperature' must be >= 0.0 and <= 100.0"),
    "NaN temperature": ({"temperature": math.nan}, "'temperature' must be a finite number"),
    "NaN top_p": ({"temperature": 1.0, "top_p": math.nan}, "'top_p' must be a finite number"),
    "top_p over 1": ({"temperature": 1.0, "top_p": 1.5}, "'top_p' must be > 0.0 and <= 1.0"),
    "negative top_k": ({"top_k": -1}, "'top_k' must be at least 0"),
    "negative repetition penalty": (
        {"repetition_penalty": -1.0},
        "'repetition_penalty' must be > 0.0 and <= 10.0",
    ),
    "infinite length penalty": ({"length_penalty": math.inf}, "'length_penalty' must be a finite number"),
    "length penalty below -10": ({"length_penalty": -11.0}, "'length_penalty' must be >= -10.0 and <= 10.0"),
    "temperature over 100": ({"temperature": 101.0}, "'temperature' must be >= 0.0 and <= 100.0"),
    "repetition penalty over 10": (
        {"repetition_penalty": 12.0},
        "'repetition_penalty' must be > 0.0 and <= 10.0",
    ),
    "no_repeat_ngram_size over 512": (
        {"no_repeat_ngram_size": 600},
        "'no_repeat_ngram_size' must be between 0 and 512",
    ),
}


def _assert_server_ready(url: str) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("blip2")
    finally:
        client.close()


def test_bad_images_are_rejected_and_good_neighbours_answered(opt_server, sample_images):
    good = sample_images[0].read_bytes()
    expected = opt_server.reference(good, None)
    for name, (data, fragment) in _bad_images(sample_images).items():
        bad, neighbour = infer_concurrently(opt_server.grpc_url, [{"image": data}, {"image": good}])
        assert_rejected(bad, fragment)
        assert neighbour.text == expected, f"good request sent with '{name}' got a wrong answer"
    _assert_server_ready(opt_server.grpc_url)


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_generation_settings_are_rejected(opt_server, sample_images, name):
    settings, fragment = BAD_SETTINGS[name]
    good = sample_images[2].read_bytes()
    bad, neighbour = infer_concurrently(
        opt_server.grpc_url, [{"image": good, **settings}, {"image": good, "prompt": "a photo of"}]
    )
    assert_rejected(bad, fragment)
    assert neighbour.text == opt_server.reference(good, "a photo of")


def test_prompt_longer_than_the_context_is_rejected(opt_server, sample_images):
    good = sample_images[0].read_bytes()
    long_prompt = "a photo of a small red dog " * 60
    bad, neighbour = infer_concurrently(
        opt_server.grpc_url, [{"image": good, "prompt": long_prompt}, {"image": good, "prompt": "a photo of"}]
    )
    assert_rejected(bad, "exceeds the model's context of 256 tokens")
    assert neighbour.text == opt_server.reference(good, "a photo of")
    _assert_server_ready(opt_server.grpc_url)


def test_tiny_and_odd_images_give_answers(opt_server):
    """1×1 works, and CMYK/palette/16-bit/alpha images were covered by the parity matrix."""
    for data in (_png(1, 1), _png(3, 500), _png(500, 3)):
        (outcome,) = infer_concurrently(opt_server.grpc_url, [{"image": data}])
        assert outcome.text == opt_server.reference(data, None)


def test_missing_image_input_is_rejected(opt_server):
    client = grpcclient.InferenceServerClient(opt_server.grpc_url)
    try:
        with pytest.raises(grpcclient.InferenceServerException) as error:
            client.infer("blip2", [])
        assert "image" in error.value.message()
    finally:
        client.close()
