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

    prefix = "server overloaded:"

    def __init__(self, message: str) -> None:
        message = " ".join(str(message).split())
        super().__init__(message if message.startswith(self.prefix) else f"{self.prefix} {message}")


class RequestCancelledError(Blip2RuntimeError):
    """The client cancelled the request (or its deadline passed). Answered with Triton CANCELLED."""

    prefix = "request cancelled:"

    def __init__(self, message: str = "the client cancelled it") -> None:
        message = " ".join(str(message).split())
        super().__init__(message if message.startswith(self.prefix) else f"{self.prefix} {message}")


# Triton's own refusals of a step's queue policy (max_queue_size, default_timeout_microseconds).
QUEUE_REFUSALS = ("Exceeds maximum queue size", "Request timeout expired")


def error_from_step_message(message: str) -> Blip2RuntimeError | None:
    """The runtime error a called model answered, recognised by its message (BLS in Python backend
    2.51 reports every error code as INTERNAL, but keeps the message); None when not ours. A step's
    full queue is an overload, answered UNAVAILABLE like the engine's."""
    for kind in (EngineOverloadedError, RequestCancelledError):
        if message.startswith(kind.prefix):
            return kind(message)
    if any(refusal in message for refusal in QUEUE_REFUSALS):
        return EngineOverloadedError(message)
    return None
