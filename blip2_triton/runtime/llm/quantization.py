"""int8 for the language model: torch's dynamic quantization of its linear layers (CPU).

Weights of every ``nn.Linear`` (attention, feed-forward, output head) are stored as int8 with a
per-tensor scale; activations are quantized on the fly at each call. Embedding tables, layer norms
and the image-token embeddings stay float32. An export with ``--quantize int8`` records the method
in ``llm.json``; the LLM stage applies it after loading the float weights, so the repository keeps
one weights format.
"""

from __future__ import annotations

import warnings
from typing import Any

QUANTIZE_METHODS = ("none", "int8")


def quantize_language_model(model: Any, method: str) -> Any:
    """``model`` with its linear layers in int8 (``method`` "int8"), or unchanged ("none")."""
    if method == "none":
        return model
    if method != "int8":
        raise ValueError(f"unknown quantization {method!r}; choose from {', '.join(QUANTIZE_METHODS)}")
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch marks eager-mode quantization deprecated; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def weight_bytes(model: Any) -> int:
    """Bytes of the model's weights as held in memory (int8 packed weights counted as int8)."""
    import torch

    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in model.state_dict().values():
            total += _nbytes(value, torch)
    return total


def _nbytes(value: Any, torch: Any) -> int:
    if isinstance(value, torch.Tensor):
        if value.is_quantized:
            return value.int_repr().numel() * value.element_size()
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v, torch) for v in value)
    return 0
