"""What both transports' streams share: reading ``blip2_stream``'s responses, its errors, its limits.

The server sends one response per new piece of text, then an empty response flagged final
(``triton_final_response``). An error on a gRPC stream carries the server's one-line message but
no status code: its kind is read from the message (the server's refusals for overload,
cancellation and internal errors have fixed prefixes, Triton's queue refusals fixed words;
anything else is a bad request). The sending itself is
:meth:`Transport.stream <blip2_triton.client.transport.Transport.stream>` and its asyncio twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blip2_triton.runtime.errors import QUEUE_REFUSALS, EngineOverloadedError
from blip2_triton.runtime.errors import ClientGoneError as ServerCancelled

from .errors import (
    Blip2ClientError,
    InferenceTimeoutError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    ServerUnavailableError,
    StreamingNotSupportedError,
    map_triton_error,
)
from .options import ClientOptions, seconds

__all__ = ["check_stream_protocol", "read_stream_response", "stream_error", "stream_timeout_s", "timed_out"]

_FINAL = "triton_final_response"

# (words in the message, the error): first match wins; no match is a bad request.
_KINDS: tuple[tuple[tuple[str, ...], type[Blip2ClientError]], ...] = (
    ((EngineOverloadedError.prefix, *QUEUE_REFUSALS), ServerUnavailableError),
    ((ServerCancelled.prefix,), RequestCancelledError),
    (("internal error:", "unknown model", "no available versions"), ServerError),
    (("deadline", "timeout", "timed out"), InferenceTimeoutError),
)


def check_stream_protocol(protocol: str) -> None:
    """StreamingNotSupportedError unless ``protocol`` is gRPC (the only one the SDK streams over)."""
    if protocol != "grpc":
        raise StreamingNotSupportedError(
            f"streaming needs gRPC; this client speaks {protocol} (Blip2Client(url, protocol='grpc'))"
        )


def stream_timeout_s(options: ClientOptions, timeout_s: float | None) -> float:
    """The limit of a whole stream: ``timeout_s`` when given (checked), else the inference timeout."""
    return options.inference_timeout_s if timeout_s is None else seconds("timeout_s", timeout_s)


def timed_out(timeout_s: float) -> InferenceTimeoutError:
    """The error of a stream that did not end within ``timeout_s``."""
    return InferenceTimeoutError(f"the stream did not end within {timeout_s:g} s")


def stream_error(error: BaseException) -> Blip2ClientError:
    """The SDK error for an error that ended a stream (with a status code, or a message alone)."""
    mapped = map_triton_error(error)
    status = getattr(error, "status", None)
    if not callable(status) or status() is not None:  # not a server's message alone
        return mapped
    lowered = mapped.message.lower()
    for words, kind in _KINDS:
        if any(word.lower() in lowered for word in words):
            return kind(mapped.message)
    return InvalidRequestError(mapped.message)


def read_stream_response(result: Any, error: Any, read: Callable[[Any], str]) -> tuple[str, bool]:
    """``(new text, final)`` of one stream response (text ``""`` when it has none); an error raises."""
    if error is not None:
        raise stream_error(error)
    response = result.get_response()
    final = _FINAL in response.parameters and response.parameters[_FINAL].bool_param
    return (read(result) if response.outputs else ""), bool(final)
