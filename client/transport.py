"""The one layer below both clients that talks to tritonclient: connect, send, wait, translate errors.

A :class:`Call` is one inference request, built for the client's protocol, with the function that
reads its answer. :class:`Transport` sends calls with the blocking tritonclient (gRPC, or HTTP
with gevent), :class:`AsyncTransport` with its asyncio twin. The clients, their fan-out, the chat
sessions and the image index all send through these two; whatever goes wrong comes out as a
:class:`~blip2_triton.client.errors.Blip2ClientError`.

Unary calls (``infer``, and ``submit``'s answers) are retried when the server refused them for now
(UNAVAILABLE, or a model being unloaded), with jittered backoff within the options' ``retry``
policy (:mod:`~blip2_triton.client.retry`); streams never are.

``stream`` sends one call to a decoupled model (``blip2_stream``) over a gRPC stream and yields its
pieces of text as they come; reading the responses is :mod:`~blip2_triton.client.streaming`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import queue
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import Blip2ClientError, ServerError, ServerUnavailableError, translated_errors
from .options import ClientOptions
from .retry import is_retryable
from .streaming import (
    check_stream_protocol,
    read_stream_response,
    stream_error,
    stream_timeout_s,
    timed_out,
)

__all__ = ["AsyncTransport", "Call", "Pending", "Transport"]

T = TypeVar("T")

_READY_POLL_S = 0.25
_STREAM_FAILURE_WAIT_S = 1.0  # how long a stream that failed at once may take to say why


@dataclass(frozen=True)
class Call(Generic[T]):
    """One inference request: tritonclient inputs and requested outputs, and how to read the answer."""

    model: str
    inputs: list[Any]
    outputs: list[Any]
    read: Callable[[Any], T]


class _TransportBase:
    """What both transports share: the options, the closed state, per-protocol call arguments."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self._closed = False

    @property
    def protocol(self) -> str:
        return self.options.protocol

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Blip2ClientError when the transport (its client) is closed."""
        if self._closed:
            raise Blip2ClientError("the client is closed")

    def _connect(self, *, asynchronous: bool) -> Any:
        """A tritonclient client of the protocol: blocking, or asyncio (made inside the running loop)."""
        options = self.options
        flavour = ".aio" if asynchronous else ""
        tls = options.network.connect_kwargs(options.protocol, asynchronous=asynchronous)
        with translated_errors():
            module = importlib.import_module(f"tritonclient.{options.protocol}{flavour}")
            if options.protocol == "grpc":
                return module.InferenceServerClient(options.url, **tls)
            if asynchronous:
                return module.InferenceServerClient(
                    options.url,
                    conn_limit=options.max_concurrency,
                    conn_timeout=options.inference_timeout_s,
                    **tls,
                )
            return module.InferenceServerClient(
                options.url,
                concurrency=options.max_concurrency,
                connection_timeout=options.init_timeout_s,
                network_timeout=options.inference_timeout_s,
                **tls,
            )

    def _per_call(self, seconds: float) -> dict[str, Any]:
        """Every call's arguments: the deadline (gRPC takes one, HTTP has it on the connection) and
        the options' headers (gRPC: metadata)."""
        deadline = {"client_timeout": seconds} if self.protocol == "grpc" else {}
        return {**deadline, **self.options.network.call_headers(self.protocol)}

    def _not_ready(self, timeout_s: float) -> ServerUnavailableError:
        options = self.options
        return ServerUnavailableError(
            f"model '{options.model_name}' at {options.url} ({options.protocol}) not ready after {timeout_s:g} s"
        )

    def _stream_timeout_s(self, timeout_s: float | None) -> float:
        """Checks before a stream is opened: open, gRPC, a valid limit (default: the inference timeout)."""
        self.check_open()
        check_stream_protocol(self.protocol)
        return stream_timeout_s(self.options, timeout_s)

    def _model_config_options(self) -> dict[str, Any]:
        """gRPC answers a protobuf unless asked for JSON; HTTP answers JSON. Both with the headers."""
        per_call = self._per_call(self.options.init_timeout_s)
        return {"as_json": True, **per_call} if self.protocol == "grpc" else per_call


class Pending(Generic[T]):
    """A call sent by :meth:`Transport.submit`: :meth:`result` waits for its answer."""

    def __init__(self, call: Call[T], index: int | None) -> None:
        self._call = call
        self._index = index
        self._sent = time.monotonic()
        self.resend: Callable[[Blip2ClientError, float], T] | None = None

    def result(self) -> T:
        """The read answer, or the call's error as a Blip2ClientError with ``.index`` set.

        A refusal for now is retried (blocking) when the transport set ``resend``.
        """
        try:
            with translated_errors(self._index):
                return self._call.read(self._wait())
        except Blip2ClientError as error:
            if self.resend is None or not is_retryable(error):
                raise
            return self.resend(error, self._sent)

    def _wait(self) -> Any:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop waiting for the answer (best effort; never raises)."""


class _GrpcPending(Pending[T]):
    """Sent with gRPC ``async_infer``: the answer arrives through a callback."""

    def __init__(self, connection: Any, call: Call[T], index: int | None, timeout: dict) -> None:
        super().__init__(call, index)
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._context = connection.async_infer(
            call.model, call.inputs, self._on_done, outputs=call.outputs, **timeout
        )

    def _on_done(self, result: Any, error: Any) -> None:
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)

    def _wait(self) -> Any:
        return self._future.result()

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._context.cancel()


class _HttpPending(Pending[T]):
    """Sent from a gevent greenlet of the HTTP client (its ``async_infer`` sleeps 10 ms a call)."""

    def __init__(self, connection: Any, call: Call[T], index: int | None, per_call: dict) -> None:
        import gevent

        super().__init__(call, index)
        self._greenlet = gevent.spawn(_http_infer, connection, call, per_call)

    def _wait(self) -> Any:
        result, error = self._greenlet.get()
        if error is not None:
            raise error
        return result

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._greenlet.kill(block=False)


def _http_infer(connection: Any, call: Call, per_call: dict) -> tuple[Any, BaseException | None]:
    # Errors are returned, not raised: gevent prints a traceback for a greenlet that raises.
    try:
        return connection.infer(call.model, call.inputs, outputs=call.outputs, **per_call), None
    except Exception as exc:
        return None, exc


class Transport(_TransportBase):
    """Blocking calls over ``tritonclient.grpc`` or ``tritonclient.http``; connects at once.

    Over gRPC one transport may be shared between threads; over HTTP (gevent) it belongs to one thread.
    """

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._connection = self._connect(asynchronous=False)

    def infer(self, call: Call[T], index: int | None = None) -> T:
        """Send ``call`` and wait for its read answer (retried per the options); errors carry ``index``."""
        self.check_open()
        return self._infer_retrying(call, index, None, time.monotonic())

    def _infer_retrying(
        self, call: Call[T], index: int | None, error: Blip2ClientError | None, started: float
    ) -> T:
        """Try ``call`` until it is answered or the retry policy gives up (``error``: a first failure)."""
        tries = 0 if error is None else 1
        while True:
            if error is not None:
                wait = self.options.retry.next_wait(error, tries, started)
                if wait is None:
                    raise error
                time.sleep(wait)
                self.check_open()
            tries += 1
            try:
                with translated_errors(index):
                    return call.read(self._send(call))
            except Blip2ClientError as failure:
                error = failure

    def _send(self, call: Call) -> Any:
        timeout = self._per_call(self.options.inference_timeout_s)
        return self._connection.infer(call.model, call.inputs, outputs=call.outputs, **timeout)

    def submit(self, call: Call[T], index: int | None = None) -> Pending[T]:
        """Send ``call`` without waiting: :meth:`Pending.result` waits (the fan-out keeps a window)."""
        self.check_open()
        with translated_errors(index):
            per_call = self._per_call(self.options.inference_timeout_s)
            if self.protocol == "grpc":
                pending: Pending[T] = _GrpcPending(self._connection, call, index, per_call)
            else:
                pending = _HttpPending(self._connection, call, index, per_call)
        if self.options.retry.attempts > 1:
            pending.resend = lambda error, started: self._infer_retrying(call, index, error, started)
        return pending

    def stream(self, call: Call[str], timeout_s: float | None = None) -> Generator[str, None, None]:
        """The pieces of text ``call`` (to a decoupled model) gets, as they come (gRPC only).

        Nothing is sent before the first piece is asked for. Leaving early (``break``, ``close()``,
        the iterator collected, an error) cancels the request on the server. ``timeout_s``
        (default: the inference timeout) bounds the whole stream. Never retried.
        """
        return self._stream(call, self._stream_timeout_s(timeout_s))

    def _stream(self, call: Call[str], timeout_s: float) -> Generator[str, None, None]:
        connection = self._connect(asynchronous=False)  # a tritonclient client holds one stream at a time
        answers: queue.SimpleQueue = queue.SimpleQueue()
        finished = False
        try:
            self._send_on_stream(connection, call, answers, self.options.network.call_headers(self.protocol))
            deadline = time.monotonic() + timeout_s
            while not finished:
                try:
                    result, error = answers.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    raise timed_out(timeout_s) from None
                piece, finished = read_stream_response(result, error, call.read)
                if piece:
                    yield piece
        finally:
            with contextlib.suppress(Exception):
                connection.stop_stream(cancel_requests=not finished)
            with contextlib.suppress(Exception):
                connection.close()

    @staticmethod
    def _send_on_stream(
        connection: Any, call: Call[str], answers: queue.SimpleQueue, headers: dict[str, Any]
    ) -> None:
        """Open the stream (``headers``: ``{"headers": ...}`` or nothing) and send ``call``; a stream
        that failed at once raises why (its callback says)."""
        with translated_errors():
            connection.start_stream(callback=lambda result, error: answers.put((result, error)), **headers)
        try:
            with translated_errors():
                connection.async_stream_infer(
                    call.model, call.inputs, outputs=call.outputs, enable_empty_final_response=True
                )
        except Blip2ClientError as refused:  # "no longer in valid state": the callback has the cause
            with contextlib.suppress(queue.Empty):
                _, error = answers.get(timeout=_STREAM_FAILURE_WAIT_S)
                if error is not None:
                    raise stream_error(error) from refused
            raise

    def model_config(self, model: str) -> Mapping[str, Any]:
        """The config of ``model`` as JSON (gRPC: ``{"config": {...}}``, HTTP: the config)."""
        self.check_open()
        with translated_errors():
            return self._connection.get_model_config(model, **self._model_config_options())

    def is_ready(self) -> bool:
        """True when the server is up and the client's model is ready; False when not (never raises)."""
        if self._closed:
            return False
        timeout = self._per_call(self.options.init_timeout_s)
        try:
            with translated_errors():
                return bool(
                    self._connection.is_server_ready(**timeout)
                    and self._connection.is_model_ready(self.options.model_name, **timeout)
                )
        except Blip2ClientError:
            return False

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Poll :meth:`is_ready`; ServerUnavailableError after ``timeout_s`` (default ``init_timeout_s``)."""
        self.check_open()
        timeout_s = self.options.init_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() >= deadline:
                raise self._not_ready(timeout_s)
            time.sleep(_READY_POLL_S)

    def close(self) -> None:
        """Close the connection; later calls raise Blip2ClientError. Safe to call twice."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._connection.close()


class AsyncTransport(_TransportBase):
    """Calls over ``tritonclient.grpc.aio`` or ``tritonclient.http.aio``.

    The connection is made on first use, inside the running event loop: one transport per loop.
    """

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._connection: Any = None

    def _connected(self) -> Any:
        """The tritonclient asyncio client, made now if it is not yet; Blip2ClientError when closed."""
        self.check_open()
        if self._connection is None:
            self._connection = self._connect(asynchronous=True)
        return self._connection

    async def infer(self, call: Call[T], index: int | None = None) -> T:
        """Send ``call`` and await its read answer (retried per the options); errors carry ``index``."""
        started = time.monotonic()
        tries = 0
        while True:
            connection = self._connected()
            tries += 1
            try:
                with translated_errors(index):
                    return call.read(await self._send(connection, call))
            except Blip2ClientError as error:
                wait = self.options.retry.next_wait(error, tries, started)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    async def _send(self, connection: Any, call: Call) -> Any:
        timeout_s = self.options.inference_timeout_s
        sent = connection.infer(call.model, call.inputs, outputs=call.outputs, **self._per_call(timeout_s))
        return await asyncio.wait_for(sent, timeout_s + 1.0)  # HTTP calls take no deadline of their own

    def stream(self, call: Call[str], timeout_s: float | None = None) -> AsyncGenerator[str, None]:
        """As :meth:`Transport.stream`, an async iterator: ``async for piece in transport.stream(call)``.

        Leaving early (``break``, ``aclose()``, a cancelled task, an error) cancels the stream's
        call, and with it the request on the server.
        """
        return self._stream(call, self._stream_timeout_s(timeout_s))

    async def _stream(self, call: Call[str], timeout_s: float) -> AsyncGenerator[str, None]:
        request = {
            "model_name": call.model,
            "inputs": call.inputs,
            "outputs": call.outputs,
            # tritonclient.grpc.aio 2.51 drops "enable_empty_final_response": ask Triton directly
            "parameters": {"triton_enable_empty_final_response": True},
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        connection = self._connected()
        with translated_errors():  # the call's gRPC deadline bounds the whole stream
            responses = connection.stream_infer(
                requests(), stream_timeout=timeout_s, **self.options.network.call_headers(self.protocol)
            )
        finished = False
        try:
            while not finished:
                with translated_errors():
                    try:
                        result, error = await responses.__anext__()
                    except StopAsyncIteration:
                        raise ServerError("the stream ended without its final response") from None
                piece, finished = read_stream_response(result, error, call.read)
                if piece:
                    yield piece
        finally:
            if not finished:
                with contextlib.suppress(Exception):
                    responses.cancel()

    async def model_config(self, model: str) -> Mapping[str, Any]:
        """The config of ``model`` as JSON (gRPC: ``{"config": {...}}``, HTTP: the config)."""
        connection = self._connected()
        with translated_errors():
            answer = connection.get_model_config(model, **self._model_config_options())
            return await asyncio.wait_for(answer, self.options.init_timeout_s)

    async def is_ready(self) -> bool:
        """True when the server is up and the client's model is ready; False when not (never raises)."""
        if self._closed:
            return False
        timeout_s = self.options.init_timeout_s
        timeout = self._per_call(timeout_s)
        try:
            connection = self._connected()
            with translated_errors():
                if not await asyncio.wait_for(connection.is_server_ready(**timeout), timeout_s):
                    return False
                model_ready = connection.is_model_ready(self.options.model_name, **timeout)
                return bool(await asyncio.wait_for(model_ready, timeout_s))
        except Blip2ClientError:
            return False

    async def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Poll :meth:`is_ready`; ServerUnavailableError after ``timeout_s`` (default ``init_timeout_s``)."""
        self._connected()
        timeout_s = self.options.init_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready():
            if time.monotonic() >= deadline:
                raise self._not_ready(timeout_s)
            await asyncio.sleep(_READY_POLL_S)

    async def close(self) -> None:
        """Close the connection; later calls raise Blip2ClientError. Safe to call twice."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
