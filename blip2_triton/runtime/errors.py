"""Errors raised by the runtime logic; the Triton glue maps them onto Triton error codes."""

from __future__ import annotations


class Blip2RuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class RequestValidationError(Blip2RuntimeError):
    """A request is malformed. Answered with Triton INVALID_ARG and this one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class EngineOverloadedError(Blip2RuntimeError):
    """Every slot is busy and the wait queue is full. Answered at once with Triton UNAVAILABLE."""


class RequestCancelledError(Blip2RuntimeError):
    """The client cancelled the request (or its deadline passed). Answered with Triton CANCELLED."""
