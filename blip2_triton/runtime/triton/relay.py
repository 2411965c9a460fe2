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
                raise ClientGoneError()
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
