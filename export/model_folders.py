"""Writing model folders into a repository being staged: config, version folder, Python-backend code.

A Python-backend model gets its ``model.py`` from ``model_repository/<model>/1/`` and a copy of the
plain-Python runtime (the package ``blip2_triton.runtime``) as ``blip2_runtime/`` beside it, so an
exported repository needs nothing from this package to serve.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from importlib.resources import as_file, files
from pathlib import Path

from blip2_triton.runtime import contract as C

from .checkpoint import Checkpoint
from .configs import CONFIG_TEMPLATE, template_dir, write_config

RUNTIME_SOURCE = "blip2_triton.runtime"
RUNTIME_PACKAGE = "blip2_runtime"
VERSION = "1"


def copy_runtime(destination: Path) -> None:
    """Vendor the plain-Python runtime into a Python-backend model's version folder."""
    with as_file(files(RUNTIME_SOURCE)) as source:
        shutil.copytree(
            source, destination / RUNTIME_PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )


class ModelFolders:
    """The model folders of one repository at ``root``, configs rendered with ``values``."""

    def __init__(self, root: Path, values: Mapping[str, object]) -> None:
        self.root, self.values = root, values

    def model(
        self, name: str, *, python: bool, template: str = CONFIG_TEMPLATE, code_from: str | None = None
    ) -> Path:
        """Write ``name/config.pbtxt`` and ``name/1/``; with ``python``, its code too (the
        ``model.py`` of ``code_from`` when two models share one). Returns ``name/1``."""
        write_config(name, self.values, self.root / name, template)
        version = self.root / name / VERSION
        version.mkdir(parents=True)
        if python:
            code = template_dir() / (code_from or name) / VERSION / "model.py"
            (version / "model.py").write_bytes(code.read_bytes())
            copy_runtime(version)
        return version

    def onnx_model(self, name: str, backend: str) -> Path:
        """A model serving an image graph: onnxruntime in the Python backend (the one ``model.py`` of
        ``blip2_vision``, which serves whatever outputs the config names), or Triton's own backend."""
        return self.model(
            name,
            python=backend == "python",
            template=f"config.{backend}.pbtxt.tmpl",
            code_from=C.VISION_MODEL,
        )

    def preprocess(self, checkpoint: Checkpoint) -> Path:
        """``blip2_preprocess`` (image bytes -> pixel values), shared by every architecture."""
        version = self.model(C.PREPROCESS_MODEL, python=True)
        checkpoint.processor.image_processor.save_pretrained(version / "image_processor")
        return version
