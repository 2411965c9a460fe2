"""Vision encoder + Q-Former + language projection as one ONNX graph, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blip2_triton.runtime import contract as C

from .onnx_export import checked_difference, export_graph

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


def _vision_to_query_module(model: Any):
    """A module doing what ``Blip2ForConditionalGeneration.generate`` does before the LLM.

    A bf16 model's vision stage becomes an fp32 copy: ONNX opset 17 has no bf16 Conv, onnxruntime's
    CPU provider runs no bf16 graph, and TensorRT builds reduced-precision engines from fp32 graphs.
    (torch's TorchScript exporter also cannot trace bf16 SDPA.) The language model stays bf16.
    """
    import copy

    import torch

    vision_model, qformer, language_projection = model.vision_model, model.qformer, model.language_projection
    query_tokens = model.query_tokens
    if vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16:
        vision_model, qformer, language_projection = (
            copy.deepcopy(part).float() for part in (vision_model, qformer, language_projection)
        )
        query_tokens = torch.nn.Parameter(query_tokens.detach().float(), requires_grad=False)

    class VisionToQuery(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model = vision_model
            self.qformer = qformer
            self.query_tokens = query_tokens
            self.language_projection = language_projection
            self.dtype_ = vision_model.embeddings.patch_embedding.weight.dtype

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            image_embeds = self.vision_model(pixel_values.to(self.dtype_), return_dict=True).last_hidden_state
            image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
            query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            query_output = self.qformer(
                query_embeds=query_tokens,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_attention_mask,
                return_dict=True,
            ).last_hidden_state
            if query_output.dtype != image_embeds.dtype:
                query_output = query_output.to(image_embeds.dtype)
            return self.language_projection(query_output).float()

    return VisionToQuery().eval()


def export_vision_onnx(model: Any, image_size: tuple[int, int], path: Path) -> None:
    """Write the ONNX graph with a dynamic batch axis and the contract's tensor names."""
    import torch

    batch = {0: "batch"}
    export_graph(
        _vision_to_query_module(model),
        (torch.randn(2, 3, *image_size),),
        path,
        [C.PIXEL_VALUES],
        [C.QUERY_EMBEDS],
        {C.PIXEL_VALUES: batch, C.QUERY_EMBEDS: batch},
    )


def verify_vision_onnx(model: Any, image_size: tuple[int, int], path: Path, dtype: str) -> float:
    """Max abs difference between onnxruntime and PyTorch on fresh random inputs (batch 3)."""
    import onnxruntime as ort
    import torch

    module = _vision_to_query_module(model)
    generator = torch.Generator().manual_seed(1234)
    pixel_values = torch.randn(3, 3, *image_size, generator=generator)
    with torch.no_grad():
        expected = module(pixel_values).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([C.QUERY_EMBEDS], {C.PIXEL_VALUES: pixel_values.numpy()})
    return checked_difference("vision", actual, expected, TOLERANCE[dtype])
