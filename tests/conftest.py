"""Session fixtures: tiny checkpoints built here, exported, served by a real tritonserver."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from blip2_triton import fixtures
from blip2_triton.server import TritonServer

from .parity import build_relocated_repository
from .reference import GenerationReference

SAMPLES = fixtures.samples_dir()


@dataclass
class ServedModel:
    """A live server for an exported repository, and the transformers reference for it."""

    server: TritonServer
    repository: Path
    reference_model: GenerationReference

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    def reference(self, image: bytes, prompt: str | None = None, **generation) -> str:
        return self.reference_model.generate(image, prompt, **generation)


def start_server(repository: Path, log_file: Path) -> TritonServer:
    server = TritonServer.on_free_ports(repository, log_file=log_file)
    server.start()
    return server


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    return fixtures.sample_images()


@pytest.fixture(scope="session")
def opt_build(tmp_path_factory) -> dict[str, Path]:
    """The tiny OPT export, moved elsewhere with its checkpoint deleted (see build_relocated_repository)."""
    return build_relocated_repository(tmp_path_factory.mktemp("opt"), "opt")


@pytest.fixture(scope="session")
def opt_reference(opt_build) -> GenerationReference:
    return GenerationReference(opt_build["reference_checkpoint"])


@pytest.fixture(scope="session")
def opt_server(opt_build, opt_reference, tmp_path_factory):
    server = start_server(opt_build["repository"], tmp_path_factory.mktemp("logs") / "opt-server.log")
    try:
        yield ServedModel(server, opt_build["repository"], opt_reference)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def t5_build(tmp_path_factory) -> dict[str, Path]:
    """The tiny T5 export, moved elsewhere with its checkpoint deleted (see build_relocated_repository)."""
    return build_relocated_repository(tmp_path_factory.mktemp("t5"), "t5")


@pytest.fixture(scope="session")
def t5_server(t5_build, tmp_path_factory):
    """A live server of the tiny T5 export (the T5 parity tests and the OpenAI frontend's share it)."""
    reference = GenerationReference(t5_build["reference_checkpoint"])
    server = start_server(t5_build["repository"], tmp_path_factory.mktemp("logs") / "t5-server.log")
    try:
        yield ServedModel(server, t5_build["repository"], reference)
    finally:
        server.stop()
