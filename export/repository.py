"""Writing a self-contained Triton model repository for a BLIP-2 generation checkpoint."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.engine import LlmSettings

from .checkpoint import LoadedCheckpoint, language_model_family, load_generation_checkpoint, load_pretrained
from .configs import template_dir, tensor_block, validate_repository, write_config
from .errors import ExportError
from .manifest import write_manifest
from .onnx_vision import OPSET, export_vision_onnx, verify_vision_onnx

RUNTIME_PACKAGE = "blip2_runtime"
DTYPES = ("fp32", "fp16", "bf16")
VISION_BACKENDS = ("python", "onnxruntime")


@dataclass(frozen=True)
class ExportOptions:
    """What the user chose for an export."""

    max_batch_size: int = 8
    dtype: str = "fp32"
    vision_backend: str = "python"
    device: str = "cpu"
    queue_delay_us: int = 2000
    preprocess_instances: int = 2
    force: bool = False

    def check(self) -> None:
        if self.max_batch_size < 1:
            raise ExportError("--max-batch-size must be at least 1")
        if self.dtype not in DTYPES:
            raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}")
        if self.vision_backend not in VISION_BACKENDS:
            raise ExportError(f"--vision-backend must be one of {', '.join(VISION_BACKENDS)}")
        if self.dtype == "fp16" and self.device == "cpu" and not self.force:
            raise ExportError(
                "--dtype fp16 needs a GPU (--device cuda); on CPU use fp32 or bf16, or pass --force"
            )


class Progress:
    """Numbered steps with timings on stderr."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.done, self.quiet, self.started = total, 0, quiet, time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{self.done}/{self.total}] {message} (+{elapsed:.1f}s)", file=sys.stderr, flush=True)


def copy_runtime(destination: Path) -> None:
    """Vendor the plain-Python runtime into a Python-backend model folder."""
    source = Path(__file__).resolve().parent.parent / "blip2_triton" / "runtime"
    if not source.is_dir():
        from importlib.resources import files

        source = Path(str(files("blip2_triton.runtime")))
    shutil.copytree(
        source, destination / RUNTIME_PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


def _template_values(ckpt: LoadedCheckpoint, options: ExportOptions) -> dict[str, Any]:
    height, width = ckpt.image_size
    llm_inputs = [C.TEXT_INPUT, *C.GENERATION_INPUTS]
    return {
        "max_batch_size": options.max_batch_size,
        "queue_delay_us": options.queue_delay_us,
        "image_height": height,
        "image_width": width,
        "num_query_tokens": ckpt.num_query_tokens,
        "llm_hidden": ckpt.llm_hidden,
        "preprocess_instances": options.preprocess_instances,
        "vision_threads": 0,
        "vision_instance_kind": "KIND_GPU" if options.device.startswith("cuda") else "KIND_CPU",
        "llm_instance_kind": "KIND_GPU" if options.device.startswith("cuda") else "KIND_CPU",
        "llm_family": ckpt.family,
        "llm_device": options.device,
        "ensemble_inputs": tensor_block(C.ENSEMBLE_INPUTS),
        "ensemble_outputs": tensor_block(C.ENSEMBLE_OUTPUTS),
        "llm_inputs": tensor_block(llm_inputs),
        "llm_outputs": tensor_block(C.ENSEMBLE_OUTPUTS),
        "llm_input_map": "\n".join(
            f'      input_map {{ key: "{t.name}" value: "{t.name}" }}' for t in llm_inputs
        ),
    }


def _write_preprocess(ckpt: LoadedCheckpoint, values: dict, templates: Path, out: Path) -> None:
    model_dir = out / C.PREPROCESS_MODEL
    write_config(templates / C.PREPROCESS_MODEL / "config.pbtxt.tmpl", values, model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    shutil.copy2(templates / C.PREPROCESS_MODEL / "1" / "model.py", version / "model.py")
    copy_runtime(version)
    ckpt.processor.image_processor.save_pretrained(version / "image_processor")


def _write_vision(
    ckpt: LoadedCheckpoint, values: dict, templates: Path, out: Path, options, progress
) -> float:
    model_dir = out / C.VISION_MODEL
    template = templates / C.VISION_MODEL / f"config.{options.vision_backend}.pbtxt.tmpl"
    write_config(template, values, model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    onnx_path = version / "model.onnx"
    export_vision_onnx(ckpt.model, ckpt.image_size, onnx_path)
    progress.step("checking the ONNX graph against PyTorch on fresh random inputs")
    diff = verify_vision_onnx(ckpt.model, ckpt.image_size, onnx_path, options.dtype)
    print(f"      ONNX vs PyTorch max abs difference: {diff:.3g}", file=sys.stderr, flush=True)
    if options.vision_backend == "python":
        shutil.copy2(templates / C.VISION_MODEL / "1" / "model.py", version / "model.py")
        copy_runtime(version)
    return diff


def _write_llm(ckpt: LoadedCheckpoint, values: dict, templates: Path, out: Path, options) -> None:
    model_dir = out / C.LLM_MODEL
    write_config(templates / C.LLM_MODEL / "config.pbtxt.tmpl", values, model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    shutil.copy2(templates / C.LLM_MODEL / "1" / "model.py", version / "model.py")
    copy_runtime(version)
    ckpt.model.language_model.save_pretrained(version / "language_model")
    ckpt.processor.tokenizer.save_pretrained(version / "tokenizer")
    text_config = ckpt.model.config.text_config
    LlmSettings(
        family=ckpt.family,
        image_token_id=int(ckpt.model.config.image_token_id),
        num_query_tokens=ckpt.num_query_tokens,
        bos_token_id=getattr(text_config, "bos_token_id", None),  # T5 configs may have none
        dtype=options.dtype,
    ).save(version)


def _write_ensemble(values: dict, templates: Path, out: Path) -> None:
    model_dir = out / C.ENSEMBLE_MODEL
    write_config(templates / C.ENSEMBLE_MODEL / "config.pbtxt.tmpl", values, model_dir)
    (model_dir / "1").mkdir(parents=True)


T5_FP16_REFUSAL = (
    "--dtype fp16 is refused for Flan-T5 checkpoints: T5 overflows in fp16 (garbage or identical "
    "answers); use --dtype bf16 or fp32, or pass --force"
)


def refuse_fp16_for_t5(source: str) -> None:
    """Raise the one-line refusal when ``source`` is a T5 checkpoint (reads its config only)."""
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig, source)
    if getattr(config, "model_type", None) == "blip-2" and language_model_family(config) == "t5":
        raise ExportError(T5_FP16_REFUSAL)


def export_repository(
    source: str, output: str | Path, options: ExportOptions | None = None, quiet=False
) -> dict:
    """Export the checkpoint ``source`` into a new model repository at ``output``; returns the manifest.

    The repository is written to a temporary folder beside ``output`` and moved into place only
    once every config validates, so a failed export leaves nothing half-written.
    """
    options = options or ExportOptions()
    from .retrieval import export_retrieval_repository, is_retrieval_checkpoint

    if is_retrieval_checkpoint(source):  # Blip2ForImageTextRetrieval: embeddings, ITM, ITC
        return export_retrieval_repository(source, output, options, quiet=quiet)
    if options.dtype == "fp16" and not options.force:
        refuse_fp16_for_t5(source)
    options.check()
    output = Path(output).expanduser().resolve()
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"{output} exists and is not empty; choose a new --output folder")
    progress = Progress(7, quiet)
    progress.step(f"loading checkpoint {source} ({options.dtype})")
    ckpt = load_generation_checkpoint(source, options.dtype)
    templates = template_dir()
    values = _template_values(ckpt, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output.parent))
    try:
        progress.step("writing blip2_preprocess (image processor settings)")
        _write_preprocess(ckpt, values, templates, staging)
        progress.step(f"exporting blip2_vision to ONNX (opset {OPSET}, dynamic batch)")
        diff = _write_vision(ckpt, values, templates, staging, options, progress)
        progress.step("writing blip2_llm (language model weights, tokenizer, generation config)")
        _write_llm(ckpt, values, templates, staging, options)
        _write_ensemble(values, templates, staging)
        progress.step("validating every config.pbtxt against Triton's ModelConfig")
        validate_repository(staging)
        progress.step("writing manifest.json (versions, shapes, sha256 of every file)")
        height, width = ckpt.image_size
        manifest = write_manifest(
            staging,
            {
                "source": source,
                "architecture": "Blip2ForConditionalGeneration",
                "family": ckpt.family,
                "dtype": options.dtype,
                "device": options.device,
                "vision_backend": options.vision_backend,
                "max_batch_size": options.max_batch_size,
                "onnx_opset": OPSET,
                "onnx_max_abs_diff": diff,
                "shapes": {
                    "pixel_values": [-1, 3, height, width],
                    "query_embeds": [-1, ckpt.num_query_tokens, ckpt.llm_hidden],
                },
                "models": [C.ENSEMBLE_MODEL, C.PREPROCESS_MODEL, C.VISION_MODEL, C.LLM_MODEL],
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
