"""Stub death and graceful drain of ``blip2-triton serve``, on a served tiny export (no mocks).

Each test starts ``blip2-triton serve`` as an operator would, drives it with real clients, and
measures what a client sees. Figures go to ``.work/figures/reliability.json`` (docs/operations.md).
Timing is measured and reported, never asserted beyond generous bounds (the machine may be loaded).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from blip2_triton import fixtures
from blip2_triton.runtime.contract import PUBLIC_MODEL
from blip2_triton.server.process_table import is_running, stub_processes

from .serve_helpers import ServeProcess, start_serve
from .triton_requests import build_inputs

FIGURES = Path(__file__).resolve().parent.parent / ".work" / "figures"
IMAGE = (fixtures.samples_dir() / "sky_circle.jpg").read_bytes()


def fresh_image(seed: int) -> bytes:
    """A small PNG no request sent before (the server may cache the vision step's answers)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


ADMIN_KEY = "reliability-test-key-0123456789"


def record_figure(key: str, value: object) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / "reliability.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\n{key}: {json.dumps(value)}")


@dataclass
class Outcome:
    started: float
    ended: float
    error: str | None  # None: answered with text


def _describe(exc: Exception) -> str:
    if isinstance(exc, InferenceServerException):
        return f"{exc.status()} {exc.message()}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class LoadGenerator:
    """Closed-loop clients sending caption requests until stopped; every outcome is kept."""

    url: str
    clients: int = 4
    max_tokens: int = 6
    min_tokens: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seeds: itertools.count = field(default_factory=itertools.count)

    def _loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    settings = {"max_tokens": self.max_tokens}
                    if self.min_tokens is not None:
                        settings["min_tokens"] = self.min_tokens
                    client.infer(PUBLIC_MODEL, build_inputs(IMAGE, **settings), client_timeout=120)
                    error = None
                except Exception as exc:  # every failure is an outcome to count
                    error = _describe(exc)
                    time.sleep(0.02)  # an instant refusal must not spin
                with self._lock:
                    self.outcomes.append(Outcome(started, time.monotonic(), error))
        finally:
            client.close()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> int:
        """Stop; returns the number of clients still stuck in a request after 150 s (a hang)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)
        return sum(thread.is_alive() for thread in self._threads)


@dataclass
class ReadinessProbe:
    """Polls model and server readiness every 50 ms: (time, model ready, server ready)."""

    url: str
    samples: list[tuple[float, bool, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                try:
                    model = client.is_model_ready(PUBLIC_MODEL, client_timeout=5)
                    server = client.is_server_ready(client_timeout=5)
                except Exception:
                    model = server = False
                self.samples.append((time.monotonic(), model, server))
                time.sleep(0.05)
        finally:
            client.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(opt_build, tmp_path_factory) -> ServeProcess:
    """One serve for the stub kills (each recovers it) and then the drain (which ends it)."""
    log_dir = tmp_path_factory.mktemp("reliability-serve")
    process = start_serve(opt_build["repository"], log_dir, env={"BLIP2_TRITON_ADMIN_KEY": ADMIN_KEY})
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()


def _wait(predicate, timeout_s: float, what: str, explain=lambda: "") -> None:
    """Poll ``predicate`` until true; on timeout fail with ``explain()`` (what was still missing)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {explain()}"
        time.sleep(0.05)


# Stubs whose model answers from execute(): a death fails the requests inside it ("not healthy"), and
# the model is reloaded. The engine's stub (answers from its own thread) is test_supervision's.
STUB_KINDS = {"preprocess": "blip2_preprocess", "vision": "blip2_vision"}


@pytest.mark.server
@pytest.mark.parametrize("kind", list(STUB_KINDS))
def test_killed_stub_is_noticed_and_its_model_reloaded(served: ServeProcess, kind: str) -> None:
    model = STUB_KINDS[kind]
    server_pid = served.tritonserver_pid()
    load = LoadGenerator(served.grpc_url)
    probe = ReadinessProbe(served.grpc_url)
    load.start()
    probe.start()
    try:
        _wait(lambda: sum(o.error is None for o in load.outcomes) >= 8, 120, "traffic before the kill")
        victim = next(s for s in stub_processes(server_pid) if s.model == model)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)

        def conditions() -> dict[str, bool]:
            try:
                current = served.tritonserver_pid()  # a new one after a restart
            except ValueError:  # between two servers
                current = server_pid
            fresh = [s for s in stub_processes(current) if s.model == model and s.pid != victim.pid]
            late = [o for o in load.outcomes if o.started > killed_at and o.error is None]
            return {
                "new stub": bool(fresh),
                "readiness went false": any(not m for t, m, _ in probe.samples if t > killed_at),
                # a reload; or, if the dead instance did not go within the stuck check's grace (a busy
                # machine), a restart of tritonserver: both bring the model back
                "'reloaded in' or 'restarted' logged": any(
                    text in served.stderr_since(killed_at)
                    for text in ("reloaded in", "tritonserver restarted")
                ),
                "4 answers after the kill": len(late) >= 4,
                "server ready now": probe.samples[-1][2],
            }

        def explain() -> str:
            errors = sorted({o.error for o in load.outcomes if o.error and o.ended >= killed_at})
            return (
                f"{conditions()}; errors since the kill: {errors[:5]}; "
                f"serve's stderr ends: {served.stderr_text()[-3000:]}"
            )

        _wait(lambda: all(conditions().values()), 300, f"{model} to serve again", explain)
        time.sleep(1.0)
    finally:
        hung = load.stop()
        probe.stop()
    assert hung == 0, "a request hung"
    assert served.process.poll() is None, served.stderr_text()
    assert not is_running(victim.pid)

    failed = [o for o in load.outcomes if o.error is not None and o.ended >= killed_at]
    answered_after = [o for o in load.outcomes if o.error is None and o.started > killed_at]
    back = min(o.ended for o in answered_after)
    after_kill = [(t, m, s) for t, m, s in probe.samples if t >= killed_at]
    unready = [t for t, m, s in after_kill if not m]
    became_ready = next((t for t, m, s in after_kill if m and unready and t > unready[0]), None)
    assert unready, (
        f"readiness never went false ({len(after_kill)} samples after the kill): {served.stderr_text()}"
    )
    assert became_ready is not None, probe.samples[-20:]
    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        index = client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": ADMIN_KEY})
        states = [(m.name, m.version, m.state, m.reason) for m in index.models]
        assert client.is_server_ready(client_timeout=60), (states, served.stderr_text())
        assert client.is_model_ready(PUBLIC_MODEL, client_timeout=60)
    except InferenceServerException as exc:  # say what serve was doing (a second recovery?)
        raise AssertionError(f"server unreachable after it was ready: {exc}; {served.stderr_text()}") from exc
    finally:
        client.close()
    # While readiness said ready, requests did not fail for long: failures sit between the kill and
    # the end of the reload (plus the requests already in the dead stub).
    assert all(o.started <= became_ready + 0.5 for o in failed), [
        o for o in failed if o.started > became_ready
    ]
    recovered_by = "reload" if "reloaded in" in served.stderr_since(killed_at) else "restart"
    record_figure(
        f"stub_kill_{kind}",
        {
            "failed_requests": len(failed),
            "refused_while_unready": sum("no available versions" in (o.error or "") for o in failed),
            "failed_in_dead_stub": sum("not healthy" in (o.error or "") for o in failed),
            "first_unready_after_kill_s": round(unready[0] - killed_at, 3),
            "unready_s": round(became_ready - unready[0], 2),
            "kill_to_first_answer_s": round(back - killed_at, 2),
            "requests_sent": len(load.outcomes),
            "recovered_by": recovered_by,
        },
    )


def _long_request(url: str, tokens: int, results: list, index: int) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        result = client.infer(
            PUBLIC_MODEL,
            build_inputs(IMAGE, max_tokens=tokens, min_tokens=tokens, beam_width=1 + index % 2),
            client_timeout=600,
        )
        results[index] = result.as_numpy("text_output")[0][0].decode()
    except Exception as exc:
        results[index] = exc
    finally:
        client.close()


def _send_long_requests(url: str, count: int, tokens: int) -> tuple[list, list[threading.Thread]]:
    results: list = [None] * count
    threads = [threading.Thread(target=_long_request, args=(url, tokens, results, i)) for i in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


@pytest.mark.server
def test_sigterm_drains_every_accepted_request(served: ServeProcess) -> None:
    count = 6
    results, threads = _send_long_requests(served.grpc_url, count, tokens=120)
    time.sleep(1.0)  # accepted, and spread over the steps of the ensemble
    server_pid = served.tritonserver_pid()
    signalled = time.monotonic()
    served.process.send_signal(signal.SIGTERM)

    client = grpcclient.InferenceServerClient(served.grpc_url)
    try:
        _wait(lambda: not client.is_model_ready(PUBLIC_MODEL), 10, "readiness to turn false")
        unready_after = time.monotonic() - signalled
        assert not client.is_server_ready()
        with pytest.raises(Exception) as refused:
            client.infer(PUBLIC_MODEL, build_inputs(IMAGE, max_tokens=2), client_timeout=30)
        refused_message = refused.value.message()
    finally:
        client.close()
    for thread in threads:
        thread.join(timeout=600)
    assert served.process.wait(timeout=120) == 0, served.stderr_text()
    drained = time.monotonic() - signalled
    lost = [r for r in results if not isinstance(r, str)]
    assert not lost, lost
    assert "no available versions" in refused_message
    assert "drained in" in served.stderr_text()
    assert not is_running(server_pid)
    record_figure(
        "drain",
        {
            "in_flight_at_signal": count,
            "answered": count - len(lost),
            "lost": len(lost),
            "readiness_false_after_s": round(unready_after, 3),
            "signal_to_exit_s": round(drained, 1),
            "new_request_answer": refused_message,
        },
    )


@pytest.mark.server
def test_on_stub_death_exit_stops_the_server_non_zero(opt_build, tmp_path: Path) -> None:
    served = start_serve(
        opt_build["repository"],
        tmp_path,
        "--on-stub-death=exit",
        env={"BLIP2_TRITON_ADMIN_KEY": ADMIN_KEY},
    )
    try:
        served.wait_ready()
        server_pid = served.tritonserver_pid()
        stubs = stub_processes(server_pid)
        victim = next(s for s in stubs if s.model == "blip2_vision")
        os.kill(victim.pid, signal.SIGKILL)
        assert served.process.wait(timeout=120) == 1
        assert victim.instance in served.stderr_text() and "giving up" in served.stderr_text()
        assert not is_running(server_pid)
        assert not any(is_running(s.pid) for s in stubs)
    finally:
        served.kill()


@pytest.mark.server
def test_drain_timeout_cuts_off_and_counts(opt_build, tmp_path: Path) -> None:
    served = start_serve(
        opt_build["repository"], tmp_path, "--drain-timeout=0.5", env={"BLIP2_TRITON_ADMIN_KEY": ADMIN_KEY}
    )
    try:
        served.wait_ready()
        results, threads = _send_long_requests(served.grpc_url, 4, tokens=400)
        time.sleep(1.5)
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=180)
        for thread in threads:
            thread.join(timeout=300)
        stderr = served.stderr_text()
        assert code == 3, stderr  # accepted requests were cut off: the exit code says so
        assert "drain timeout (0.5 s): cut off" in stderr, stderr
        cut_line = next(line for line in stderr.splitlines() if "cut off" in line)
        record_figure(
            "drain_timeout",
            {"line": cut_line, "failed": sum(not isinstance(r, str) for r in results), "exit_code": code},
        )
    finally:
        served.kill()


@pytest.mark.server
def test_a_crashed_server_leaves_no_stub_behind(tmp_path: Path) -> None:
    from blip2_triton.server import TritonServer

    from .serve_helpers import double_repository

    server = TritonServer.on_free_ports(double_repository(tmp_path), log_file=tmp_path / "server.log")
    server.start()
    try:
        stubs = stub_processes(server.pid)
        assert stubs
        os.kill(server.pid, signal.SIGKILL)  # a crash: tritonserver gets no chance to stop its stubs
        _wait(lambda: not server.is_alive(), 30, "tritonserver to die")
        assert any(is_running(s.pid) for s in stubs)  # orphaned, still in the server's group
    finally:
        server.stop()
    assert not any(is_running(s.pid) for s in stubs)
