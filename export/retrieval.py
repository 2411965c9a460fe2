"""Writing a self-contained Triton model repository for a ``Blip2ForImageTextRetrieval`` checkpoint.

Models (all with ``max_batch_size > 0`` and dynamic batching):

- ``blip2_image_embed`` (ensemble): ``blip2_preprocess`` -> ``blip2_image_encoder``;
- ``blip2_text_embed`` (Python): tokenisation + the text graph;
- ``blip2_itm`` (Python, BLS): image preprocessing and text checks in-process (the runtime of
  ``blip2_preprocess``), then ``blip2_text_embed`` and ``blip2_image_encoder`` (once per image) side
  by side, then ``blip2_itm_head`` (ITM graph on the encoder's hidden states, ITC score from the
  image and text embeddings). Not an ensemble: Triton 2.51 keeps an ensemble request in flight for
  good when one of two parallel branches fails (an empty text while the image is encoded).

Same guarantees as the generation export: strict templates, configs parsed with Triton's
``ModelConfig``, ONNX graphs checked against PyTorch, a manifest with checksums, written to a
staging folder and moved into place only when everything validated.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.text_matching import RetrievalSettings

from .checkpoint import load_pretrained
from .configs import template_dir, validate_repository, write_config
from .errors import ExportError
from .manifest import write_manifest
from .onnx_retrieval import export_retrieval_onnx, verify_retrieval_onnx
from .onnx_vision import OPSET

RETRIEVAL_ARCHITECTURE = "Blip2ForImageTextRetrieval"
RETRIEVAL_MODELS = (
    C.PREPROCESS_MODEL,
    C.IMAGE_ENCODER_MODEL,
    C.IMAGE_EMBED_MODEL,
    C.TEXT_EMBED_MODEL,
    C.ITM_HEAD_MODEL,
    C.ITM_MODEL,
)
ONNX_FILES = {"image": "model.onnx", "text": "text.onnx", "itm": "itm.onnx"}


def is_retrieval_checkpoint(source: str) -> bool:
    """Whether ``source``'s config names ``Blip2ForImageTextRetrieval`` (reads the config only)."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig, source)
    return RETRIEVAL_ARCHITECTURE in (getattr(config, "architectures", None) or [])


@dataclass
class RetrievalCheckpoint:
    """A loaded retrieval checkpoint and what the export needs to know about it."""

    source: str
    model: Any  # Blip2ForImageTextRetrieval
    processor: Any  # Blip2Processor (BertTokenizer)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.image_text_hidden_size)

    @property
    def vision_tokens(self) -> int:
        """Positions of the vision encoder's output: [CLS] + one per patch."""
        return int(self.model.vision_model.embeddings.position_embedding.shape[1])

    @property
    def vision_hidden(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def text_settings(self) -> RetrievalSettings:
        """How texts reach the Q-Former, read from the processor and the config (see runtime.text_matching)."""
        config, processor = self.model.config, self.processor
        tokenizer = processor.tokenizer
        processor_queries = getattr(processor, "num_query_tokens", None)
        if config.image_token_index is not None:
            if processor_queries != self.num_query_tokens:
                raise ExportError(
                    f"{self.source}: the model drops the first {self.num_query_tokens} text ids (its config "
                    f"has image_token_index), but its processor puts {processor_queries or 0} image tokens "
                    "there; fix num_query_tokens in processor_config.json"
                )
            prefix: tuple[int, ...] = ()
        elif processor_queries:
            image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token.content)
            prefix = (int(image_token_id),) * int(processor_queries)
        else:
            prefix = ()
        positions = int(config.qformer_config.max_position_embeddings) - len(prefix)
        model_max = getattr(tokenizer, "model_max_length", None) or positions
        max_text_tokens = min(positions, int(model_max)) if model_max < 1_000_000 else positions
        if max_text_tokens < 3:
            raise ExportError(f"{self.source}: the Q-Former has room for {max_text_tokens} text tokens only")
        pad = tokenizer.pad_token_id
        return RetrievalSettings(
            num_query_tokens=self.num_query_tokens,
            embed_dim=self.embed_dim,
            max_text_tokens=max_text_tokens,
            pad_token_id=int(pad) if pad is not None else 0,
            prefix_ids=prefix,
            vocab_size=int(self.model.embeddings.word_embeddings.num_embeddings),
        )

    def model_ids(self, ids, mask):
        """Runtime ids -> what the processor hands the model (the image tokens it later drops)."""
        import torch

        if self.model.config.image_token_index is None:
            return ids, mask
        count = self.num_query_tokens
        images = torch.full((ids.shape[0], count), int(self.model.config.image_token_index), dtype=ids.dtype)
        return torch.cat([images, ids], dim=1), torch.cat([torch.ones_like(images), mask], dim=1)


def load_retrieval_checkpoint(source: str) -> RetrievalCheckpoint:
    """Load a ``Blip2ForImageTextRetrieval`` checkpoint (fp32) and its processor."""
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    model = load_pretrained(Blip2ForImageTextRetrieval, source).eval()
    processor = load_pretrained(Blip2Processor, source)
    if not getattr(model.config.qformer_config, "use_qformer_text_input", False):
        raise ExportError(f"{source}: the Q-Former has no text branch (use_qformer_text_input is false)")
    return RetrievalCheckpoint(source=source, model=model, processor=processor)


def _template_values(ckpt: RetrievalCheckpoint, options: Any) -> dict[str, Any]:
    height, width = ckpt.image_size
    return {
        "max_batch_size": options.max_batch_size,
        "queue_delay_us": options.queue_delay_us,
        "image_height": height,
        "image_width": width,
        "preprocess_instances": options.preprocess_instances,
        "num_query_tokens": ckpt.num_query_tokens,
        "embed_dim": ckpt.embed_dim,
        "vision_tokens": ckpt.vision_tokens,
        "vision_hidden": ckpt.vision_hidden,
        "onnx_threads": 0,
        "encoder_instance_kind": "KIND_GPU" if options.device.startswith("cuda") else "KIND_CPU",
    }


def _python_model(name: str, values: dict, templates: Path, out: Path, template: str = "config.pbtxt.tmpl"):
    """Config, ``model.py`` and the vendored runtime of a Python-backend model; returns its version folder."""
    from .repository import copy_runtime

    model_dir = out / name
    write_config(templates / name / template, values, model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    shutil.copy2(templates / name / "1" / "model.py", version / "model.py")
    copy_runtime(version)
    return version


def _write_models(ckpt: RetrievalCheckpoint, values: dict, templates: Path, out: Path, options) -> dict:
    from .repository import _write_preprocess

    _write_preprocess(ckpt, values, templates, out)
    settings = ckpt.text_settings()
    encoder_template = f"config.{options.vision_backend}.pbtxt.tmpl"
    if options.vision_backend == "python":
        encoder = _python_model(C.IMAGE_ENCODER_MODEL, values, templates, out, encoder_template)
    else:
        encoder = out / C.IMAGE_ENCODER_MODEL / "1"
        write_config(templates / C.IMAGE_ENCODER_MODEL / encoder_template, values, encoder.parent)
        encoder.mkdir(parents=True)
    text = _python_model(C.TEXT_EMBED_MODEL, values, templates, out)
    head = _python_model(C.ITM_HEAD_MODEL, values, templates, out)
    for folder in (text, head):
        ckpt.processor.tokenizer.save_pretrained(folder / "tokenizer")
        settings.save(folder)
    itm = _python_model(C.ITM_MODEL, values, templates, out)  # BLS: calls encoder, text, head
    ckpt.processor.image_processor.save_pretrained(itm / "image_processor")
    ckpt.processor.tokenizer.save_pretrained(itm / "tokenizer")
    settings.save(itm)
    write_config(templates / C.IMAGE_EMBED_MODEL / "config.pbtxt.tmpl", values, out / C.IMAGE_EMBED_MODEL)
    (out / C.IMAGE_EMBED_MODEL / "1").mkdir(parents=True)
    return {
        "image": encoder / ONNX_FILES["image"],
        "text": text / ONNX_FILES["text"],
        "itm": head / ONNX_FILES["itm"],
    }


def export_retrieval_repository(source: str, output: str | Path, options: Any = None, quiet=False) -> dict:
    """Export the retrieval checkpoint ``source`` into a new model repository at ``output``.

    ``options`` is the generation export's ``ExportOptions`` (fp32 only here). Returns the manifest.
    """
    from .repository import ExportOptions, Progress

    options = options or ExportOptions()
    options.check()
    if options.dtype != "fp32":
        raise ExportError(
            f"--dtype {options.dtype} is not supported for {RETRIEVAL_ARCHITECTURE} checkpoints yet; use fp32"
        )
    output = Path(output).expanduser().resolve()
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"{output} exists and is not empty; choose a new --output folder")
    progress = Progress(6, quiet)
    progress.step(f"loading retrieval checkpoint {source} (fp32)")
    ckpt = load_retrieval_checkpoint(source)
    templates = template_dir()
    values = _template_values(ckpt, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output.parent))
    try:
        progress.step("writing the model folders (preprocess, encoder, text, ITM head, ensembles)")
        paths = _write_models(ckpt, values, templates, staging, options)
        progress.step(f"exporting the image, text and ITM graphs to ONNX (opset {OPSET}, dynamic batch)")
        export_retrieval_onnx(ckpt.model, ckpt.image_size, ckpt.num_query_tokens, paths)
        progress.step("checking the ONNX graphs against transformers on fresh random inputs")
        settings = ckpt.text_settings()
        diffs = verify_retrieval_onnx(ckpt.model, ckpt.image_size, settings, ckpt.model_ids, paths)
        if not quiet:
            shown = ", ".join(f"{name} {diff:.3g}" for name, diff in diffs.items())
            print(f"      ONNX vs PyTorch max abs difference: {shown}", file=sys.stderr, flush=True)
        progress.step("validating every config.pbtxt against Triton's ModelConfig")
        models = validate_repository(staging)
        if set(models) != set(RETRIEVAL_MODELS):
            raise ExportError(f"the repository holds {sorted(models)}, expected {sorted(RETRIEVAL_MODELS)}")
        progress.step("writing manifest.json (versions, shapes, sha256 of every file)")
        height, width = ckpt.image_size
        manifest = write_manifest(
            staging,
            {
                "source": source,
                "architecture": RETRIEVAL_ARCHITECTURE,
                "dtype": options.dtype,
                "device": options.device,
                "vision_backend": options.vision_backend,
                "max_batch_size": options.max_batch_size,
                "onnx_opset": OPSET,
                "onnx_max_abs_diff": diffs,
                "text": {
                    "max_text_tokens": settings.max_text_tokens,
                    "prefix_tokens": len(settings.prefix_ids),
                },
                "shapes": {
                    "pixel_values": [-1, 3, height, width],
                    "image_embeds": [-1, ckpt.num_query_tokens, ckpt.embed_dim],
                    "text_embeds": [-1, ckpt.embed_dim],
                    "vision_hidden_states": [-1, ckpt.vision_tokens, ckpt.vision_hidden],
                },
                "models": list(RETRIEVAL_MODELS),
            },
        )
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"model repository written to {output}", file=sys.stderr, flush=True)
    return manifest
