"""Errors raised by the runtime logic; the Triton glue maps them onto Triton error codes."""

from __future__ import annotations

import re


def one_line(text: object) -> str:
    """``text`` on one line: runs of whitespace (line breaks included) become one space."""
    return " ".join(str(text).split())


class Blip2RuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class RequestValidationError(Blip2RuntimeError):
    """A request is malformed. Answered with Triton INVALID_ARG and this one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class EngineOverloadedError(Blip2RuntimeError):
    """Every slot is busy and the wait queue is full. Answered at once with Triton UNAVAILABLE."""

    prefix = "server overloaded:"

    def __init__(self, message: str, reason: str = "queue_full") -> None:
        message = one_line(message)
        super().__init__(message if message.startswith(self.prefix) else f"{self.prefix} {message}")
        self.reason = reason  # for the rejection metric: "queue_full" or "shutting_down"


class ClientGoneError(Blip2RuntimeError):
    """The client cancelled the request (or its deadline passed). Answered with Triton CANCELLED.

    (The SDK's ``ClientGoneError`` is what a client sees; this is the server's side.)"""

    prefix = "request cancelled:"

    def __init__(self, message: str = "the client cancelled it") -> None:
        message = one_line(message)
        super().__init__(message if message.startswith(self.prefix) else f"{self.prefix} {message}")


# Triton's own refusals of a step's queue policy (max_queue_size, default_timeout_microseconds).
QUEUE_REFUSALS = ("Exceeds maximum queue size", "Request timeout expired")


def error_from_step_message(message: str) -> Blip2RuntimeError | None:
    """The runtime error a called model answered, recognised by its message (BLS in Python backend
    2.51 reports every error code as INTERNAL, but keeps the message); None when not ours. A step's
    full queue is an overload, answered UNAVAILABLE like the engine's."""
    for kind in (EngineOverloadedError, ClientGoneError):
        if message.startswith(kind.prefix):
            return kind(message)
    if any(refusal in message for refusal in QUEUE_REFUSALS):
        return EngineOverloadedError(message)
    return None


# The Triton error code each runtime error is answered with; anything else is INTERNAL.
CODES: tuple[tuple[type[Blip2RuntimeError], str], ...] = (
    (RequestValidationError, "INVALID_ARG"),
    (EngineOverloadedError, "UNAVAILABLE"),
    (ClientGoneError, "CANCELLED"),
)
# A relayed request's error crosses a BLS call, which in Python backend 2.51 turns every error code
# into INTERNAL but keeps the message: the engine model puts the code in front of the message
# ("[INVALID_ARG] ...") and the relay reads it back.
_TAG = re.compile(r"^\[(INVALID_ARG|UNAVAILABLE|CANCELLED)\] ")


def rejection_reason(exc: BaseException) -> str | None:
    """Why a request was refused before generation ("invalid", "queue_full", "shutting_down"), for
    the rejection metric; None for an error that is no refusal (a cancel, a failure)."""
    if isinstance(exc, RequestValidationError):
        return "invalid"
    if isinstance(exc, EngineOverloadedError):
        return exc.reason
    return None


def code_of(exc: BaseException) -> str:
    """The Triton error code name ``exc`` is answered with."""
    return next((code for kind, code in CODES if isinstance(exc, kind)), "INTERNAL")


def tagged(message: str, code: str) -> str:
    """``message`` with its code in front, for a relay to read back (``from_tagged``)."""
    return f"[{code}] {message}"


def from_tagged(message: str) -> Blip2RuntimeError | None:
    """The runtime error a tagged message stands for; None when the message has no tag."""
    match = _TAG.match(message)
    if match is None:
        return None
    kind = next(kind for kind, code in CODES if code == match.group(1))
    return kind(message[match.end() :])
