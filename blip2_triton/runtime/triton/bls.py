"""Calls from one Triton Python model to another (BLS): unary steps and decoupled calls.

Python backend 2.51 reports every error of a called model as INTERNAL (the callee's INVALID_ARG is
lost) but keeps its message; ``step_error`` turns the message back into our error where it can.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import contract as C
from ..errors import RequestValidationError, error_from_step_message, from_tagged, one_line


class StepFailedError(Exception):
    """A model called through BLS answered with an error other than INVALID_ARG (answered INTERNAL)."""


def step_error(model_name: str, error) -> Exception:
    """The exception for a called model's error: ours by message, else ``StepFailedError``."""
    code = error.code() if hasattr(error, "code") else None
    if code == pb_utils.TritonError.INVALID_ARG:
        return RequestValidationError(error.message())
    return (
        from_tagged(error.message())
        or error_from_step_message(error.message())
        or StepFailedError(f"{model_name}: {error.message()}")
    )


def _request(model_name: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str], request_id: str = ""):
    """A BLS request to ``model_name`` with ``inputs`` by name, asking for ``outputs``."""
    return pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=list(outputs),
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        request_id=request_id,
    )


async def call_model(model_name: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict:
    """Run another model of the repository through BLS; outputs by name.

    Python backend 2.51 reports every error of a called model as INTERNAL (the callee's INVALID_ARG
    is lost), so a caller should check its inputs itself before calling.
    """
    response = await _request(model_name, inputs, outputs).async_exec()
    if response.has_error():
        raise step_error(model_name, response.error())
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


class BlsVision:
    """``llm.front.FrontSteps`` over Triton BLS: ``blip2_vision``."""

    async def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        outputs = await call_model(C.VISION_MODEL, {C.PIXEL_VALUES: pixel_values}, [C.QUERY_EMBEDS])
        return outputs[C.QUERY_EMBEDS]


class BlsSteps:
    """``retrieval.itm_front.ItmSteps`` over Triton BLS."""

    async def call(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        return await call_model(model, dict(inputs), outputs)


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
        self._request = _request(model_name, inputs, outputs, request_id)
        self._model_name = model_name
        self._outputs = list(outputs)
        thread = threading.Thread(target=self._read, name="blip2-bls-call", daemon=True)
        thread.start()

    def _read(self) -> None:
        results: list[dict[str, np.ndarray]] = []
        error: BaseException | None = None
        try:
            responses = self._request.exec(decoupled=True)
            for response in responses:
                if response.has_error():
                    error = error or step_error(self._model_name, response.error())
                    continue
                found = {name: pb_utils.get_output_tensor_by_name(response, name) for name in self._outputs}
                if any(tensor is not None for tensor in found.values()):
                    results.append({n: t.as_numpy().copy() for n, t in found.items() if t is not None})
            _FINISHED.keep(responses)
        except Exception as exc:  # the call itself failed (model gone, server stopping)
            error = error or StepFailedError(f"{self._model_name}: {one_line(exc)}")
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(results)


class _FinishedIterators:
    """Finished decoupled BLS response iterators, kept referenced ``HOLD_S`` seconds, then released.

    Python backend 2.51 (before r24.12) frees an iterator that Python no longer holds on the stub's
    message thread, without the GIL, which corrupts the stub's heap (``docs/repro/bls_cancel``, T2:
    19 of 20 runs broken, none in 28 with finished iterators held 5 s). Held here, an iterator is
    released later by this thread, with the GIL, after the stub is done with it.
    """

    HOLD_S = 5.0

    def __init__(self) -> None:
        self._held: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, iterator) -> None:
        with self._lock:
            self._held.append((time.monotonic() + self.HOLD_S, iterator))
            if self._thread is None:
                self._thread = threading.Thread(target=self._release, name="blip2-bls-release", daemon=True)
                self._thread.start()

    def _release(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:
                while self._held and self._held[0][0] <= now:
                    self._held.popleft()


_FINISHED = _FinishedIterators()
