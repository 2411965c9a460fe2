"""An exported ONNX graph in an onnxruntime session: the vision stage and the retrieval graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_ROWS_PER_RUN = 8


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
        # On the CPU a large batch runs slower per row than small ones (attention scores of many
        # images leave the caches): measured on the bench model (6x384 ViT at 224 px, 2 cores),
        # 33 ms per image in runs of 8 against 38-42 ms in one run of 64. A GPU runs the batch whole.
        self.rows_per_run = (
            CPU_ROWS_PER_RUN if self.session.get_providers() == ["CPUExecutionProvider"] else 0
        )
        first_input = self.session.get_inputs()[0].type
        self.input_dtype = np.float16 if "float16" in first_input else np.float32

    def __call__(self, outputs: list[str], **feeds: np.ndarray) -> list[np.ndarray]:
        """The named outputs for a batch of rows (every feed's first axis), run ``rows_per_run`` at a time."""
        rows = len(next(iter(feeds.values())))
        step = self.rows_per_run or rows or 1
        parts = [
            self.session.run(
                outputs,
                {name: np.ascontiguousarray(array[start : start + step]) for name, array in feeds.items()},
            )
            for start in range(0, max(rows, 1), step)
        ]
        if len(parts) == 1:
            return [np.asarray(r, dtype=np.float32) for r in parts[0]]
        return [
            np.concatenate([np.asarray(p[i], dtype=np.float32) for p in parts]) for i in range(len(outputs))
        ]
