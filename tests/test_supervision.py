"""serve's supervision on a served tiny export (no mocks): a dead engine stub with requests in
flight, SIGTERM during a recovery, a wedged tritonserver (SIGSTOP), a killed one (kill -9), SIGKILL of
serve's whole process group, and ``--on-crash exit`` (a taken port that is named: test_server.py).

Each test runs a ``blip2-triton serve`` of its own, except the engine stub's death and the killed
tritonserver: both leave serve recovered, so they share one (the second ends it). Figures go to
``.work/figures/supervision.json`` (docs/operations.md); times are measured and reported, asserted
only within generous bounds.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from blip2_triton.runtime import contract
from blip2_triton.server.process_table import (
    SHM_DIR,
    is_running,
    region_mode,
    server_regions,
    stub_processes,
)

from .serve_helpers import ServeProcess, start_serve
from .test_reliability import ADMIN_KEY, FIGURES, IMAGE, LoadGenerator, _wait
from .triton_requests import build_inputs

ENV = {"BLIP2_TRITON_ADMIN_KEY": ADMIN_KEY}
# The model whose stub holds the generation engine (requests answered from its own thread): its
# name changed over time, so take what the contract says, else the old one.
ENGINE_MODEL = getattr(contract, "ENGINE_MODEL", None) or getattr(contract, "LLM_MODEL", "blip2_llm")
# A stub's requests count as ended "at once" within this: the stuck check's grace (5 s) + the kill.
AT_ONCE_S = 15.0


def record(key: str, value: object) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / "supervision.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\n{key}: {json.dumps(value)}")


def _engine_stub(server_pid: int):
    stubs = stub_processes(server_pid)
    return next((s for s in stubs if s.model == ENGINE_MODEL), None) or next(
        s for s in stubs if s.model == contract.STREAM_MODEL
    )


def _serve(repository: Path, tmp_path: Path, *args: str, new_session: bool = False) -> ServeProcess:
    served = start_serve(repository, tmp_path, *args, env=ENV, new_session=new_session)
    served.wait_ready()
    return served


@pytest.fixture(scope="module")
def recovering_serve(opt_build, tmp_path_factory):
    """One serve for the tests that leave it recovered; stopped at the end, and it must drain cleanly."""
    served = _serve(opt_build["repository"], tmp_path_factory.mktemp("supervision-serve"))
    try:
        yield served
        if served.process.poll() is None:
            assert served.stop() == 0, served.stderr_text()
    finally:
        served.kill()


def _snapshot(served: ServeProcess) -> tuple[int, list, set[str]]:
    """(tritonserver pid, its instance stubs, its /dev/shm regions) right now."""
    pid = served.tritonserver_pid()
    return pid, stub_processes(pid), server_regions(pid)


def _leftovers(pid: int, stubs: list, regions: set[str]) -> dict[str, list]:
    return {
        "processes": [p for p in [pid, *(s.pid for s in stubs)] if is_running(p)],
        "regions": sorted(r for r in regions if (SHM_DIR / r).exists()),
    }


def _answers(url: str) -> bool:
    """Whether a one-token caption is answered within 10 s."""
    client = grpcclient.InferenceServerClient(url)
    try:
        client.infer(contract.PUBLIC_MODEL, build_inputs(IMAGE, max_tokens=1), client_timeout=10)
    except Exception:
        return False
    finally:
        client.close()
    return True


@pytest.mark.server
def test_engine_stub_death_ends_requests_in_flight(recovering_serve: ServeProcess) -> None:
    """(c) Every request in flight at the engine stub's death gets an error at once or an answer;
    service comes back; no old stub, no region is left; regions are the serving user's only (and
    serve drains cleanly after: the stop at the end of the shared serve)."""
    served = recovering_serve
    load = LoadGenerator(served.grpc_url, clients=4, max_tokens=40)
    try:
        pid, stubs, regions = _snapshot(served)
        _wait(lambda: all(region_mode(r) == 0o600 for r in server_regions(pid)), 10, "private regions")
        modes = sorted({oct(region_mode(r) or 0) for r in regions})
        load.start()
        _wait(lambda: sum(o.error is None for o in load.outcomes) >= 8, 120, "traffic before the kill")
        victim = _engine_stub(pid)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        _wait(
            lambda: any(o.error is None and o.started > killed_at for o in load.outcomes),
            300,
            "an answer after the kill",
            lambda: served.stderr_text()[-3000:],
        )
        back_at = min(o.ended for o in load.outcomes if o.error is None and o.started > killed_at)
    finally:
        hung = load.stop()
    assert hung == 0
    in_flight = [o for o in load.outcomes if o.started < killed_at < o.ended]
    late = [o for o in in_flight if o.error is not None and o.ended - killed_at > AT_ONCE_S]
    assert not late, [(round(o.ended - killed_at, 1), o.error) for o in late]
    _wait(lambda: not any(_leftovers(pid, stubs, regions).values()), 30, "old stubs and regions to go")
    assert served.process.poll() is None, served.stderr_text()
    new_pid, _, new_regions = _snapshot(served)
    _wait(lambda: all(region_mode(r) == 0o600 for r in server_regions(new_pid)), 10, "private regions")
    new_modes = sorted({oct(region_mode(r) or 0) for r in new_regions})
    stderr = served.stderr_since(killed_at)
    errors = [o for o in in_flight if o.error is not None]
    record(
        "engine_stub_kill",
        {
            "stub": victim.instance,
            "in_flight_at_kill": len(in_flight),
            "answered": len(in_flight) - len(errors),
            "errored": len(errors),
            "max_error_after_kill_s": round(max((o.ended - killed_at for o in errors), default=0.0), 2),
            "errors": sorted({(o.error or "")[:90] for o in errors}),
            "recovery": "restart" if "restarted" in stderr else "reload",
            "kill_to_first_answer_s": round(back_at - killed_at, 1),
            "old_stubs_left": 0,
            "regions_left": 0,
            "region_modes_before_after": [modes, new_modes],
            "server_pid_changed": new_pid != pid,
        },
    )


@pytest.mark.server
def test_killed_server_is_restarted(recovering_serve: ServeProcess) -> None:
    """(e) kill -9 of tritonserver: service back, nothing of the old server left; a clean drain after."""
    served = recovering_serve
    load = LoadGenerator(served.grpc_url, clients=2, max_tokens=20)
    try:
        pid, stubs, regions = _snapshot(served)
        load.start()
        _wait(lambda: sum(o.error is None for o in load.outcomes) >= 4, 120, "traffic before the kill")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        noticed_at = served.wait_stderr("exited unexpectedly", 30, after=killed_at)
        served.wait_stderr("tritonserver restarted", 300, after=noticed_at)
        _wait(
            lambda: any(o.error is None and o.started > killed_at for o in load.outcomes),
            60,
            "an answer after the restart",
        )
        back_at = min(o.ended for o in load.outcomes if o.error is None and o.started > killed_at)
        leftovers = _leftovers(pid, stubs, regions)
    finally:
        hung = load.stop()
    assert hung == 0
    assert not any(leftovers.values()), leftovers
    in_flight = [o for o in load.outcomes if o.started < killed_at < o.ended]
    code = served.stop()
    assert code == 0, served.stderr_text()
    record(
        "killed_server",
        {
            "kill_to_noticed_s": round(noticed_at - killed_at, 2),
            "kill_to_first_answer_s": round(back_at - killed_at, 1),
            "in_flight_at_kill": len(in_flight),
            "errors_at_kill": sorted({(o.error or "")[:80] for o in in_flight if o.error}),
            "old_processes_left": 0,
            "old_regions_left": 0,
            "exit_code_after_sigterm": code,
        },
    )


# (which stub dies, the stderr line after which SIGTERM comes, extra delay)
RECOVERY_POINTS = {
    "vision-while-reloading": (contract.VISION_MODEL, "reloading model", 0.5),
    "engine-while-checking-stuck": (None, "died; reloading", 0.5),
    "engine-while-restarting": (None, "restarting it", 0.5),
}


@pytest.mark.server
@pytest.mark.parametrize("point", list(RECOVERY_POINTS))
def test_sigterm_during_a_recovery(opt_build, tmp_path: Path, point: str) -> None:
    """(c) SIGTERM at several points of a recovery: the recovery stops, the drain runs, and every
    accepted request is answered, or the exit code says it was not (4), never a reload after it."""
    model, line, delay = RECOVERY_POINTS[point]
    served = _serve(opt_build["repository"], tmp_path)
    load = LoadGenerator(served.grpc_url, clients=3, max_tokens=120, min_tokens=120)
    try:
        pid, stubs, regions = _snapshot(served)
        load.start()
        _wait(lambda: sum(o.error is None for o in load.outcomes) >= 4, 120, "traffic before the kill")
        victim = next(s for s in stubs if s.model == model) if model else _engine_stub(pid)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        served.wait_stderr(line, 120, after=killed_at)
        time.sleep(delay)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=180)
        exited = time.monotonic()
    finally:
        hung = load.stop()
        served.kill()
    assert hung == 0
    stderr = served.stderr_text()
    after_drain = stderr.split("stop requested", 1)[-1]
    assert "reloaded in" not in after_drain and "restarted (" not in after_drain, stderr
    # Accepted (not refused at once) and still in flight at the signal: answered, or exit code says not.
    cut = [
        o for o in load.outcomes if o.started < signalled < o.ended and o.error and o.ended - o.started > 1.0
    ]
    assert code in (0, 4), stderr
    if code == 0:
        assert not cut, [(o.error, round(o.ended - signalled, 1)) for o in cut]
    else:
        assert "stuck" in stderr or "drain failed" in stderr, stderr
    assert not any(_leftovers(pid, stubs, regions).values()), _leftovers(pid, stubs, regions)
    record(
        f"sigterm_{point.replace('-', '_')}",
        {
            "exit_code": code,
            "signal_to_exit_s": round(exited - signalled, 1),
            "in_flight_at_signal": sum(o.started < signalled < o.ended for o in load.outcomes),
            "answered_after_signal": sum(
                o.started < signalled < o.ended and o.error is None for o in load.outcomes
            ),
            "cut_off": len(cut),
            "last_line": stderr.strip().splitlines()[-1][:200],
        },
    )


@pytest.mark.server
def test_wedged_server_is_found_and_restarted(opt_build, tmp_path: Path) -> None:
    """(d) SIGSTOP tritonserver: the probe finds it stuck, serve restarts it, service comes back;
    then (4) SIGKILL of serve's whole process group leaves no tritonserver, stub or region behind."""
    served = _serve(
        opt_build["repository"],
        tmp_path,
        "--probe-interval=1",
        "--probe-timeout=3",
        "--probe-failures=2",
        new_session=True,
    )
    try:
        pid, stubs, regions = _snapshot(served)
        assert _answers(served.grpc_url)
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        found_at = served.wait_stderr("tritonserver is stuck", 120, after=stopped_at)
        restarted_at = served.wait_stderr("tritonserver restarted", 300, after=found_at)
        _wait(lambda: _answers(served.grpc_url), 60, "an answer after the restart")
        back_at = time.monotonic()
        assert not any(_leftovers(pid, stubs, regions).values()), _leftovers(pid, stubs, regions)
        new_pid, new_stubs, new_regions = _snapshot(served)
        guardian = [p for p in _children(served.process.pid) if p != new_pid]
        killed_at = time.monotonic()
        os.killpg(served.process.pid, signal.SIGKILL)  # serve and everything in its group
        served.process.wait()
        _wait(
            lambda: not any(_leftovers(new_pid, new_stubs, new_regions).values()),
            20,
            "tritonserver, stubs and regions to go with serve",
            lambda: str(_leftovers(new_pid, new_stubs, new_regions)),
        )
        gone_at = time.monotonic()
        _wait(lambda: not any(is_running(p) for p in guardian), 10, "the guardian to exit")
    finally:
        served.kill()
    record(
        "wedged_server",
        {
            "probe": "every 1 s, 3 s timeout, 2 failures",
            "stop_to_detected_s": round(found_at - stopped_at, 1),
            "detected_to_restarted_s": round(restarted_at - found_at, 1),
            "stop_to_first_answer_s": round(back_at - stopped_at, 1),
            "old_processes_left": 0,
            "old_regions_left": 0,
            "serve_group_sigkill_to_all_gone_s": round(gone_at - killed_at, 2),
        },
    )


def _children(pid: int) -> list[int]:
    from blip2_triton.server.process_table import children

    return children(pid)


@pytest.mark.server
def test_on_crash_exit_exits_1(opt_build, tmp_path: Path) -> None:
    """``--on-crash exit`` keeps the old behaviour: a killed tritonserver ends serve with 1, cleanly."""
    served = _serve(opt_build["repository"], tmp_path, "--on-crash=exit")
    try:
        pid, stubs, regions = _snapshot(served)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        code = served.process.wait(timeout=60)
        exited_at = time.monotonic()
    finally:
        served.kill()
    assert code == 1, served.stderr_text()
    assert "--on-crash exit" in served.stderr_text()
    assert not any(_leftovers(pid, stubs, regions).values())
    record("on_crash_exit", {"exit_code": code, "kill_to_exit_s": round(exited_at - killed_at, 2)})
