"""What every ONNX graph of the export shares: how it is written and how it is compared with PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError

# The TorchScript exporter (dynamo=False) gives a graph with a dynamic batch axis that onnxruntime and
# TensorRT take as is; opset 17 has LayerNormalization as one op.
OPSET = 17


def export_graph(
    module: Any,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    """Write ``module`` traced on ``args`` to ``path`` with the given tensor names and dynamic axes."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer's notes on Python-level shape checks and on aten::index are expected here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate: see OPSET
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def checked_difference(name: str, actual: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """Max abs difference of a graph's output from PyTorch's; ExportError on a shape or tolerance miss."""
    if actual.shape != expected.shape:
        raise ExportError(
            f"ONNX {name} graph output shape {actual.shape} differs from PyTorch {expected.shape}"
        )
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    if not diff <= tolerance:
        raise ExportError(f"ONNX {name} graph differs from PyTorch by {diff:.3g} (tolerance {tolerance})")
    return diff
