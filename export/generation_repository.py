"""The models of a ``Blip2ForConditionalGeneration`` export: preprocess, vision ONNX, LLM, ensemble."""

from __future__ import annotations

from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.engine import LlmSettings

from .configs import tensor_block
from .generation_checkpoint import GenerationCheckpoint, load_generation_checkpoint, refuse_fp16_for_t5
from .model_folders import ModelFolders
from .onnx_export import OPSET
from .onnx_vision import export_vision_onnx, verify_vision_onnx
from .options import ExportOptions
from .progress import Progress
from .repository_writer import RepositoryWriter

LLM_INPUTS = (C.TEXT_INPUT, *C.GENERATION_INPUTS)


class GenerationRepository(RepositoryWriter[GenerationCheckpoint]):
    """``blip2`` (ensemble) = ``blip2_preprocess`` -> ``blip2_vision`` -> ``blip2_llm``."""

    architecture = "Blip2ForConditionalGeneration"
    models = (C.PUBLIC_MODEL, C.PREPROCESS_MODEL, C.VISION_MODEL, C.LLM_MODEL)
    steps = 5

    def accepts(self, config: Any) -> bool:
        return True  # any other checkpoint: ``load`` says why it is not a generation checkpoint

    def check(self, config: Any, options: ExportOptions) -> None:
        if options.dtype == "fp16" and not options.force:
            refuse_fp16_for_t5(config)
        super().check(config, options)

    def load(
        self, source: str, config: Any, options: ExportOptions, progress: Progress
    ) -> GenerationCheckpoint:
        progress.step(f"loading checkpoint {source} ({options.dtype})")
        return load_generation_checkpoint(source, config, options.dtype)

    def template_values(self, checkpoint: GenerationCheckpoint, options: ExportOptions) -> dict[str, Any]:
        return {
            **super().template_values(checkpoint, options),
            "vision_threads": 0,
            "vision_instance_kind": options.instance_kind,
            "llm_instance_kind": options.instance_kind,
            "llm_device": options.device,
            "ensemble_inputs": tensor_block(C.PUBLIC_INPUTS),
            "ensemble_outputs": tensor_block(C.PUBLIC_OUTPUTS),
            "llm_inputs": tensor_block(LLM_INPUTS),
            "llm_outputs": tensor_block(C.PUBLIC_OUTPUTS),
            "llm_input_map": "\n".join(
                f'      input_map {{ key: "{t.name}" value: "{t.name}" }}' for t in LLM_INPUTS
            ),
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
        progress.step("writing blip2_llm (language model weights, tokenizer, generation config)")
        self._write_llm(checkpoint, folders, options)
        folders.model(C.PUBLIC_MODEL, python=False)
        height, width = checkpoint.image_size
        return {
            "onnx_max_abs_diff": diff,
            "shapes": {
                "pixel_values": [-1, 3, height, width],
                "query_embeds": [-1, checkpoint.num_query_tokens, checkpoint.llm_hidden],
            },
        }

    @staticmethod
    def _write_llm(checkpoint: GenerationCheckpoint, folders: ModelFolders, options: ExportOptions) -> None:
        version = folders.model(C.LLM_MODEL, python=True)
        checkpoint.model.language_model.save_pretrained(version / "language_model")
        checkpoint.processor.tokenizer.save_pretrained(version / "tokenizer")
        text_config = checkpoint.model.config.text_config
        LlmSettings(
            family=checkpoint.family,
            image_token_id=int(checkpoint.model.config.image_token_id),
            num_query_tokens=checkpoint.num_query_tokens,
            bos_token_id=getattr(text_config, "bos_token_id", None),  # T5 configs may have none
            dtype=options.dtype,
        ).save(version)
