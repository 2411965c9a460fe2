"""Every error the client SDK raises on purpose, under one base class.

:func:`map_triton_error` turns what tritonclient raises (``InferenceServerException`` from the
gRPC and HTTP flavours, and the transport's own connection and timeout errors) into this
hierarchy, keeping the server's one-line message and its status code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
from collections.abc import Iterator

from blip2_triton.runtime.errors import one_line

__all__ = [
    "Blip2ClientError",
    "InferenceTimeoutError",
    "InvalidImageError",
    "InvalidRequestError",
    "RequestCancelledError",
    "ServerError",
    "ServerUnavailableError",
    "StreamingNotSupportedError",
    "map_triton_error",
]


class Blip2ClientError(Exception):
    """Base class of every error the client raises on purpose.

    ``message`` is the server's one-line message (or the client's own), ``status`` the status code
    as the transport reported it (gRPC: ``"INVALID_ARGUMENT"``, HTTP: ``"400"``; None when the
    error arose in the client). ``index`` is the position of the failed item in a batch call.
    """

    def __init__(self, message: object, status: str | None = None, *, index: int | None = None) -> None:
        self.message = one_line(message)
        self.status = status
        self.index = index
        super().__init__(self.message)


class InvalidRequestError(Blip2ClientError):
    """The server rejected the request (Triton INVALID_ARG: a bad image, an out-of-range setting)."""


class ServerUnavailableError(Blip2ClientError):
    """The server cannot be reached or is not ready (UNAVAILABLE, connection refused)."""


class InferenceTimeoutError(Blip2ClientError):
    """No answer within the timeout (DEADLINE_EXCEEDED, a transport timeout)."""


class RequestCancelledError(Blip2ClientError):
    """The request was cancelled (CANCELLED)."""


class ServerError(Blip2ClientError):
    """Any other failure reported by the server (INTERNAL, NOT_FOUND, ...)."""


class InvalidImageError(Blip2ClientError):
    """An image could not be read on the client side (a missing file, an unsupported object)."""


class StreamingNotSupportedError(Blip2ClientError):
    """Streaming was asked of a client that speaks HTTP: streams need gRPC."""


_GRPC_CODES: dict[str, type[Blip2ClientError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "UNAVAILABLE": ServerUnavailableError,
    "DEADLINE_EXCEEDED": InferenceTimeoutError,
    "CANCELLED": RequestCancelledError,
}

# Triton's HTTP endpoint answers INVALID_ARG with 400 and UNAVAILABLE with 503.
_HTTP_CODES: dict[str, type[Blip2ClientError]] = {
    "400": InvalidRequestError,
    "503": ServerUnavailableError,
    "408": InferenceTimeoutError,
    "504": InferenceTimeoutError,
    "499": RequestCancelledError,
}


# What a call into tritonclient may raise besides InferenceServerException.
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, *_TIMEOUT_ERRORS)


def _status_class(status: str | None) -> type[Blip2ClientError]:
    if status is None:
        return ServerError
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    return _GRPC_CODES.get(status, ServerError)


def _normalise_status(status: object) -> str | None:
    if status is None:
        return None
    text = str(status).strip()
    return text.removeprefix("StatusCode.") or None


def map_triton_error(exc: BaseException) -> Blip2ClientError:
    """The :class:`Blip2ClientError` for an exception raised by tritonclient (or its transport).

    ``InferenceServerException`` is mapped by ``.status()`` (gRPC ``StatusCode.*`` names and HTTP
    status numbers alike) and keeps ``.message()``; connection errors become
    :class:`ServerUnavailableError` and timeouts :class:`InferenceTimeoutError`. An exception that
    already is a :class:`Blip2ClientError` is returned as is.
    """
    if isinstance(exc, Blip2ClientError):
        return exc
    if _is_rpc_error(exc):  # raised as is by tritonclient.grpc.aio's stream_infer
        code = exc.code()  # type: ignore[attr-defined]
        status = getattr(code, "name", None) or _normalise_status(code)
        message = one_line(exc.details() or code)  # type: ignore[attr-defined]
        return _status_class(status)(message, status)
    status_method = getattr(exc, "status", None)
    message_method = getattr(exc, "message", None)
    if callable(status_method) and callable(message_method):  # InferenceServerException
        status = _normalise_status(status_method())
        message = message_method()
        message = one_line(message if message is not None else exc) or type(exc).__name__
        if status is not None:
            return _status_class(status)(message, status)
        lowered = message.lower()
        if "timeout" in lowered or "timed out" in lowered or "deadline" in lowered:
            return InferenceTimeoutError(message)
        return ServerError(message)
    detail = one_line(exc)
    if isinstance(exc, _TIMEOUT_ERRORS) or type(exc).__name__ == "Timeout":  # socket, asyncio, gevent
        return InferenceTimeoutError(f"timed out: {detail}" if detail else "timed out")
    message = detail or type(exc).__name__
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return ServerUnavailableError(f"cannot reach the server: {message}")
    if isinstance(exc, (ConnectionError, OSError)):
        return ServerUnavailableError(f"cannot reach the server: {message}")
    return ServerError(f"{type(exc).__name__}: {message}")


def _is_rpc_error(exc: BaseException) -> bool:
    grpc = sys.modules.get("grpc")
    return grpc is not None and isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None))


def _is_transport_error(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSPORT_ERRORS):
        return True
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


@contextlib.contextmanager
def translated_errors(index: int | None = None) -> Iterator[None]:
    """Re-raise tritonclient and transport errors as :class:`Blip2ClientError` (works around awaits)."""
    try:
        yield
    except Blip2ClientError as exc:
        if index is not None and exc.index is None:
            exc.index = index
        raise
    except Exception as exc:
        from tritonclient.utils import InferenceServerException

        if isinstance(exc, InferenceServerException) or _is_rpc_error(exc) or _is_transport_error(exc):
            mapped = map_triton_error(exc)
            mapped.index = index
            raise mapped from exc
        raise
