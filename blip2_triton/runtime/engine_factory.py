"""Picks the generation engine for the language-model family an export recorded."""

from __future__ import annotations

from pathlib import Path

from .engine import GenerationEngine, LlmSettings
from .engine_opt import DecoderOnlyEngine
from .engine_t5 import EncoderDecoderEngine

ENGINES: dict[str, type] = {"opt": DecoderOnlyEngine, "t5": EncoderDecoderEngine}


def load_engine(folder: str | Path, device: str = "cpu") -> GenerationEngine:
    """The engine for the language-model family an export recorded in ``folder``."""
    family = LlmSettings.load(folder).family
    engine_class = ENGINES.get(family)
    if engine_class is None:
        raise ValueError(f"no generation engine for language-model family {family!r}")
    return engine_class.from_folder(folder, device)
