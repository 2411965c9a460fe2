"""Loading a BLIP-2 checkpoint (hub id or local folder), and what every loaded checkpoint offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ExportError
from .hub import LOCAL_FOLDER_HINT, CheckpointSource


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


def load_pretrained(cls: Any, source: CheckpointSource, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` of ``source`` (its hub commit, or its folder) with one-line errors."""
    try:
        return cls.from_pretrained(source.location, **source.pretrained_kwargs(), **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if source.is_folder:
            raise ExportError(f"cannot load the checkpoint in {source.name}: {first}") from exc
        where = "from the local cache (the hub cannot be reached)" if source.cache_only else "from the hub"
        raise ExportError(
            f"cannot load {source.name!r} at commit {source.commit} {where}: {first}; {LOCAL_FOLDER_HINT}"
        ) from exc


def load_config(source: CheckpointSource) -> Any:
    """The checkpoint's ``config.json`` as a transformers config (no weights loaded)."""
    from transformers import AutoConfig

    return load_pretrained(AutoConfig, source)
