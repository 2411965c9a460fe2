"""What an export wrote for the language model, and how the LLM stage loads it.

``LlmSettings`` is what the export records about the checkpoint besides the language model itself
(``llm_settings.json``); ``load_language_model`` loads the model in the recorded dtype (quantized
when asked) and its tokenizer; ``GenerationRequest`` is one request as the engine takes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import GenerationSettings
from .quantization import quantize_language_model

SETTINGS_FILE = "llm_settings.json"
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
AUTO_MODEL_CLASSES = {"opt": "AutoModelForCausalLM", "t5": "AutoModelForSeq2SeqLM"}


@dataclass(frozen=True)
class LlmSettings:
    """What the LLM stage must know about the checkpoint besides the language model itself."""

    family: str
    image_token_id: int
    num_query_tokens: int
    bos_token_id: int | None
    dtype: str = "fp32"
    quantize: str = "none"  # "int8": linear layers quantized at load (llm/quantization.py)
    context_length: int = 0  # decoder-only: the model's position table (0: not recorded)
    max_sequence_tokens: int = 0  # the engine's slot size, an export option (0: not recorded)

    @classmethod
    def load(cls, folder: str | Path) -> LlmSettings:
        return cls(**json.loads((Path(folder) / SETTINGS_FILE).read_text()))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the LLM stage.

    ``prompt_ids`` are the input ids (image tokens + prompt) once ``PromptChecker.check`` has
    accepted the request: the engine then neither checks nor tokenizes it again. ``cancelled`` (if
    given) is asked between decoding steps.
    """

    query_embeds: np.ndarray  # [num_query_tokens, hidden]
    prompt: str
    settings: GenerationSettings
    prompt_ids: tuple[int, ...] | None = None
    cancelled: Callable[[], bool] | None = field(default=None, compare=False)


def context_length(text_config: Any, family: str) -> int:
    """Tokens a decoder-only model takes at most (its position table); 0 for encoder-decoders."""
    if family == "t5":
        return 0
    return int(getattr(text_config, "max_position_embeddings", 0) or 0)


def load_language_model(folder: str | Path, device: str = "cpu"):
    """``(model, tokenizer, settings)`` an export wrote into ``folder``: the language model in the
    recorded dtype on ``device`` (quantized when the export asked for it), and its tokenizer."""
    import torch
    import transformers

    folder = Path(folder)
    settings = LlmSettings.load(folder)
    dtype = getattr(torch, TORCH_DTYPES[settings.dtype])
    auto_model = getattr(transformers, AUTO_MODEL_CLASSES[settings.family])
    model = auto_model.from_pretrained(folder / "language_model", dtype=dtype).to(device).eval()
    model = quantize_language_model(model, settings.quantize)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    return model, tokenizer, settings
