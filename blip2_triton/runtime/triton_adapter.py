"""The only runtime module that speaks Triton's Python backend: responses and errors.

Imported by the repository's ``model.py`` files only; everything else in this package imports
without Triton.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from . import contract as C
from .errors import (
    EngineOverloadedError,
    RequestCancelledError,
    RequestValidationError,
    error_from_step_message,
)


class ModelLogger:
    """``pb_utils.Logger`` with the model's name as prefix."""

    def __init__(self, model_name: str) -> None:
        self.prefix = f"[{model_name}] "

    def info(self, message: str) -> None:
        pb_utils.Logger.log_info(self.prefix + message)

    def error(self, message: str) -> None:
        pb_utils.Logger.log_error(self.prefix + message)


# A relayed request's error crosses a BLS call, which in Python backend 2.51 turns every error code
# into INTERNAL but keeps the message: the engine model puts the code in front of the message
# ("[INVALID_ARG] ...") and the relay reads it back.
_TAG = re.compile(r"^\[(INVALID_ARG|UNAVAILABLE|CANCELLED)\] ")
_TAGGED_ERRORS = {
    "INVALID_ARG": RequestValidationError,
    "UNAVAILABLE": EngineOverloadedError,
    "CANCELLED": RequestCancelledError,
}


def triton_error(exc: BaseException, logger: ModelLogger, *, tagged: bool = False):
    """The one-line ``TritonError`` for an exception: bad input INVALID_ARG, a full engine
    UNAVAILABLE, a cancellation CANCELLED, anything else INTERNAL (with the traceback logged).
    ``tagged``: the code also leads the message, for a relay to read back."""
    codes = (
        (RequestValidationError, "INVALID_ARG"),
        (EngineOverloadedError, "UNAVAILABLE"),
        (RequestCancelledError, "CANCELLED"),
    )
    for kind, code in codes:
        if isinstance(exc, kind):
            message = " ".join(str(exc).split())
            return pb_utils.TritonError(
                f"[{code}] {message}" if tagged else message, getattr(pb_utils.TritonError, code)
            )
    logger.error("".join(traceback.format_exception(exc)))
    message = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())
    return pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)


def error_response(exc: BaseException, logger: ModelLogger, *, tagged: bool = False):
    """A response carrying the one-line error for ``exc`` (see ``triton_error``)."""
    return pb_utils.InferenceResponse(error=triton_error(exc, logger, tagged=tagged))


def input_array(request, name: str) -> np.ndarray | None:
    """The named input of a request as a numpy array, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_rows(request, name: str) -> list[np.ndarray]:
    """The rows of a required input (one item per row of the request's batch)."""
    array = input_array(request, name)
    if array is None:
        raise RequestValidationError(f"input '{name}' is required")
    return list(array)


def output_response(outputs: dict[str, np.ndarray]):
    """A response with the given output tensors."""
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in outputs.items()])


def respond_each(requests: Sequence[Any], handle: Callable[[Any], Any], logger: ModelLogger) -> list:
    """Answer every request with ``handle(request)`` or its own error; never drop one."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as exc:
            responses.append(error_response(exc, logger))
    return responses


def model_parameter(model_config: dict, key: str, default: str | None = None) -> str:
    """A ``parameters`` entry of the model config; a missing one without default fails the load."""
    entry = model_config.get("parameters", {}).get(key)
    if entry is None:
        if default is None:
            raise pb_utils.TritonModelException(f"model config lacks parameter '{key}'")
        return default
    return entry["string_value"]


def respond_batched(
    requests: Sequence[Any],
    parse: Callable[[Any], list],
    run: Callable[[list], dict[str, np.ndarray]],
    logger: ModelLogger,
) -> list:
    """Parse each request on its own, run the good ones as one batch, answer every request.

    ``parse(request)`` returns the request's items (one per row of its batch) or raises (that request
    alone gets the error); ``run(items)`` returns output arrays with one row per item, split back
    to the requests in order. A failure of ``run`` is every batched request's error.
    """
    responses: list = [None] * len(requests)
    items: list = []
    owners: list[tuple[int, int, int]] = []
    for index, request in enumerate(requests):
        try:
            parsed = parse(request)
        except Exception as exc:
            responses[index] = error_response(exc, logger)
            continue
        owners.append((index, len(items), len(parsed)))
        items.extend(parsed)
    if owners:
        try:
            outputs = run(items)
        except Exception as exc:
            for index, _, _ in owners:
                responses[index] = error_response(exc, logger)
        else:
            for index, start, count in owners:
                responses[index] = output_response({k: v[start : start + count] for k, v in outputs.items()})
    return responses


class StepFailedError(Exception):
    """A model called through BLS answered with an error other than INVALID_ARG (answered INTERNAL)."""


def _step_error(model_name: str, error) -> Exception:
    """The exception for a called model's error: ours by message, else ``StepFailedError``."""
    code = error.code() if hasattr(error, "code") else None
    if code == pb_utils.TritonError.INVALID_ARG:
        return RequestValidationError(error.message())
    tag = _TAG.match(error.message())
    if tag:
        return _TAGGED_ERRORS[tag.group(1)](error.message()[tag.end() :])
    return error_from_step_message(error.message()) or StepFailedError(f"{model_name}: {error.message()}")


async def call_model(model_name: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict:
    """Run another model of the repository through BLS; outputs by name.

    Python backend 2.51 reports every error of a called model as INTERNAL (the callee's INVALID_ARG
    is lost), so a caller should check its inputs itself before calling.
    """
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=list(outputs),
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
    )
    response = await request.async_exec()
    if response.has_error():
        raise _step_error(model_name, response.error())
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class BlsFrontSteps:
    """``front.FrontSteps`` over Triton BLS: ``blip2_vision``."""

    async def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        outputs = await call_model(C.VISION_MODEL, {C.PIXEL_VALUES: pixel_values}, [C.QUERY_EMBEDS])
        return outputs[C.QUERY_EMBEDS]


class DecoupledCall:
    """One BLS request to a decoupled model, read to its final response on a thread of its own.

    Python backend 2.51 must never lose a decoupled BLS response iterator before the callee sent its
    final response (the callee's later responses then reach freed state in tritonserver). So the
    request is sent and its iterator read to the end by a daemon thread, whatever the caller does
    meanwhile: a caller that stops waiting (its client left) simply stops looking at ``future``.
    """

    def __init__(
        self, model_name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], request_id: str
    ):
        from concurrent.futures import Future

        self.future: Future = Future()
        self._request = pb_utils.InferenceRequest(
            model_name=model_name,
            requested_output_names=list(outputs),
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
            request_id=request_id,
        )
        self._model_name = model_name
        self._outputs = list(outputs)
        thread = threading.Thread(target=self._read, name="blip2-bls-call", daemon=True)
        thread.start()

    def _read(self) -> None:
        results: list[dict[str, np.ndarray]] = []
        error: BaseException | None = None
        try:
            for response in self._request.exec(decoupled=True):
                if response.has_error():
                    error = error or _step_error(self._model_name, response.error())
                    continue
                found = {name: pb_utils.get_output_tensor_by_name(response, name) for name in self._outputs}
                if any(tensor is not None for tensor in found.values()):
                    results.append({n: t.as_numpy() for n, t in found.items() if t is not None})
        except Exception as exc:  # the call itself failed (model gone, server stopping)
            error = error or StepFailedError(f"{self._model_name}: {' '.join(str(exc).split())}")
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(results)


class Relay:
    """The unary front ``blip2``: hands a request to the engine model and waits for the answer.

    The request goes over as it came, with ``stream`` false (one response with every row's text).
    When its client cancels (gRPC cancel, passed deadline) the relay sends the engine model a
    cancel for the same request id, answers CANCELLED at once and leaves the calls to finish on
    their own threads (the engine answers the cancelled request within one decode step).
    """

    POLL_S = 0.02
    # How often the engine model's readiness is asked while waiting: a stub that dies never answers
    # its requests, and serve's watchdog unloads its model at once, which a waiting relay sees here.
    READY_POLL_S = 0.5

    async def run(self, inputs: Mapping[str, np.ndarray], is_cancelled: Callable[[], bool]) -> np.ndarray:
        request_id = C.RELAY_ID_PREFIX + uuid.uuid4().hex
        rows = len(next(iter(inputs.values())))
        feeds = {**inputs, C.STREAM: np.zeros((rows, 1), dtype=np.bool_)}
        call = DecoupledCall(C.ENGINE_MODEL, feeds, [C.TEXT_OUTPUT.name], request_id)
        answer = asyncio.wrap_future(call.future)
        ready_checked = time.monotonic()
        while True:
            done, _ = await asyncio.wait([answer], timeout=self.POLL_S)
            if done:
                break
            if time.monotonic() - ready_checked >= self.READY_POLL_S:
                ready_checked = time.monotonic()
                if not await asyncio.to_thread(_engine_ready):
                    answer.add_done_callback(_retrieve)
                    raise EngineOverloadedError(
                        f"{C.ENGINE_MODEL} is not ready (it is restarting); try again"
                    )
            if is_cancelled():
                answer.add_done_callback(_retrieve)
                control = {
                    C.IMAGE.name: np.array([[b""]], dtype=np.object_),
                    C.CANCEL: np.array([[True]], dtype=np.bool_),
                }
                DecoupledCall(
                    C.ENGINE_MODEL, control, [C.TEXT_OUTPUT.name], request_id
                ).future.add_done_callback(_retrieve)
                raise RequestCancelledError()
        results = answer.result()
        if not results:
            raise StepFailedError(f"{C.ENGINE_MODEL}: no text in its answer")
        return results[-1][C.TEXT_OUTPUT.name]


def _engine_ready() -> bool:
    """Whether Triton has the engine model loaded and ready (an error counts as not ready)."""
    try:
        return bool(pb_utils.is_model_ready(model_name=C.ENGINE_MODEL, model_version=""))
    except Exception:
        return False


def _retrieve(future) -> None:
    """Mark a future's outcome as seen (nobody waits for it any more)."""
    if not future.cancelled():
        future.exception()


class BackgroundLoop:
    """An asyncio loop on its own thread: ``execute()`` hands requests to it and returns at once.

    A Python model whose ``execute`` awaits its requests (even ``async def execute``) gets no new
    batch until they are all answered: one long generation would hold every later request. Answered
    from this loop instead (a non-decoupled model may answer after ``execute`` returns), requests
    overlap freely.
    """

    # Each request in flight holds one worker thread while it waits for its next BLS response
    # (python backend 2.51 hands back a blocking iterator): asyncio's default pool (cores + 4
    # threads) would cap the requests in flight at a handful and starve preprocessing.
    WAIT_THREADS = 256

    def __init__(self, logger: ModelLogger) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.logger = logger
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            ThreadPoolExecutor(self.WAIT_THREADS, thread_name_prefix="blip2-front")
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="blip2-front-loop", daemon=True)
        self.thread.start()

    def submit(self, coroutine) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(self._report)

    def _report(self, future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.logger.error("".join(traceback.format_exception(future.exception())))

    def close(self, timeout_s: float = 5.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout_s)


FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def text_array(texts: Sequence[str]) -> np.ndarray:
    """``[N, 1]`` TYPE_STRING tensor of UTF-8 texts."""
    return np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
