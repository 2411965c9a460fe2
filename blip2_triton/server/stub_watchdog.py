"""Notice at once when a Python-backend stub of our tritonserver exits.

Why this exists: the Python backend of Triton 2.51 (python_backend r24.10) never restarts a stub
that died. Up to r24.05 a non-decoupled model's stub was restarted on the next request; the
unification of the decoupled and default pipelines in r24.06 removed that path (``TODO: Implement
restart on decoupled``), and no configuration brings it back. Nor does Triton tie readiness to the
stub: ``is_model_ready`` and ``/v2/health/ready`` stay true while every request fails with "Stub
process '<instance>' is not healthy" (a stub check in readiness came in r25.12).

The watchdog only watches: a thread holds a pidfd on every stub that the current tritonserver runs
(re-scanned every second: reloads and restarts bring new stubs) and puts a ``StubExited`` on the
supervisor's queue when one exits. Whether that exit was a death or the end of a model that was
unloaded on purpose is the supervisor's to decide (``supervisor.py``): it owns every reaction.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import time
from dataclasses import dataclass

from .process import TritonServer
from .process_table import StubProcess, is_running, stub_processes

_SCAN_MS = 1000


@dataclass(frozen=True)
class StubExited:
    """A stub of tritonserver ``server_pid`` exited (seen at ``at``, monotonic seconds)."""

    stub: StubProcess
    server_pid: int
    at: float


class StubWatchdog:
    """Puts a ``StubExited`` on ``events`` for every stub of ``server`` that exits (a daemon thread)."""

    def __init__(self, server: TritonServer, events: queue.Queue) -> None:
        self.server = server
        self.events = events
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    def start(self) -> None:
        """Watch every stub running now (before returning: one killed right after is seen), then new ones."""
        watched: dict[int, tuple[StubProcess, int]] = {}
        self._watch_new_stubs(watched)
        self._thread = threading.Thread(target=self._run, args=(watched,), name="stub-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self, watched: dict[int, tuple[StubProcess, int]]) -> None:
        """``watched``: pidfd -> (stub, server pid)."""
        try:
            while not self._stopped.is_set():
                self._watch_new_stubs(watched)
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                for fd in watched:
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(_SCAN_MS):
                    if fd in watched and not self._stopped.is_set():
                        stub, server_pid = watched.pop(fd)
                        os.close(fd)
                        self.events.put(StubExited(stub, server_pid, time.monotonic()))
        finally:
            for fd in watched:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _watch_new_stubs(self, watched: dict[int, tuple[StubProcess, int]]) -> None:
        server_pid = self.server.pid  # no is_alive() here: only the owner reaps the server
        if server_pid is None:
            return
        known = {stub.pid for stub, _ in watched.values()}
        for stub in stub_processes(server_pid):
            if stub.pid in known:
                continue
            try:
                fd = os.pidfd_open(stub.pid)
            except OSError:  # gone already: it was never watched
                continue
            if is_running(stub.pid):
                watched[fd] = (stub, server_pid)
            else:
                os.close(fd)
