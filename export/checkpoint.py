"""Loading a BLIP-2 checkpoint (hub id or local folder), and what every loaded checkpoint offers."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its processor and the sizes every export needs."""

    source: str
    model: Any  # a transformers Blip2* model
    processor: Any  # Blip2Processor

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def identity(self) -> dict[str, Any]:
        """What the manifest records about the checkpoint besides its source and architecture."""
        return {}

    def template_values(self) -> dict[str, Any]:
        """Values every architecture's templates use; subclasses add their own."""
        height, width = self.image_size
        return {"image_height": height, "image_width": width, "num_query_tokens": self.num_query_tokens}


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub's host answers a TCP connection within ``timeout_s``."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def load_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` with one-line errors for missing folders and no hub access.

    A hub id is loaded from the local cache alone when the hub cannot be reached, so an offline
    machine fails at once with a clear message instead of after minutes of retries.
    """
    if source.startswith(("/", "./", "../", "~")) and not _is_local(source):
        raise ExportError(f"checkpoint folder {source} does not exist")
    if not _is_local(source) and not hub_reachable():
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return cls.from_pretrained(str(Path(source).expanduser()) if _is_local(source) else source, **kwargs)
    except OSError as exc:
        if _is_local(source):
            raise ExportError(f"cannot load the checkpoint in {source}: {str(exc).splitlines()[0]}") from exc
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = (
            "the model hub is disabled (HF_HUB_OFFLINE=1)" if offline else "the model hub cannot be reached"
        )
        raise ExportError(
            f"cannot download {source!r}: {reason}; pass a local checkpoint folder instead "
            "(--model /path/to/checkpoint, a folder written by save_pretrained)"
        ) from exc


def load_config(source: str) -> Any:
    """The checkpoint's ``config.json`` as a transformers config (no weights loaded)."""
    from transformers import AutoConfig

    return load_pretrained(AutoConfig, source)
