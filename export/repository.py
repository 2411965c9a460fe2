"""The one export pipeline: checkpoint -> staged repository -> validated -> manifest -> moved into place.

What differs between architectures (which models, how the checkpoint loads) is a
``RepositoryWriter``: ``GenerationRepository`` and ``RetrievalRepository``. The pipeline picks the
first writer that accepts the checkpoint's config.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoint import load_config
from .configs import validate_repository
from .errors import ExportError
from .generation_repository import GenerationRepository
from .hub import resolve_source
from .manifest import write_manifest
from .model_folders import ModelFolders
from .onnx_export import OPSET
from .options import ExportOptions
from .progress import Progress
from .repository_writer import RepositoryWriter
from .retrieval_repository import RetrievalRepository

__all__ = ["WRITERS", "ExportOptions", "export_repository"]

# In order: the first that accepts a checkpoint exports it (generation accepts any, and says why not).
WRITERS: tuple[RepositoryWriter[Any], ...] = (RetrievalRepository(), GenerationRepository())


def export_repository(
    source: str,
    output: str | Path,
    options: ExportOptions | None = None,
    quiet: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Export the checkpoint ``source`` into a new model repository at ``output``; returns the manifest.

    ``source`` is a folder or a hub id; a hub id is resolved once to a commit (of ``revision``: a
    branch, tag or commit, the default branch when None) that every file is loaded from and the
    manifest records as ``hub_commit``.

    The repository is written to a temporary folder beside ``output`` and moved into place only
    once every config validates, so a failed export leaves nothing half-written.
    """
    options = options or ExportOptions()
    checkpoint_source = resolve_source(source, revision)
    config = load_config(checkpoint_source)
    writer = next(w for w in WRITERS if w.accepts(config))
    writer.check(config, options)
    output = _new_output(output)
    progress = Progress(writer.steps + 2, quiet)
    checkpoint = writer.load(checkpoint_source, config, options, progress)
    values = writer.template_values(checkpoint, options)
    with _staging(output) as staging:
        details = writer.write(checkpoint, ModelFolders(staging, values), options, progress)
        progress.step("validating every config.pbtxt against Triton's ModelConfig")
        models = validate_repository(staging)
        if set(models) != set(writer.models):
            raise ExportError(f"the repository holds {sorted(models)}, expected {sorted(writer.models)}")
        progress.step("writing manifest.json (versions, shapes, sha256 of every file)")
        manifest = write_manifest(
            staging,
            {
                "source": source,
                **checkpoint_source.identity(),
                "architecture": writer.architecture,
                **checkpoint.identity(),
                "dtype": options.dtype,
                "device": options.device,
                "vision_backend": options.vision_backend,
                "max_batch_size": options.max_batch_size,
                "onnx_opset": OPSET,
                **details,
                "models": list(writer.models),
            },
        )
    progress.result(f"model repository written to {output}")
    return manifest


def _new_output(output: str | Path) -> Path:
    """``output`` resolved; it must not exist yet, or be an empty folder."""
    output = Path(output).expanduser().resolve()
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"{output} exists and is not empty; choose a new --output folder")
    return output


@contextmanager
def _staging(output: Path) -> Iterator[Path]:
    """A temporary folder beside ``output``, moved onto it when the block succeeds, removed when not."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output.parent))
    try:
        yield staging
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
