"""Safe decoding of the encoded image bytes a client sends, into one RGB picture.

Every refusal is an RequestValidationError with a one-line message that names the problem. The
checks that need no pixels (byte count, format, size, pixel count, aspect ratio) run on the header
that Image.open reads lazily, before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .contract import ALLOWED_IMAGE_FORMATS, MAX_ASPECT_RATIO, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .errors import RequestValidationError

# Formats Pillow names apart that are a variant of an allowed one: MPO is a JPEG with extra
# pictures (phone cameras write it); its first picture is a plain JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# Leading bytes of the allowed formats (WebP is RIFF....WEBP), to tell a damaged header of an
# allowed format (which Pillow only reports as unidentified) from bytes that are no image at all.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255, 255)


def image_format(data: bytes) -> str:
    """The format of `data` as Pillow names it ("JPEG", "PNG", ...), allowed or not.

    Reads the header only. Raises RequestValidationError when no Pillow plugin recognises the bytes.
    """
    image = _open(data, formats=None)
    if image is None:
        raise RequestValidationError("image bytes are not a recognised image format")
    with image:
        name = image.format
    if name is None:  # every plugin that opens an image names its format
        raise RequestValidationError("image bytes are not a recognised image format")
    return _FORMAT_ALIASES.get(name, name)


def decode_image(data: bytes) -> Image.Image:
    """Decode encoded image bytes into an RGB image, refusing what is unsafe or broken.

    - Only ALLOWED_IMAGE_FORMATS are decoded; other formats are refused by name.
    - Images over MAX_IMAGE_PIXELS are refused from their header, before decoding (decompression
      bombs), as are empty images and images whose aspect ratio (long side over short side) is over
      MAX_ASPECT_RATIO: such a strip cannot be resized to the model's square input meaningfully, so
      it is refused with its size rather than silently squashed.
    - Truncated or corrupt data is refused: the first frame is decoded in full here.
    - Multi-frame files (GIF, APNG, animated WebP, multi-page TIFF) give their first frame.
    - The EXIF orientation is applied, so the result is the picture as a viewer shows it.
    - Transparency (alpha channel, or a transparent colour) is composited onto a white background.
    - 16-bit grayscale is scaled to 8 bits over its full range (0..65535 to 0..255), not clipped;
      32-bit integer grayscale ("I") is taken to hold 16-bit samples, as PNG and TIFF decode them.
    - Other modes (1-bit, L, P, CMYK, YCbCr) are converted by Pillow.
    """
    if not data:
        raise RequestValidationError("image is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestValidationError(f"image is {len(data)} bytes, over the limit of {MAX_IMAGE_BYTES} bytes")

    image = _open(data, formats=ALLOWED_IMAGE_FORMATS)
    if image is None:
        claimed = _signature_format(data)
        if claimed is not None:
            raise RequestValidationError(
                f"image data is truncated or corrupt: its {claimed} header cannot be read "
                "(damaged, cut short, or a zero width or height)"
            )
        name = image_format(data)  # raises when no format at all recognises the bytes
        allowed = ", ".join(ALLOWED_IMAGE_FORMATS)
        raise RequestValidationError(f"image format {name} is not allowed (allowed: {allowed})")

    with image:
        _check_size(image.size)
        try:
            image.load()  # the first frame only, in full: truncated data fails here
            frame = ImageOps.exif_transpose(image)  # a new image, independent of the file
        except MemoryError:
            raise
        except Exception as exc:  # anything Pillow raises on untrusted bytes is a bad request
            raise RequestValidationError(f"image data is truncated or corrupt: {_describe(exc)}") from None
    return _to_rgb(frame)


def _open(data: bytes, formats: tuple[str, ...] | None) -> ImageFile.ImageFile | None:
    """Image.open (header only); None when no plugin among `formats` recognises the bytes."""
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, above its own pixel limits; both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestValidationError(
            f"image has more than {MAX_IMAGE_PIXELS} pixels and is refused as a decompression bomb"
        ) from None
    except Image.UnidentifiedImageError:
        return None
    except MemoryError:
        raise
    except Exception as exc:  # a recognised header that a plugin could not parse
        raise RequestValidationError(f"image data is truncated or corrupt: {_describe(exc)}") from None


def _signature_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _check_size(size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise RequestValidationError(f"image is empty ({width}x{height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestValidationError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {MAX_IMAGE_PIXELS} "
            "pixels (refused as a decompression bomb)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise RequestValidationError(
            f"image is {width}x{height} pixels: aspect ratio {ratio:g} is over the limit of "
            f"{MAX_ASPECT_RATIO:g}"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    try:
        if mode == "I" or mode.startswith("I;16"):
            image = _sixteen_bit_to_l(image)
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise RequestValidationError(
            f"image mode {mode} cannot be converted to RGB: {_describe(exc)}"
        ) from None


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    samples = np.asarray(image).astype(np.float64)
    eight_bit = np.rint(np.clip(samples, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(eight_bit)  # uint8, 2-D: mode L


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def image_from_input(item: object) -> bytes:
    """One element of an ``image`` tensor (TYPE_STRING) as bytes; anything else is refused."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("latin-1")
    raise RequestValidationError(f"input 'image' must be bytes, got {type(item).__name__}")
