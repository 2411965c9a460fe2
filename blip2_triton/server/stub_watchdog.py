"""Notice a dead Python-backend stub at once and reload its model, or give up loudly.

Why this exists: the Python backend of Triton 2.51 (python_backend r24.10) never restarts a stub
that died. Up to r24.05 a non-decoupled model's stub was restarted on the next request; the
unification of the decoupled and default pipelines in r24.06 removed that path (``TODO: Implement
restart on decoupled``), and no configuration brings it back. Nor does Triton tie readiness to the
stub: ``is_model_ready`` and ``/v2/health/ready`` stay true while every request fails with "Stub
process '<instance>' is not healthy" (a stub check in readiness came in r25.12, a restart only later
on python_backend's main branch).

So the watchdog, beside tritonserver, holds a pidfd on every stub. When one dies it unloads the
stub's model (its ensembles become unavailable with it, so model and server readiness turn false at
once) and loads it again (Triton reloads the ensembles that use it), through the model-repository
API (``--model-control-mode=explicit``). If that fails, times out, or stubs keep dying, it gives up
and sets ``failed``: ``blip2-triton serve`` then stops and exits non-zero so that a supervisor
restarts the whole server.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .model_graph import callers, loaded_configs
from .process import TritonServer
from .process_table import StubProcess, is_running, stub_processes


@dataclass(frozen=True)
class Recovery:
    """One reload after a stub died: which stub, and how long the model was unready."""

    stub: StubProcess
    seconds: float


class StubWatchdog:
    """Reloads the model of any Python-backend stub of ``server`` that dies (a daemon thread).

    ``reload_timeout_s`` bounds one unload + load; more than ``max_recoveries`` reloads within
    ``window_s`` seconds is a crash loop. Either sets ``failed`` (with ``failure`` saying why).
    ``pause()`` stops reacting (while the server is drained or stopped on purpose).
    """

    def __init__(
        self,
        server: TritonServer,
        *,
        reload_timeout_s: float = 300.0,
        max_recoveries: int = 5,
        window_s: float = 600.0,
        log: Callable[[str], None] = print,
    ) -> None:
        self.server = server
        self.reload_timeout_s = reload_timeout_s
        self.max_recoveries = max_recoveries
        self.window_s = window_s
        self.log = log
        self.failed = threading.Event()
        self.failure = ""
        self.recoveries: list[Recovery] = []
        self._recent: deque[float] = deque()
        # Stubs of instances a reload replaced: they are being stopped, which is no death.
        self._replaced: set[int] = set()
        self._paused = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    # -- control -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Stop reacting to stub exits (the server is being drained or stopped on purpose)."""
        self._paused.set()

    def stop(self) -> None:
        self._paused.set()
        self._stopped.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        watched: dict[int, StubProcess] = {}  # pidfd -> stub
        try:
            while not self._stopped.is_set():
                self._watch_new_stubs(watched)
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                for fd in watched:
                    poller.register(fd, select.POLLIN)
                # Re-scan every second: reloaded models have new stubs.
                dead = [watched[fd] for fd, _ in poller.poll(1000) if fd in watched]
                if self._paused.is_set() or not self.server.is_alive() or not dead:
                    _forget(watched, {stub.model for stub in dead})
                    continue
                # A reload stops other stubs too (the model's other instances, its callers): forget
                # every stub, recover, and watch the live ones again on the next scan.
                _forget(watched, {stub.model for stub in watched.values()})
                for model in dict.fromkeys(stub.model for stub in dead):
                    if not self._recover(next(s for s in dead if s.model == model)):
                        return
        finally:
            _forget(watched, {stub.model for stub in watched.values()})

    def _watch_new_stubs(self, watched: dict[int, StubProcess]) -> None:
        if self.server.pid is None:
            return
        known = {stub.pid for stub in watched.values()} | self._replaced
        for stub in stub_processes(self.server.pid):
            if stub.pid in known:
                continue
            try:
                fd = os.pidfd_open(stub.pid)
            except OSError:  # gone already: the next scan no longer lists it
                continue
            if is_running(stub.pid):
                watched[fd] = stub
            else:
                os.close(fd)

    # -- recovery ----------------------------------------------------------------------------------

    def _give_up(self, reason: str) -> bool:
        self.failure = reason
        self.log(f"blip2-triton: {reason}; giving up (exit non-zero so that a supervisor restarts)")
        self.failed.set()
        return False

    def _recover(self, stub: StubProcess) -> bool:
        now = time.monotonic()
        while self._recent and now - self._recent[0] > self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_recoveries:
            return self._give_up(
                f"{len(self._recent) + 1} stub deaths within {self.window_s:g} s (last: {stub.instance})"
            )
        self._recent.append(now)
        self.log(
            f"blip2-triton: Python backend stub {stub.instance} (pid {stub.pid}) died; "
            f"reloading model '{stub.model}' (unready meanwhile)"
        )
        before = stub_processes(self.server.pid) if self.server.pid is not None else []
        try:
            seconds, reloaded = reload_model(self.server, stub.model, timeout_s=self.reload_timeout_s)
        except Exception as exc:  # any failure to reload means: restart everything
            return self._give_up(f"reloading '{stub.model}' after its stub died failed: {exc}")
        self._replaced = {s.pid for s in before if s.model in reloaded and is_running(s.pid)}
        self.recoveries.append(Recovery(stub, seconds))
        self.log(f"blip2-triton: model '{stub.model}' reloaded in {seconds:.1f} s; ready again")
        return True


def _forget(watched: dict[int, StubProcess], models: set[str]) -> None:
    """Stop watching (and close the pidfds of) the stubs of ``models``."""
    for fd in [fd for fd, stub in watched.items() if stub.model in models]:
        del watched[fd]
        with contextlib.suppress(OSError):
            os.close(fd)


def reload_model(server: TritonServer, model: str, *, timeout_s: float) -> tuple[float, list[str]]:
    """Unload ``model`` and load it again; returns the seconds taken and the models reloaded.

    Raises if a model that was READY before is not READY after.

    Unloading makes the model unavailable at once, and with it the ensembles that use it (Triton
    knows those) and the contract's BLS callers (``model_graph.callers``, unloaded here: Triton does
    not know whom they call), so model and server readiness are false while it cannot answer.
    Loading it makes Triton load its ensembles again; the callers, and any model that was READY
    before and is not after, are loaded again here.
    """
    import tritonclient.grpc as grpcclient

    headers = server.admin_grpc_headers
    client = grpcclient.InferenceServerClient(server.grpc_url)
    started = time.monotonic()

    def remaining() -> float:
        return max(1.0, timeout_s - (time.monotonic() - started))

    try:
        configs = loaded_configs(client, headers)
        front = [name for name in callers(configs) if name != model]
        for name in [*front, model]:
            client.unload_model(name, headers=headers, client_timeout=remaining())
        for name in [model, *front]:
            client.load_model(name, headers=headers, client_timeout=remaining())
        ready = {
            m.name for m in client.get_model_repository_index(headers=headers).models if m.state == "READY"
        }
        for name in sorted(set(configs) - ready):
            client.load_model(name, headers=headers, client_timeout=remaining())
        for name in configs:
            if not client.is_model_ready(name):
                raise RuntimeError(f"model '{name}' is not ready after reloading '{model}'")
    finally:
        client.close()
    return time.monotonic() - started, [model, *front]
