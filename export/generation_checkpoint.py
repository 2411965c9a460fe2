"""A ``Blip2ForConditionalGeneration`` checkpoint: its language-model family and loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .checkpoint import Checkpoint, load_pretrained
from .errors import ExportError
from .hub import CheckpointSource

T5_FP16_REFUSAL = (
    "--dtype fp16 is refused for Flan-T5 checkpoints: T5 overflows in fp16 (garbage or identical "
    "answers); use --dtype bf16 or fp32, or pass --force"
)


@dataclass
class GenerationCheckpoint(Checkpoint):
    """A loaded generation checkpoint (``model`` is a ``Blip2ForConditionalGeneration``)."""

    family: str  # "opt", "t5"

    @property
    def llm_hidden(self) -> int:
        return int(self.model.language_model.get_input_embeddings().embedding_dim)

    def identity(self) -> dict[str, Any]:
        return {"family": self.family}

    def template_values(self) -> dict[str, Any]:
        return {**super().template_values(), "llm_hidden": self.llm_hidden, "llm_family": self.family}


def language_model_family(config: Any) -> str:
    """'opt' or 't5' from a ``Blip2Config``; anything else is an export error."""
    model_type = getattr(config.text_config, "model_type", "?")
    if model_type == "opt":
        return "opt"
    if model_type in ("t5", "mt5", "umt5"):
        return "t5"
    raise ExportError(f"language model type {model_type!r} is not supported (supported: OPT, Flan-T5)")


def refuse_fp16_for_t5(config: Any) -> None:
    """Raise the one-line refusal when ``config`` is a BLIP-2 config with a T5 language model."""
    if getattr(config, "model_type", None) == "blip-2" and language_model_family(config) == "t5":
        raise ExportError(T5_FP16_REFUSAL)


def load_generation_checkpoint(
    source: CheckpointSource, config: Any, dtype: str = "fp32"
) -> GenerationCheckpoint:
    """Load a ``Blip2ForConditionalGeneration`` checkpoint whose config is ``config``, and its processor."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    if getattr(config, "model_type", None) != "blip-2":
        raise ExportError(f"{source.name} is not a BLIP-2 checkpoint (model_type {config.model_type!r})")
    family = language_model_family(config)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = load_pretrained(Blip2ForConditionalGeneration, source, dtype=torch_dtype).eval()
    processor = load_pretrained(Blip2Processor, source)
    return GenerationCheckpoint(source=source.name, model=model, processor=processor, family=family)
