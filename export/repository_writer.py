"""What an architecture's export provides to the one staging pipeline (``export.repository``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from .checkpoint import Checkpoint
from .hub import CheckpointSource
from .model_folders import ModelFolders
from .options import ExportOptions
from .progress import Progress

CheckpointT = TypeVar("CheckpointT", bound=Checkpoint)


class RepositoryWriter(ABC, Generic[CheckpointT]):
    """Loads one architecture's checkpoint and writes its models; the pipeline does the rest.

    The pipeline (stage, validate, manifest, move into place) calls, in order: ``accepts``,
    ``check``, ``load``, ``template_values``, ``write``. Adding a model is a template folder in
    ``model_repository/``, a ``folders.model(...)`` call in ``write`` and its name in ``models``.
    """

    architecture: ClassVar[str]  # the transformers class, recorded in the manifest
    models: ClassVar[tuple[str, ...]]  # exactly the models ``write`` writes
    steps: ClassVar[int]  # progress steps taken by ``load`` and ``write``

    @abstractmethod
    def accepts(self, config: Any) -> bool:
        """Whether this writer exports the checkpoint with this transformers config."""

    def check(self, config: Any, options: ExportOptions) -> None:
        """Refuse options before anything is loaded (one-line ExportError)."""
        options.check()

    @abstractmethod
    def load(
        self, source: CheckpointSource, config: Any, options: ExportOptions, progress: Progress
    ) -> CheckpointT:
        """Load the checkpoint (one progress step)."""

    def template_values(self, checkpoint: CheckpointT, options: ExportOptions) -> dict[str, Any]:
        """Values for the ``config.pbtxt`` templates: the options', the checkpoint's, the writer's."""
        return {**options.template_values(), **checkpoint.template_values()}

    @abstractmethod
    def write(
        self, checkpoint: CheckpointT, folders: ModelFolders, options: ExportOptions, progress: Progress
    ) -> dict[str, Any]:
        """Write every model of ``models``; returns the manifest entries of this architecture."""
