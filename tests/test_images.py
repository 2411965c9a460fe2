"""Image decoding: the shipped samples, every mode and multi-frame format, and every refusal."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from blip2_triton.fixtures import samples_dir
from blip2_triton.runtime import images
from blip2_triton.runtime.contract import MAX_IMAGE_BYTES
from blip2_triton.runtime.errors import RequestValidationError
from blip2_triton.runtime.images import decode_image, image_format

SAMPLES = samples_dir()

# name: (width, height) as seen, after the EXIF orientation.
SAMPLE_SIZES = {
    "sky_circle.jpg": (400, 300),
    "green_stripes_rgba.png": (200, 120),
    "checkerboard_palette.png": (160, 120),
    "gray_moon.png": (64, 48),
    "gray16_ramp.png": (256, 64),
    "house_cmyk.jpg": (240, 180),
    "gradient_square.webp": (300, 200),
    "traffic_light.gif": (96, 64),
    "sailboat.bmp": (120, 160),
    "colour_tiles.tif": (150, 100),
    "tower_exif_rotate90.jpg": (90, 150),
}


def sample(name: str) -> Image.Image:
    return decode_image((SAMPLES / name).read_bytes())


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR claims another size (CRC fixed, so only the size is a lie)."""
    data = encode(Image.new("RGB", (8, 8), "red"), "PNG")
    ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def assert_close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> None:
    assert all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


def refusal(data: bytes) -> str:
    with pytest.raises(RequestValidationError) as info:
        decode_image(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- The shipped samples ---------------------------------------------------------------------------


def test_every_sample_is_listed_here_and_in_the_readme():
    files = {path.name for path in SAMPLES.iterdir() if path.name != "README.md"}
    assert files == set(SAMPLE_SIZES)
    readme = (SAMPLES / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files)
    assert sum((SAMPLES / name).stat().st_size for name in files) < 300_000


@pytest.mark.parametrize("name", sorted(SAMPLE_SIZES))
def test_sample_decodes_to_rgb_of_its_size(name):
    image = sample(name)
    assert image.mode == "RGB"
    assert image.size == SAMPLE_SIZES[name]


def test_sixteen_bit_gray_is_scaled_over_the_full_range():
    pixels = np.asarray(sample("gray16_ramp.png"))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    row = pixels[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    assert abs(row[128] - 128) <= 1  # scaled, not clipped to 255


def test_alpha_is_composited_on_white():
    image = sample("green_stripes_rgba.png")
    assert image.getpixel((5, 50)) == (0, 160, 0)  # opaque stripe
    assert image.getpixel((30, 50)) == (255, 255, 255)  # fully transparent gap
    assert_close(image.getpixel((30, 110)), (255, 127, 127), tolerance=2)  # half-transparent red


def test_cmyk_jpeg_colours_are_sane():
    image = sample("house_cmyk.jpg")
    assert_close(image.getpixel((120, 60)), (220, 30, 30))  # roof
    assert_close(image.getpixel((5, 5)), (110, 170, 235))  # sky
    assert_close(image.getpixel((5, 170)), (60, 150, 60))  # grass


def test_palette_sample_colours():
    image = sample("checkerboard_palette.png")
    assert image.getpixel((5, 15)) == (20, 30, 90)
    assert image.getpixel((25, 5)) == (245, 235, 210)


def test_gif_gives_its_first_frame():
    assert_close(sample("traffic_light.gif").getpixel((48, 32)), (220, 30, 30), tolerance=0)


def test_exif_orientation_is_applied():
    with Image.open(SAMPLES / "tower_exif_rotate90.jpg") as stored:
        assert stored.size == (150, 90)
    image = sample("tower_exif_rotate90.jpg")
    assert_close(image.getpixel((5, 5)), (110, 170, 235))  # sky on top
    assert_close(image.getpixel((5, 145)), (60, 150, 60))  # grass at the bottom
    assert_close(image.getpixel((45, 22)), (220, 30, 30))  # red top of the tower


# --- Modes and multi-frame files built here ---------------------------------------------------------


def test_palette_with_transparent_index_is_composited_on_white():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 0, 0])
    image.putpixel((0, 0), 0)
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (200, 0, 0)


def test_rgb_png_with_transparent_colour_is_composited_on_white():
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    image.putpixel((0, 0), (1, 2, 3))
    decoded = decode_image(encode(image, "PNG", transparency=(1, 2, 3)))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (10, 20, 30)


def test_gray_alpha_is_composited_on_white():
    image = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    image.putpixel((1, 1), (0, 255))  # black, opaque
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 0, 0)


def test_palette_alpha_is_composited_on_white():
    # No allowed format stores PA, so the conversion step is checked on its own.
    image = Image.new("PA", (4, 4), (0, 0))  # index 0, fully transparent
    image.putpalette([0, 0, 0])
    image.putpixel((1, 1), (0, 255))  # index 0 (black), opaque
    converted = images._to_rgb(image)
    assert converted.getpixel((0, 0)) == (255, 255, 255)
    assert converted.getpixel((1, 1)) == (0, 0, 0)


def test_one_bit_image():
    image = Image.new("1", (8, 4), 0)
    image.putpixel((0, 0), 1)
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 0)) == (0, 0, 0)


def test_32_bit_integer_gray_is_taken_as_16_bit():
    image = Image.fromarray(np.array([[0, 32768, 65535, 70000]], dtype=np.int32))  # mode I
    data = encode(image, "TIFF")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "I"
    row = np.asarray(decode_image(data))[0, :, 0]
    assert row.tolist() == [0, 128, 255, 255]


def frames(*colours: str) -> list[Image.Image]:
    return [Image.new("RGB", (16, 12), colour) for colour in colours]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("GIF", {})],
    ids=["apng", "animated-webp", "multipage-tiff", "gif"],
)
def test_multi_frame_files_give_their_first_frame(fmt, options):
    first, *rest = frames("red", "blue", "lime")
    data = encode(first, fmt, save_all=True, append_images=rest, **options)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.n_frames == 3
    decoded = decode_image(data)
    assert decoded.size == (16, 12)
    assert decoded.getpixel((8, 6)) == (255, 0, 0)


def test_multi_picture_jpeg_gives_its_first_picture():
    first, *rest = frames("red", "blue")
    data = encode(first, "MPO", save_all=True, append_images=rest)  # as phone cameras write
    assert image_format(data) == "JPEG"
    assert_close(decode_image(data).getpixel((8, 6)), (255, 0, 0), tolerance=4)


def test_one_by_one_image_is_fine():
    assert decode_image(encode(Image.new("RGB", (1, 1), "blue"), "PNG")).getpixel((0, 0)) == (0, 0, 255)


# --- Refusals -----------------------------------------------------------------------------------------


def test_empty_bytes():
    assert "empty" in refusal(b"")


def test_too_many_bytes():
    message = refusal(bytes(MAX_IMAGE_BYTES + 1))
    assert f"over the limit of {MAX_IMAGE_BYTES} bytes" in message


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", np.random.default_rng(0).bytes(4096)],
    ids=["text", "random"],
)
def test_non_image_bytes(data):
    assert refusal(data) == "image bytes are not a recognised image format"


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA"])
def test_disallowed_format_is_named(fmt):
    data = encode(Image.new("RGB", (16, 16), "red"), fmt)
    message = refusal(data)
    assert f"image format {fmt} is not allowed" in message
    assert "JPEG, PNG, WEBP, GIF, BMP, TIFF" in message
    assert image_format(data) == fmt


@pytest.mark.parametrize(
    ("width", "height"),
    [(100_000, 100_000), (10_000, 10_000), (8_000, 8_000)],
    ids=["over-pillow-error-limit", "over-pillow-warning-limit", "over-our-limit-only"],
)
def test_decompression_bomb_is_refused_from_the_header(width, height):
    pillow_limit = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    message = refusal(png_with_size(width, height))  # the 8x8 pixel data is never decoded
    assert "decompression bomb" in message
    assert "50000000 pixels" in message
    assert pillow_limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (402, 2)])
def test_absurd_aspect_ratio_is_refused(size):
    width, height = size
    message = refusal(encode(Image.new("L", size), "PNG"))
    assert f"image is {width}x{height} pixels" in message
    assert "aspect ratio" in message and "limit of 200" in message


def test_aspect_ratio_at_the_limit_is_fine():
    assert decode_image(encode(Image.new("L", (400, 2)), "PNG")).size == (400, 2)


@pytest.mark.parametrize(("width", "height"), [(0, 8), (8, 0)])
def test_zero_size_is_refused(width, height):
    message = refusal(png_with_size(width, height))
    assert "PNG header cannot be read" in message and "zero width or height" in message


@pytest.mark.parametrize("name", ["sky_circle.jpg", "green_stripes_rgba.png", "house_cmyk.jpg"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.85])
def test_truncated_file_is_refused(name, keep):
    data = (SAMPLES / name).read_bytes()
    assert "truncated or corrupt" in refusal(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [8, 20, 40])
def test_cut_inside_the_header_is_refused_as_corrupt(keep):
    data = (SAMPLES / "green_stripes_rgba.png").read_bytes()
    assert "truncated or corrupt" in refusal(data[:keep])


def test_corrupt_pixel_data_is_refused():
    data = bytearray(encode(Image.new("RGB", (32, 32), "red"), "PNG"))
    data[data.find(b"IDAT") + 6] ^= 0xFF
    assert "truncated or corrupt" in refusal(bytes(data))


def test_image_format_helper():
    assert image_format((SAMPLES / "gradient_square.webp").read_bytes()) == "WEBP"
    with pytest.raises(RequestValidationError, match="not a recognised image format"):
        image_format(b"plain text")
