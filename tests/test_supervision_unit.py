"""The pure parts of serve's supervision, without a server: state rules, budgets, probe verdicts,
probe requests, stub command lines, port holders and the guardian (on a stand-in process)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from blip2_triton.server.guardian import Guardian
from blip2_triton.server.lifecycle import Budget, Lifecycle, State, TransitionError
from blip2_triton.server.liveness import FailureCounter, Verdict, judge, probe_request
from blip2_triton.server.ports import describe_port_holders, port_holders
from blip2_triton.server.process_table import SHM_DIR, SHM_PREFIX, is_running, parse_stub

# -- lifecycle -------------------------------------------------------------------------------------


def test_lifecycle_allows_the_documented_paths() -> None:
    life = Lifecycle()
    for state in (State.SERVING, State.RECOVERING, State.SERVING, State.RESTARTING, State.SERVING):
        life.to(state)
    life.to(State.RECOVERING)
    life.to(State.RESTARTING)
    life.to(State.DRAINING)
    life.to(State.STOPPED)
    assert life.epoch == 9
    assert [state for _, state in life.history][-2:] == [State.DRAINING, State.STOPPED]


@pytest.mark.parametrize(
    "path",
    [
        (State.SERVING, State.DRAINING, State.SERVING),  # a drain never goes back to serving
        (State.SERVING, State.DRAINING, State.RECOVERING),  # ... nor reloads what it unloaded
        (State.SERVING, State.DRAINING, State.RESTARTING),
        (State.SERVING, State.RESTARTING, State.RECOVERING),
        (State.STOPPED, State.SERVING),
    ],
)
def test_lifecycle_refuses_the_rest(path: tuple[State, ...]) -> None:
    life = Lifecycle()
    *allowed, refused = path
    for state in allowed:
        life.to(state)
    with pytest.raises(TransitionError):
        life.to(refused)


def test_stop_request_is_a_flag_any_state_sees() -> None:
    life = Lifecycle()
    assert not life.stop_requested and not life.wait_stop(0.01)
    life.request_stop()
    assert life.stop_requested and life.wait_stop(0.0)


def test_budget_counts_uses_within_the_window() -> None:
    now = [0.0]
    budget = Budget(3, 600.0, clock=lambda: now[0])
    assert [budget.spend() for _ in range(4)] == [True, True, True, False]
    now[0] = 599.0
    assert not budget.spend() and budget.used() == 3
    now[0] = 600.0  # the first three fall out of the window together
    assert budget.used() == 0 and budget.spend()


def test_zero_budget_never_allows() -> None:
    assert not Budget(0, 1.0).spend()
    with pytest.raises(ValueError):
        Budget(-1, 1.0)


# -- liveness verdicts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "progressed", "verdict"),
    [
        (None, False, Verdict.ALIVE),
        ("StatusCode.INVALID_ARGUMENT", False, Verdict.ALIVE),  # validated: the server works
        ("StatusCode.UNAVAILABLE", True, Verdict.BUSY),  # queue full, but requests complete
        ("StatusCode.DEADLINE_EXCEEDED", True, Verdict.BUSY),  # queued past the probe's deadline
        ("StatusCode.UNAVAILABLE", False, Verdict.FAILED),  # refuses and completes nothing
        ("StatusCode.DEADLINE_EXCEEDED", False, Verdict.FAILED),  # the wedge
        ("StatusCode.INTERNAL", False, Verdict.FAILED),
    ],
)
def test_judge(status: str | None, progressed: bool, verdict: Verdict) -> None:
    assert judge(status, progressed) is verdict


def test_only_failures_in_a_row_mean_stuck() -> None:
    counter = FailureCounter(3)
    sequence = [Verdict.FAILED, Verdict.FAILED, Verdict.BUSY, Verdict.FAILED, Verdict.FAILED, Verdict.FAILED]
    assert [counter.record(v) for v in sequence] == [False, False, False, False, False, True]
    assert counter.count == 0  # starts over after reporting


GENERATION_CONFIG = {
    "name": "blip2",
    "input": [
        {"name": "image", "data_type": "TYPE_STRING", "dims": ["1"]},
        {"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"], "optional": True},
        {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": ["1"], "optional": True},
        {"name": "temperature", "data_type": "TYPE_FP32", "dims": ["1"], "optional": True},
    ],
}


def test_probe_request_is_the_smallest_valid_one() -> None:
    request = probe_request("blip2", GENERATION_CONFIG)
    assert request is not None
    assert request.inputs == [("image", "TYPE_STRING", None), ("max_tokens", "TYPE_INT32", 1)]
    itm = probe_request(
        "blip2_itm",
        {
            "input": [
                {"name": "image", "data_type": "TYPE_STRING"},
                {"name": "text_input", "data_type": "TYPE_STRING"},
            ]
        },
    )
    assert itm is not None and itm.inputs[1] == ("text_input", "TYPE_STRING", b"a picture")


def test_probe_request_refuses_streams_and_unknown_inputs() -> None:
    decoupled = {**GENERATION_CONFIG, "model_transaction_policy": {"decoupled": True}}
    assert probe_request("blip2_stream", decoupled) is None
    assert probe_request("x", {"input": [{"name": "pixels", "data_type": "TYPE_FP32"}]}) is None


# -- stubs, ports ----------------------------------------------------------------------------------

_STUB = "/cache/backends/abc/python/triton_python_backend_stub"
_REGION = SHM_PREFIX + "5359a6d2-9262-4f7e-82ca-d8f879d83d89"


def _stub_args(model: str, instance: str) -> list[str]:
    return [
        _STUB,
        f"/repo/{model}/1/model.py",
        _REGION,
        "1048576",
        "1048576",
        "42",
        "/cache",
        "336",
        instance,
        "DEFAULT",
    ]


def test_stub_command_lines() -> None:
    stub = parse_stub(7, _stub_args("blip2_preprocess", "blip2_preprocess_0_1"))
    assert stub is not None
    assert (stub.model, stub.instance, stub.region, stub.is_instance) == (
        "blip2_preprocess",
        "blip2_preprocess_0_1",
        _REGION,
        True,
    )
    assert stub.region_path == SHM_DIR / _REGION
    helper = parse_stub(8, _stub_args("blip2", "blip2"))  # the config helper a model load runs
    assert helper is not None and not helper.is_instance
    assert parse_stub(9, ["/bin/sh", "-c", "triton_python_backend_stub"]) is None


def test_a_taken_port_names_its_holder() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holders = port_holders(port)
        assert [h.pid for h in holders] == [os.getpid()]
        assert f"pid {os.getpid()} (" in describe_port_holders(port)
    assert port_holders(port) == []


# -- the guardian, on a stand-in for tritonserver --------------------------------------------------


def _stand_in(tmp_path: Path) -> subprocess.Popen:
    """A process whose argv[0] ends with 'tritonserver' (sleep), in a session of its own."""
    fake = tmp_path / "tritonserver"
    fake.symlink_to("/bin/sleep")
    return subprocess.Popen([str(fake), "600"], start_new_session=True)


def _region() -> Path:
    path = SHM_DIR / f"{SHM_PREFIX}test-{uuid.uuid4()}"
    path.write_bytes(b"x")
    return path


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(0.05)
    return False


def test_guardian_cleans_up_when_its_parent_dies(tmp_path: Path) -> None:
    server = _stand_in(tmp_path)
    region = _region()
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)  # not ours by name
    try:
        # The parent is a child process we SIGKILL; its guardian must outlive it and clean up.
        code = (
            "import sys, time; from blip2_triton.server.guardian import Guardian; g = Guardian(); g.start(); "
            f"g.update([{server.pid}, {bystander.pid}], [{region.name!r}]); print(g.pid, flush=True); time.sleep(600)"
        )
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        guardian_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait_gone(server.pid), "the stand-in tritonserver outlived its parent"
        assert _wait_gone(guardian_pid), "the guardian did not exit after cleaning up"
        assert not region.exists()
        assert is_running(bystander.pid), "the guardian killed a process that was not tritonserver's"
    finally:
        for process in (server, bystander):
            process.kill()
            process.wait()
        region.unlink(missing_ok=True)


def test_guardian_does_nothing_after_a_clean_stop(tmp_path: Path) -> None:
    server = _stand_in(tmp_path)
    region = _region()
    guardian = Guardian()
    try:
        guardian.start()
        guardian.update([server.pid], [region.name])
        guardian.close()  # the parent stopped the server itself: nothing left to clean
        assert is_running(server.pid) and region.exists()
    finally:
        server.kill()
        server.wait()
        region.unlink(missing_ok=True)
