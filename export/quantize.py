"""``--quantize int8``: the vision graph through onnxruntime's quantizer; the LLM flagged for int8.

The vision graph (ViT + Q-Former + projection) is written in float32 and checked against PyTorch
as usual, then its MatMul weights are quantized to int8 with onnxruntime's dynamic quantizer
(int8 weights, activations quantized at run time) and the int8 graph replaces it. Its difference
from PyTorch is measured and recorded, not held to the float tolerance. The language model's
linear layers are quantized when the LLM stage loads them (``blip2_triton.runtime.llm.quantization``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from blip2_triton.runtime.llm.quantization import QUANTIZE_METHODS

from .errors import ExportError

__all__ = ["QUANTIZE_METHODS", "check_quantize", "quantize_vision_graph"]


def check_quantize(method: str, dtype: str, device: str) -> None:
    """Refuse combinations that cannot work, naming the flag to change."""
    if method not in QUANTIZE_METHODS:
        raise ExportError(f"--quantize must be one of {', '.join(QUANTIZE_METHODS)}")
    if method == "int8" and (dtype != "fp32" or not device.startswith("cpu")):
        raise ExportError(
            "--quantize int8 quantizes float32 weights for the CPU: use --dtype fp32 --device cpu"
        )


def quantize_vision_graph(path: Path) -> dict[str, Any]:
    """Replace the float32 ONNX graph at ``path`` by its int8 version; returns sizes in bytes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    before = path.stat().st_size
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        target = Path(scratch) / "model.int8.onnx"
        quantize_dynamic(
            str(path), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
        shutil.move(str(target), path)
    return {"float_bytes": before, "int8_bytes": path.stat().st_size}


def quantize_vision(model: Any, image_size: tuple[int, int], path: Path) -> dict[str, Any]:
    """Quantize the checked float32 graph at ``path`` to int8; sizes and its difference from PyTorch."""
    import onnxruntime as ort
    import torch

    from blip2_triton.runtime import contract as C

    from .onnx_vision import _vision_to_query_module

    sizes = quantize_vision_graph(path)
    generator = torch.Generator().manual_seed(1234)
    pixel_values = torch.randn(3, 3, *image_size, generator=generator)
    with torch.no_grad():
        expected = _vision_to_query_module(model)(pixel_values).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([C.QUERY_EMBEDS], {C.PIXEL_VALUES: pixel_values.numpy()})
    if actual.shape != expected.shape:
        raise ExportError(
            f"int8 vision graph output shape {actual.shape} differs from PyTorch {expected.shape}"
        )
    diff = float(abs(actual.astype("float64") - expected.astype("float64")).max())
    scale = float(abs(expected).max())
    return {**sizes, "onnx_int8_max_abs_diff": diff, "query_embeds_max_abs": scale}
