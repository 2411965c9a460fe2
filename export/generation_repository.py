"""The models of a ``Blip2ForConditionalGeneration`` export: preprocess, vision ONNX, LLM, ensemble."""

from __future__ import annotations

from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.llm.checkpoint import LlmSettings, context_length

from .generation_checkpoint import GenerationCheckpoint, load_generation_checkpoint, refuse_fp16_for_t5
from .hub import CheckpointSource
from .model_folders import ModelFolders
from .onnx_export import OPSET
from .onnx_vision import export_vision_onnx, verify_vision_onnx
from .options import ExportOptions
from .progress import Progress
from .quantize import quantize_vision
from .repository_writer import RepositoryWriter


class GenerationRepository(RepositoryWriter[GenerationCheckpoint]):
    """``blip2`` (a relay) -> ``blip2_stream`` (checks, preprocesses, the engine) -> ``blip2_vision``.

    ``blip2_preprocess`` stays for callers of the steps; the engine model preprocesses itself.
    """

    architecture = "Blip2ForConditionalGeneration"
    models = (C.PUBLIC_MODEL, C.STREAM_MODEL, C.PREPROCESS_MODEL, C.VISION_MODEL)
    steps = 6

    def accepts(self, config: Any) -> bool:
        return True  # any other checkpoint: ``load`` says why it is not a generation checkpoint

    def check(self, config: Any, options: ExportOptions) -> None:
        if options.dtype == "fp16" and not options.force:
            refuse_fp16_for_t5(config)
        super().check(config, options)

    def load(
        self, source: CheckpointSource, config: Any, options: ExportOptions, progress: Progress
    ) -> GenerationCheckpoint:
        progress.step(f"loading checkpoint {source.name} ({options.dtype})")
        return load_generation_checkpoint(source, config, options.dtype)

    def template_values(self, checkpoint: GenerationCheckpoint, options: ExportOptions) -> dict[str, Any]:
        return {
            **super().template_values(checkpoint, options),
            "vision_threads": 0,
            "vision_instance_kind": options.instance_kind,
            "llm_instance_kind": options.instance_kind,
            "llm_device": options.device,
        }

    def write(
        self,
        checkpoint: GenerationCheckpoint,
        folders: ModelFolders,
        options: ExportOptions,
        progress: Progress,
    ) -> dict[str, Any]:
        progress.step("writing blip2_preprocess (image processor settings)")
        folders.preprocess(checkpoint)
        progress.step(f"exporting blip2_vision to ONNX (opset {OPSET}, dynamic batch)")
        onnx_path = folders.onnx_model(C.VISION_MODEL, options.vision_backend) / "model.onnx"
        export_vision_onnx(checkpoint.model, checkpoint.image_size, onnx_path)
        progress.step("checking the ONNX graph against PyTorch on fresh random inputs")
        diff = verify_vision_onnx(checkpoint.model, checkpoint.image_size, onnx_path, options.dtype)
        progress.result(f"      ONNX vs PyTorch max abs difference: {diff:.3g}")
        quantized = None
        if options.quantize == "int8":
            quantized = quantize_vision(checkpoint.model, checkpoint.image_size, onnx_path)
            progress.result(
                f"      int8 vision graph: {quantized['int8_bytes']:,} bytes (float32 "
                f"{quantized['float_bytes']:,}), max abs difference {quantized['onnx_int8_max_abs_diff']:.3g}"
            )
        progress.step(
            f"writing {C.ENGINE_MODEL} (language model weights, tokenizer, image processor, generation config)"
        )
        settings = self._llm_settings(checkpoint, options)
        self._write_engine(checkpoint, folders, settings)
        progress.step(f"writing {C.PUBLIC_MODEL} (the unary relay to {C.ENGINE_MODEL})")
        folders.model(C.PUBLIC_MODEL, python=True)
        height, width = checkpoint.image_size
        return {
            "response_cache_bytes": options.vision_cache_mb * 2**20,
            "onnx_max_abs_diff": diff,
            "quantize": {"method": options.quantize, **(quantized or {})},
            "shapes": {
                "pixel_values": [-1, 3, height, width],
                "query_embeds": [-1, checkpoint.num_query_tokens, checkpoint.llm_hidden],
            },
        }

    @staticmethod
    def _llm_settings(checkpoint: GenerationCheckpoint, options: ExportOptions) -> LlmSettings:
        text_config = checkpoint.model.config.text_config
        return LlmSettings(
            family=checkpoint.family,
            image_token_id=int(checkpoint.model.config.image_token_id),
            num_query_tokens=checkpoint.num_query_tokens,
            bos_token_id=getattr(text_config, "bos_token_id", None),  # T5 configs may have none
            dtype=options.dtype,
            quantize=options.quantize,
            context_length=context_length(text_config, checkpoint.family),
            max_sequence_tokens=options.max_sequence_tokens,
        )

    @staticmethod
    def _write_engine(checkpoint: GenerationCheckpoint, folders: ModelFolders, settings: LlmSettings) -> None:
        version = folders.model(C.ENGINE_MODEL, python=True)
        checkpoint.model.language_model.save_pretrained(version / "language_model")
        checkpoint.processor.tokenizer.save_pretrained(version / "tokenizer")
        checkpoint.processor.image_processor.save_pretrained(version / "image_processor")
        settings.save(version)
