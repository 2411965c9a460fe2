"""The LLM stage's interface, free of Triton glue and of any model family.

An engine turns (query embeddings, prompt, settings) requests into text. ``GenerationEngine`` is
the small interface the Triton model talks to; ``LlmSettings`` is what an export records about the
checkpoint for it. The families implement it (``engine_opt``, ``engine_t5``, on the shared
``prompt_engine``), and ``engine_factory.load_engine`` picks one for an exported folder.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import GenerationSettings

SETTINGS_FILE = "llm_settings.json"


@dataclass(frozen=True)
class LlmSettings:
    """What the LLM stage must know about the checkpoint besides the language model itself."""

    family: str
    image_token_id: int
    num_query_tokens: int
    bos_token_id: int | None
    dtype: str = "fp32"
    quantize: str = "none"  # "int8": linear layers quantized at load (runtime/quantization.py)
    context_length: int = 0  # decoder-only: the model's position table (0: not recorded)
    max_sequence_tokens: int = 0  # the engine's slot size, an export option (0: not recorded)

    @classmethod
    def load(cls, folder: str | Path) -> LlmSettings:
        return cls(**json.loads((Path(folder) / SETTINGS_FILE).read_text()))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the LLM stage; ``cancelled`` (if given) is asked between decoding steps."""

    query_embeds: np.ndarray  # [num_query_tokens, hidden]
    prompt: str
    settings: GenerationSettings
    cancelled: Callable[[], bool] | None = field(default=None, compare=False)


class GenerationEngine(ABC):
    """Turns requests into texts; one result (text or the error for that request) per request."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str | Exception]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, memory)."""
