"""Liveness that tells the truth: a tiny real inference through a public model, on a timer.

Triton's own health (``/v2/health/live`` and ``ready``, model readiness) stays true while a wedged
tritonserver answers no inference at all (the issue saw 4 of 5 hangs so). So serve sends, every
``interval_s``, the smallest valid request to one public model of the repository (``blip2`` with
``max_tokens=1`` in a generation repository; ``blip2_itm``, ``blip2_image_embed`` or
``blip2_text_embed`` in a retrieval one; the inputs come from the model's own config) and judges:

- answered, or refused as invalid (the server validated it): alive;
- any other error or no answer within ``timeout_s``: alive only if the probed model completed
  other requests meanwhile (an overloaded server refuses with UNAVAILABLE "Exceeds maximum queue
  size", or queues the probe past its deadline, while it keeps answering), otherwise a failure.

``failures`` failures in a row mean the server is stuck: ``on_stuck`` is called (serve then treats
it like a dead server). The probe runs only while the lifecycle says ``serving``; a result that
straddles a change of state is dropped.
"""

from __future__ import annotations

import enum
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blip2_triton.runtime.contract import IMAGE, IMAGE_EMBED_MODEL, ITM_MODEL, PUBLIC_MODEL, TEXT_EMBED_MODEL

from .lifecycle import Lifecycle, State
from .process import TritonServer

# Public models a probe may use, best first: each runs the most of its repository for one request.
PROBE_MODELS = (PUBLIC_MODEL, ITM_MODEL, IMAGE_EMBED_MODEL, TEXT_EMBED_MODEL)
# Optional inputs worth setting: the fewest new tokens there are.
_OPTIONAL_VALUES: dict[str, int] = {"max_tokens": 1}
_PROBE_TEXT = b"a picture"
_WIRE_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32"}
_NUMPY_TYPES = {"TYPE_STRING": "object", "TYPE_INT32": "int32"}


class Verdict(enum.Enum):
    ALIVE = "alive"
    BUSY = "busy"  # the probe failed but the model completed other requests: alive, overloaded
    FAILED = "failed"


def judge(error_status: str | None, progressed: bool) -> Verdict:
    """One probe's verdict from its error status (None: answered) and whether the model progressed."""
    if error_status is None or error_status.endswith("INVALID_ARGUMENT"):
        return Verdict.ALIVE
    return Verdict.BUSY if progressed else Verdict.FAILED


class FailureCounter:
    """Failures in a row; ``record`` returns True when there are ``limit`` of them (then restarts)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.count = 0

    def record(self, verdict: Verdict) -> bool:
        if verdict is not Verdict.FAILED:
            self.count = 0
            return False
        self.count += 1
        if self.count >= self.limit:
            self.count = 0
            return True
        return False

    def reset(self) -> None:
        self.count = 0


@dataclass(frozen=True)
class ProbeSettings:
    interval_s: float = 5.0
    timeout_s: float = 10.0
    failures: int = 3

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0


@dataclass
class ProbeRequest:
    """What one probe sends: the model and (name, Triton type, value) per input."""

    model: str
    inputs: list[tuple[str, str, Any]]


def probe_request(model: str, config: dict) -> ProbeRequest | None:
    """The smallest valid request to ``model`` from its config (JSON form); None if there is none.

    Required inputs must be an image or a text (TYPE_STRING); ``max_tokens`` is set to 1 when the
    model has it; other optional inputs are left out.
    """
    if config.get("model_transaction_policy", {}).get("decoupled"):
        return None  # unary requests only: a cancelled stream is the one thing known to crash Triton
    inputs: list[tuple[str, str, Any]] = []
    for spec in config.get("input", []):
        name, kind = spec.get("name", ""), spec.get("data_type", "")
        if spec.get("optional"):
            if name in _OPTIONAL_VALUES and kind == "TYPE_INT32":
                inputs.append((name, kind, _OPTIONAL_VALUES[name]))
            continue
        if kind != "TYPE_STRING":
            return None
        inputs.append((name, kind, None if name == IMAGE.name else _PROBE_TEXT))
    return ProbeRequest(model, inputs) if inputs else None


def tiny_png(seed: int) -> bytes:
    """A 16x16 PNG of random pixels (a new one each probe: no cache answers it)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ProbeLog:
    """What the probes saw (for logs and the tests' figures)."""

    sent: int = 0
    failed: int = 0
    busy: int = 0
    last_seconds: float = 0.0
    stuck_at: list[float] = field(default_factory=list)


class LivenessProbe:
    """Probes ``server`` on a thread while ``lifecycle`` is serving; ``on_stuck(reason)`` when stuck."""

    def __init__(
        self,
        server: TritonServer,
        lifecycle: Lifecycle,
        settings: ProbeSettings,
        *,
        on_stuck: Callable[[str], None],
        log: Callable[[str], None] = print,
    ) -> None:
        self.server = server
        self.lifecycle = lifecycle
        self.settings = settings
        self.on_stuck = on_stuck
        self.log = log
        self.record = ProbeLog()
        self._counter = FailureCounter(settings.failures)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._target: tuple[int, ProbeRequest | None] | None = None  # (server pid, request)
        self._completed: tuple[int, int] | None = None  # (epoch, success count) at the last probe
        self._seed = 0

    def start(self) -> None:
        if not self.settings.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="liveness-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 5)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        wait = self.settings.interval_s
        while not self._stopped.wait(wait):
            wait = self.settings.interval_s
            if self.lifecycle.state is not State.SERVING:
                self._counter.reset()
                continue
            epoch = self.lifecycle.epoch
            try:
                verdict, detail = self._probe_once(epoch)
            except Exception as exc:  # a probe must never kill the thread
                verdict, detail = Verdict.FAILED, f"probe error: {exc}"
            if self.lifecycle.epoch != epoch or self.lifecycle.state is not State.SERVING:
                self._counter.reset()
                continue
            if verdict is Verdict.BUSY:
                self.record.busy += 1
            if verdict is not Verdict.FAILED:
                self._counter.record(verdict)
                continue
            self.record.failed += 1
            self.log(
                f"blip2-triton: liveness probe failed ({self._counter.count + 1}/{self.settings.failures}): "
                f"{detail}"
            )
            if self._counter.record(verdict):
                self.record.stuck_at.append(time.monotonic())
                self.on_stuck(
                    f"{self.settings.failures} liveness probes in a row got no answer "
                    f"(last: {detail}) and no request completed meanwhile"
                )
            else:
                wait = min(1.0, self.settings.interval_s)  # a failure is re-checked soon

    def _probe_once(self, epoch: int) -> tuple[Verdict, str]:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(self.server.grpc_url)
        try:
            try:
                request = self._request(client)
            except InferenceServerException as exc:  # readiness or config unanswered: not alive
                return Verdict.FAILED, f"{exc.status()} {' '.join(str(exc.message()).split())[:200]}"
            if request is None:
                return Verdict.ALIVE, "no public unary model to probe"
            self.record.sent += 1
            started = time.monotonic()
            error: str | None = None
            detail = "answered"
            try:
                client.infer(
                    request.model,
                    self._inputs(request),
                    client_timeout=self.settings.timeout_s,
                    timeout=int(self.settings.timeout_s * 0.8 * 1e6),  # let Triton drop it from its queue
                )
            except InferenceServerException as exc:
                error = str(exc.status())
                detail = f"{request.model}: {error} {' '.join(str(exc.message()).split())[:200]}"
            self.record.last_seconds = time.monotonic() - started
            progressed = self._progressed(client, request.model, epoch)
            return judge(error, progressed), detail
        finally:
            client.close()

    def _request(self, client) -> ProbeRequest | None:
        """The request to send to this server (chosen once per server process); None if the server
        answers but has no model a unary probe can use. A server that does not answer raises."""
        pid = self.server.pid or 0
        if self._target is not None and self._target[0] == pid:
            return self._target[1]
        timeout = self.settings.timeout_s
        for model in PROBE_MODELS:
            if not client.is_model_ready(model, client_timeout=timeout):
                continue
            config = client.get_model_config(model, as_json=True, client_timeout=timeout)
            request = probe_request(model, config.get("config", config))
            if request is not None:
                self._target = (pid, request)
                self.log(f"blip2-triton: liveness probe: {model} every {self.settings.interval_s:g} s")
                return request
        if self._target is None or self._target[0] != -pid:
            self.log("blip2-triton: liveness probe: no public unary model is ready; not probing")
            self._target = (-pid, None)  # said once per server
        return None

    def _inputs(self, request: ProbeRequest) -> list:
        import numpy as np
        import tritonclient.grpc as grpcclient

        tensors = []
        self._seed += 1
        for name, kind, value in request.inputs:
            if value is None:
                value = tiny_png(self._seed)
            array = np.array([[value]], dtype=_NUMPY_TYPES[kind])
            tensor = grpcclient.InferInput(name, list(array.shape), _WIRE_TYPES[kind])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    def _progressed(self, client, model: str, epoch: int) -> bool:
        """Whether ``model`` completed requests since the previous probe (its success count grew)."""
        try:
            stats = client.get_inference_statistics(
                model, as_json=True, client_timeout=min(2.0, self.settings.timeout_s)
            )
            count = sum(
                int(entry.get("inference_stats", {}).get("success", {}).get("count", 0))
                for entry in stats.get("model_stats", [])
            )
        except Exception:
            return False
        previous = self._completed
        self._completed = (epoch, count)
        return previous is not None and previous[0] == epoch and count > previous[1]
