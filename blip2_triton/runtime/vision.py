"""The vision stage (EVA ViT + Q-Former + language projection) run by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIXEL_INPUT = "pixel_values"
QUERY_OUTPUT = "query_embeds"


class OnnxVisionEncoder:
    """Runs the exported ONNX graph: ``pixel_values`` [B, 3, H, W] → ``query_embeds`` [B, Q, D]."""

    def __init__(
        self, model_path: str | Path, *, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = [
            p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available
        ]
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
        self.input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        feeds = {PIXEL_INPUT: np.ascontiguousarray(pixel_values, dtype=self.input_dtype)}
        (query_embeds,) = self.session.run([QUERY_OUTPUT], feeds)
        return query_embeds.astype(np.float32, copy=False)
