"""An exported ONNX graph in an onnxruntime session: the vision stage and the retrieval graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxGraph:
    """One exported graph in an onnxruntime session (CUDA when available, else CPU)."""

    def __init__(
        self, model_path: str | Path, *, providers: list[str] | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = [p for p in (providers or PREFERRED_PROVIDERS) if p in available]
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
        self.input_names = [i.name for i in self.session.get_inputs()]
        first_input = self.session.get_inputs()[0].type
        self.input_dtype = np.float16 if "float16" in first_input else np.float32

    def __call__(self, outputs: list[str], **feeds: np.ndarray) -> list[np.ndarray]:
        results = self.session.run(outputs, {name: np.ascontiguousarray(feeds[name]) for name in feeds})
        return [np.asarray(r, dtype=np.float32) for r in results]
