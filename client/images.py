"""Images as the server takes them: encoded file bytes.

A path (``str`` or ``pathlib.Path``) is read as is, bytes are sent as they are and a PIL image is
encoded losslessly as PNG. The server decodes and validates the bytes.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .errors import InvalidImageError

if TYPE_CHECKING:
    from PIL import Image as PILImage

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, "PILImage.Image"]

__all__ = ["ImageLike", "image_bytes", "image_bytes_async"]


def image_bytes(image: ImageLike) -> bytes:
    """The encoded bytes of ``image``; InvalidImageError for a missing file or an unsupported object."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise InvalidImageError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise InvalidImageError(f"image path is a directory: {path}") from None
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if _is_pil_image(image):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"cannot encode PIL image (mode {image.mode}) as PNG: {exc}") from exc
        return buffer.getvalue()
    raise InvalidImageError(
        f"unsupported image type {type(image).__name__}: pass a path, encoded bytes or a PIL image"
    )


async def image_bytes_async(image: ImageLike) -> bytes:
    """:func:`image_bytes` off the event loop for what needs reading or encoding."""
    if isinstance(image, bytes):
        return image
    return await asyncio.to_thread(image_bytes, image)


def _is_pil_image(obj: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)
