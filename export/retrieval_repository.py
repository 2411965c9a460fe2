"""The models of a ``Blip2ForImageTextRetrieval`` export: image and text embeddings, ITM and ITC.

Models (all with ``max_batch_size > 0`` and dynamic batching):

- ``blip2_image_embed`` (ensemble): ``blip2_preprocess`` -> ``blip2_image_encoder``;
- ``blip2_text_embed`` (Python): tokenisation + the text graph;
- ``blip2_itm`` (Python, BLS): image preprocessing and text checks in-process (the runtime of
  ``blip2_preprocess``), then ``blip2_text_embed`` and ``blip2_image_encoder`` (once per image) side
  by side, then ``blip2_itm_head`` (ITM graph on the encoder's hidden states, ITC score from the
  image and text embeddings). Not an ensemble: Triton 2.51 keeps an ensemble request in flight for
  good when one of two parallel branches fails (an empty text while the image is encoded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.retrieval.text_matching import RetrievalSettings

from .errors import ExportError
from .hub import CheckpointSource
from .model_folders import ModelFolders
from .onnx_export import OPSET
from .onnx_retrieval import export_retrieval_onnx, verify_retrieval_onnx
from .options import ExportOptions
from .progress import Progress
from .repository_writer import RepositoryWriter
from .retrieval_checkpoint import (
    RETRIEVAL_ARCHITECTURE,
    RetrievalCheckpoint,
    is_retrieval_config,
    load_retrieval_checkpoint,
)

ONNX_FILES = {"image": "model.onnx", "text": "text.onnx", "itm": "itm.onnx"}


class RetrievalRepository(RepositoryWriter[RetrievalCheckpoint]):
    """``blip2_image_embed``, ``blip2_text_embed`` and ``blip2_itm`` over their shared steps."""

    architecture = RETRIEVAL_ARCHITECTURE
    models = (
        C.PREPROCESS_MODEL,
        C.IMAGE_ENCODER_MODEL,
        C.IMAGE_EMBED_MODEL,
        C.TEXT_EMBED_MODEL,
        C.ITM_HEAD_MODEL,
        C.ITM_MODEL,
    )
    steps = 4

    def accepts(self, config: Any) -> bool:
        return is_retrieval_config(config)

    def check(self, config: Any, options: ExportOptions) -> None:
        super().check(config, options)
        if options.quantize != "none":
            raise ExportError(f"--quantize is not supported for {RETRIEVAL_ARCHITECTURE} checkpoints yet")
        if options.dtype != "fp32":
            raise ExportError(
                f"--dtype {options.dtype} is not supported for {RETRIEVAL_ARCHITECTURE} checkpoints yet; use fp32"
            )

    def load(
        self, source: CheckpointSource, config: Any, options: ExportOptions, progress: Progress
    ) -> RetrievalCheckpoint:
        progress.step(f"loading retrieval checkpoint {source.name} (fp32)")
        return load_retrieval_checkpoint(source)

    def template_values(self, checkpoint: RetrievalCheckpoint, options: ExportOptions) -> dict[str, Any]:
        return {
            **super().template_values(checkpoint, options),
            "onnx_threads": 0,
            "encoder_instance_kind": options.instance_kind,
        }

    def write(
        self,
        checkpoint: RetrievalCheckpoint,
        folders: ModelFolders,
        options: ExportOptions,
        progress: Progress,
    ) -> dict[str, Any]:
        progress.step("writing the model folders (preprocess, encoder, text, ITM head, ensembles)")
        settings = checkpoint.text_settings()
        paths = self._write_models(checkpoint, settings, folders, options)
        progress.step(f"exporting the image, text and ITM graphs to ONNX (opset {OPSET}, dynamic batch)")
        export_retrieval_onnx(checkpoint.model, checkpoint.image_size, checkpoint.num_query_tokens, paths)
        progress.step("checking the ONNX graphs against transformers on fresh random inputs")
        diffs = verify_retrieval_onnx(
            checkpoint.model, checkpoint.image_size, settings, checkpoint.model_ids, paths
        )
        shown = ", ".join(f"{name} {diff:.3g}" for name, diff in diffs.items())
        progress.result(f"      ONNX vs PyTorch max abs difference: {shown}")
        height, width = checkpoint.image_size
        queries, dim = checkpoint.num_query_tokens, checkpoint.embed_dim
        return {
            "onnx_max_abs_diff": diffs,
            "text": {"max_text_tokens": settings.max_text_tokens, "prefix_tokens": len(settings.prefix_ids)},
            "shapes": {
                "pixel_values": [-1, 3, height, width],
                "image_embeds": [-1, queries, dim],
                "text_embeds": [-1, dim],
                "vision_hidden_states": [-1, checkpoint.vision_tokens, checkpoint.vision_hidden],
            },
        }

    @staticmethod
    def _write_models(
        checkpoint: RetrievalCheckpoint,
        settings: RetrievalSettings,
        folders: ModelFolders,
        options: ExportOptions,
    ) -> dict[str, Path]:
        """Every model folder; returns where the three ONNX graphs go."""
        tokenizer = checkpoint.processor.tokenizer
        folders.preprocess(checkpoint)
        encoder = folders.onnx_model(C.IMAGE_ENCODER_MODEL, options.vision_backend)
        text = folders.model(C.TEXT_EMBED_MODEL, python=True)
        head = folders.model(C.ITM_HEAD_MODEL, python=True)
        itm = folders.model(C.ITM_MODEL, python=True)  # BLS: calls encoder, text, head
        checkpoint.processor.image_processor.save_pretrained(itm / "image_processor")
        for folder in (text, head, itm):
            tokenizer.save_pretrained(folder / "tokenizer")
            settings.save(folder)
        folders.model(C.IMAGE_EMBED_MODEL, python=False)
        return {
            "image": encoder / ONNX_FILES["image"],
            "text": text / ONNX_FILES["text"],
            "itm": head / ONNX_FILES["itm"],
        }
