"""Loading a BLIP-2 checkpoint (hub id or local folder) and telling which family it is."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError

GENERATION_ARCHITECTURE = "Blip2ForConditionalGeneration"


@dataclass
class LoadedCheckpoint:
    """A loaded generation checkpoint and what the export needs to know about it."""

    source: str
    model: Any  # Blip2ForConditionalGeneration
    processor: Any  # Blip2Processor
    family: str  # "opt", "t5"

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def llm_hidden(self) -> int:
        return int(self.model.language_model.get_input_embeddings().embedding_dim)


def language_model_family(config: Any) -> str:
    """'opt' or 't5' from a ``Blip2Config``; anything else is an export error."""
    model_type = getattr(config.text_config, "model_type", "?")
    if model_type == "opt":
        return "opt"
    if model_type in ("t5", "mt5", "umt5"):
        return "t5"
    raise ExportError(f"language model type {model_type!r} is not supported (supported: OPT, Flan-T5)")


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


def load_generation_checkpoint(source: str, dtype: str = "fp32") -> LoadedCheckpoint:
    """Load a ``Blip2ForConditionalGeneration`` checkpoint and its processor."""
    import torch
    from transformers import AutoConfig, Blip2ForConditionalGeneration, Blip2Processor

    config = load_pretrained(AutoConfig, source)
    if getattr(config, "model_type", None) != "blip-2":
        raise ExportError(f"{source} is not a BLIP-2 checkpoint (model_type {config.model_type!r})")
    family = language_model_family(config)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = load_pretrained(Blip2ForConditionalGeneration, source, dtype=torch_dtype).eval()
    processor = load_pretrained(Blip2Processor, source)
    return LoadedCheckpoint(source=source, model=model, processor=processor, family=family)
