"""What a build of the image index asks of the disk and the server: which files, their embeddings.

:func:`image_files` finds the images of a folder; :func:`embed_files` is one build step (see
``steps``): the image embeddings of a batch of files, sent concurrently, with the error of each
file the server refuses (or that cannot be read) in its place; :func:`split_batch` sorts them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calls import image_embed_call
from .errors import Blip2ClientError
from .fan_out import fan_out, fan_out_async
from .images import image_bytes, image_bytes_async
from .steps import is_async_client
from .transport import Call

__all__ = ["IMAGE_SUFFIXES", "embed_files", "image_files", "split_batch"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, by suffix, sorted), as absolute paths."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise Blip2ClientError(f"not a folder: {root}")
    return sorted(p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def embed_files(client: Any, paths: list[str]) -> list | Awaitable[list]:
    """The image embedding of each file, or the error of a file that is refused or cannot be read."""
    protocol = client.protocol
    options = {"max_concurrency": client.max_concurrency, "progress": False, "keep_refused": True}
    if is_async_client(client):

        async def read_and_make(path: str) -> Call[np.ndarray]:
            return image_embed_call(protocol, await image_bytes_async(path))

        return fan_out_async(client.transport, paths, read_and_make, **options)
    return fan_out(
        client.transport, paths, lambda path: image_embed_call(protocol, image_bytes(path)), **options
    )


def split_batch(
    paths: Sequence[str], results: Sequence[np.ndarray | Exception]
) -> tuple[list[str], list[np.ndarray], dict[str, str]]:
    """The results of :func:`embed_files` sorted: embedded paths, their embeddings, refused ``{path: reason}``."""
    names = [p for p, r in zip(paths, results, strict=True) if not isinstance(r, Exception)]
    embeddings = [r for r in results if not isinstance(r, Exception)]
    refused = {p: str(r) for p, r in zip(paths, results, strict=True) if isinstance(r, Exception)}
    return names, embeddings, refused
