"""The vision stage (EVA ViT + Q-Former + language projection) run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import PIXEL_VALUES, QUERY_EMBEDS
from .onnx_graph import OnnxGraph


class OnnxVisionEncoder:
    """Runs the exported ONNX graph: ``pixel_values`` [B, 3, H, W] → ``query_embeds`` [B, Q, D]."""

    def __init__(
        self, model_path: str | Path, *, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        self.graph = OnnxGraph(model_path, providers=providers, threads=threads)

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixel_values, dtype=self.graph.input_dtype)
        (query_embeds,) = self.graph([QUERY_EMBEDS], **{PIXEL_VALUES: pixels})
        return query_embeds
