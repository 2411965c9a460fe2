"""The unary public model ``blip2``: a relay to the engine model ``blip2_stream``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import ClientGoneError, EngineOverloadedError
from .bls import DecoupledCall, StepFailedError


class Relay:
    """The unary front ``blip2``: hands a request to the engine model and waits for the answer.

    The request goes over as it came, with ``stream`` false (one response with every row's text).
    When its client cancels (gRPC cancel, passed deadline) the relay sends the engine model a
    cancel for the same request id, answers CANCELLED at once and leaves the calls to finish on
    their own threads (the engine answers the cancelled request within one decode step).

    Waiting costs the server little however many requests wait: each ``is_cancelled`` is a round
    trip to tritonserver, so the requests waiting together share ``MAX_POLLS_PER_S`` (each asks
    every ``POLL_S`` while few wait, less often as more do: 64 waiting ask every 128 ms), and one
    readiness check of the engine model every ``READY_POLL_S`` serves them all.
    """

    POLL_S = 0.02
    MAX_POLLS_PER_S = 500.0
    # How often the engine model's readiness is asked while requests wait: a stub that dies never
    # answers its requests, and serve's watchdog unloads its model at once, which the relay sees here.
    READY_POLL_S = 0.5

    def __init__(self) -> None:
        self.waiting = 0  # requests in ``run`` now (one event loop: no lock needed)
        self._ready_at = 0.0
        self._ready: asyncio.Future | None = None

    def poll_interval_s(self) -> float:
        """How long a waiting request sleeps between two looks at its client."""
        return max(self.POLL_S, self.waiting / self.MAX_POLLS_PER_S)

    async def run(self, inputs: Mapping[str, np.ndarray], is_cancelled: Callable[[], bool]) -> np.ndarray:
        request_id = C.RELAY_ID_PREFIX + uuid.uuid4().hex
        rows = len(next(iter(inputs.values())))
        feeds = {**inputs, C.STREAM: np.zeros((rows, 1), dtype=np.bool_)}
        call = DecoupledCall(C.ENGINE_MODEL, feeds, [C.TEXT_OUTPUT.name], request_id)
        answer = asyncio.wrap_future(call.future)
        self.waiting += 1
        try:
            while True:
                done, _ = await asyncio.wait([answer], timeout=self.poll_interval_s())
                if done:
                    break
                if not await self._engine_ready():
                    answer.add_done_callback(_retrieve)
                    raise EngineOverloadedError(
                        f"{C.ENGINE_MODEL} is not ready (it is restarting); try again"
                    )
                if is_cancelled():
                    answer.add_done_callback(_retrieve)
                    _send_cancel(request_id)
                    raise ClientGoneError()
        finally:
            self.waiting -= 1
        results = answer.result()
        if not results:
            raise StepFailedError(f"{C.ENGINE_MODEL}: no text in its answer")
        return results[-1][C.TEXT_OUTPUT.name]

    async def _engine_ready(self) -> bool:
        """The engine model's readiness, asked at most every ``READY_POLL_S`` for all waiters."""
        if self._ready is None or (
            self._ready.done() and time.monotonic() - self._ready_at >= self.READY_POLL_S
        ):
            self._ready_at = time.monotonic()
            self._ready = asyncio.ensure_future(asyncio.to_thread(_engine_ready))
        return await asyncio.shield(self._ready)


def _send_cancel(request_id: str) -> None:
    """Cancel the relayed request ``request_id`` in the engine model (its answer is not awaited)."""
    control = {
        C.IMAGE.name: np.array([[b""]], dtype=np.object_),
        C.CANCEL: np.array([[True]], dtype=np.bool_),
    }
    DecoupledCall(C.ENGINE_MODEL, control, [C.TEXT_OUTPUT.name], request_id).future.add_done_callback(
        _retrieve
    )


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
