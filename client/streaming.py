"""Text as it is generated: the ``blip2_stream`` model over a gRPC stream, blocking and asyncio.

Each stream gets its own gRPC connection (tritonclient allows one stream per client). The server
sends one response per new piece of text, then an empty response flagged final. Leaving the
iteration early (``break``, ``close()``, an exception, a cancelled task) cancels the request on the
server, which stops generating within one decode step. The client's inference timeout bounds the
whole stream.

An error on a gRPC stream carries the server's one-line message but no status code: the kind is
read from the message (our server's refusals for overload, cancellation and internal errors have
fixed prefixes; anything else is a bad request).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .errors import (
    Blip2ClientError,
    InferenceTimeoutError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    ServerUnavailableError,
    map_triton_error,
)
from .options import ClientOptions
from .transport import Call

_KINDS_BY_PREFIX: tuple[tuple[str, type[Blip2ClientError]], ...] = (
    ("server overloaded:", ServerUnavailableError),
    ("request cancelled:", RequestCancelledError),
    ("internal error:", ServerError),
)


def stream_error(error: BaseException) -> Blip2ClientError:
    """The SDK error for an error that arrived on a stream (a message without a status code)."""
    mapped = map_triton_error(error)
    if mapped.status is not None or not isinstance(mapped, ServerError):
        return mapped
    message = str(mapped)
    for prefix, kind in _KINDS_BY_PREFIX:
        if message.startswith(prefix):
            return kind(message)
    if "timeout" in message.lower() or "deadline" in message.lower():
        return InferenceTimeoutError(message)
    return InvalidRequestError(message)


def _check_grpc(options: ClientOptions) -> None:
    if options.protocol != "grpc":
        raise Blip2ClientError("streaming needs the gRPC protocol (Blip2Client(url, protocol='grpc'))")


def _final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def _piece(result: Any, call: Call[str]) -> str | None:
    return call.read(result) if result.get_response().outputs else None


def stream_blocking(options: ClientOptions, call: Call[str]) -> Iterator[str]:
    """The pieces of text of ``call`` (on the streaming model), as they come."""
    import tritonclient.grpc as grpcclient

    _check_grpc(options)
    client = grpcclient.InferenceServerClient(options.url)
    answers: queue.Queue = queue.Queue()
    finished = False
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer(
            call.model, call.inputs, outputs=call.outputs, enable_empty_final_response=True
        )
        deadline = time.monotonic() + options.inference_timeout_s
        while not finished:
            try:
                result, error = answers.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise InferenceTimeoutError(
                    f"no end of the stream after {options.inference_timeout_s:g} s"
                ) from None
            if error is not None:
                finished = True
                raise stream_error(error)
            finished = _final(result)
            piece = _piece(result, call)
            if piece:
                yield piece
    except Exception as exc:
        if isinstance(exc, Blip2ClientError):
            raise
        raise map_triton_error(exc) from None
    finally:
        with contextlib.suppress(Exception):
            client.stop_stream(cancel_requests=not finished)
        with contextlib.suppress(Exception):
            client.close()


async def stream_async(options: ClientOptions, call: Call[str]) -> AsyncIterator[str]:
    """As :func:`stream_blocking`, with ``tritonclient.grpc.aio``."""
    import tritonclient.grpc.aio as aio

    _check_grpc(options)
    client = aio.InferenceServerClient(options.url)

    async def requests():
        yield {
            "model_name": call.model,
            "inputs": call.inputs,
            "outputs": call.outputs,
            "enable_empty_final_response": True,
        }

    try:
        # the stream's gRPC deadline bounds the whole stream
        responses = client.stream_infer(requests(), stream_timeout=options.inference_timeout_s)
        async for result, error in responses:
            if error is not None:
                raise stream_error(error)
            piece = _piece(result, call)
            if piece:
                yield piece
            if _final(result):
                return
    except Exception as exc:
        if isinstance(exc, Blip2ClientError):
            raise
        raise map_triton_error(exc) from None
    finally:
        with contextlib.suppress(Exception):  # closing the channel cancels a stream left early
            await client.close()
