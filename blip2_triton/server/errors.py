"""Errors of running tritonserver: each message is one line naming the cause."""

from __future__ import annotations

from .log_parsing import one_line


class ServerProcessError(Exception):
    """Base class of every error this module raises. ``log_tail``: end of the server log, if any."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(one_line(message))
        self.log_tail = log_tail


class TritonNotInstalledError(ServerProcessError):
    """The ``nvidia-pytriton`` package (which ships tritonserver) is not installed."""


class PortInUseError(ServerProcessError):
    """A port the server needs is taken; nothing was started."""


class ServerStartupError(ServerProcessError):
    """tritonserver exited or did not become ready in time."""


class ModelLoadError(ServerStartupError):
    """A model of the repository failed to load. ``model_name`` names it."""

    def __init__(self, message: str, *, model_name: str, log_tail: str = "") -> None:
        super().__init__(message, log_tail=log_tail)
        self.model_name = model_name
