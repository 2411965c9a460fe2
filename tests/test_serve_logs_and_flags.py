"""``blip2-triton serve``: tritonserver flags after ``--``, its log on stdout and capped on disk, HTTP's own bind.

One real serve run on the tiny ``double`` model covers what operators pass through (ISO8601 log
format, Triton tracing to a file), ``--log-stdout`` with a log file capped by ``--log-max-mb``, and
``--http-host`` (HTTP on 127.0.0.2 while gRPC stays on 127.0.0.1). Conflicting flags are refused
before anything starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from blip2_triton.server import ServerProcessError
from blip2_triton.server.log_parsing import startup_failure
from blip2_triton.server.passthrough import check_passthrough

from .serve_helpers import double_repository, infer_double, serve_command, start_serve

ISO8601_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [IWEF] \d+ ")


def test_flags_serve_does_not_own_pass_through() -> None:
    flags = ["--trace-config", "mode=opentelemetry", "--log-format=ISO8601", "--log-info", "true"]
    assert check_passthrough(flags) == tuple(flags)
    assert check_passthrough([]) == ()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--grpc-port=9001"],
            "tritonserver flag --grpc-port conflicts with what serve manages (use serve's --grpc-port)",
        ),
        (
            ["--http-address", "0.0.0.0"],
            "tritonserver flag --http-address conflicts with what serve manages (use serve's --http-host)",
        ),
        (
            ["--model-store=/x"],
            "tritonserver flag --model-store conflicts with what serve manages (use serve's --model-repository)",
        ),
        (
            ["--model-control-mode=poll"],
            "tritonserver flag --model-control-mode conflicts with what serve manages (serve sets it)",
        ),
        (
            ["--exit-timeout-secs=1"],
            "tritonserver flag --exit-timeout-secs conflicts with what serve manages (use serve's --drain-timeout)",
        ),
        (["trace"], "tritonserver flags after '--' start with '--': 'trace' follows no flag"),
        (["-v"], "tritonserver flags after '--' start with '--': '-v'"),
    ],
)
def test_flags_serve_manages_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(ServerProcessError) as caught:
        check_passthrough(flags)
    assert str(caught.value) == message


def test_serve_refuses_a_conflicting_flag_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_command("--model-repository", str(tmp_path), "--", "--log-format=ISO8601", "--http-port=1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "blip2-triton: error: tritonserver flag --http-port conflicts with what serve manages (use serve's --http-port)"
    )


def test_iso8601_log_lines_explain_a_failed_start() -> None:
    log = "2026-12-05T23:45:26Z E 1 model_lifecycle.cc:1] \"failed to load 'blip2' version 1: Internal: boom\"\n"
    assert startup_failure(log, 1) == ("model 'blip2' failed to load: boom", "blip2")


@pytest.mark.server
def test_passed_flags_reach_tritonserver_and_the_log_goes_to_stdout_capped(tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    served = start_serve(
        double_repository(tmp_path),
        tmp_path,
        "--log-stdout",
        "--log-max-mb=0.01",
        "--log-verbose=1",
        "--allow-http",
        "--http-host=127.0.0.2",
        "--probe-interval=0",
        f"--admin-key-file={tmp_path / 'admin-key'}",
        "--",
        "--log-format=ISO8601",
        f"--trace-config=triton,file={trace}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
    )
    try:
        text = served.wait_ready(timeout_s=120)
        assert any(ISO8601_LINE.match(line) for line in served.output), "no tritonserver log line on stdout"
        assert f"HTTP     127.0.0.2:{served.http_port}\n" in text
        np.testing.assert_array_equal(infer_double(served.grpc_url, [3.0]), [[6.0]])
        with urllib.request.urlopen(f"http://127.0.0.2:{served.http_port}/v2/health/ready", timeout=5) as ok:
            assert ok.status == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{served.http_port}/v2/health/ready", timeout=5)
        assert served.stop() == 0
    finally:
        served.kill()
    cap = int(0.01 * 2**20)
    backup = served.log_file.with_name(served.log_file.name + ".1")
    assert backup.is_file(), "the verbose log never reached --log-max-mb"
    assert served.log_file.stat().st_size <= cap and backup.stat().st_size <= cap
    traces = json.loads(trace.read_text())  # written by tritonserver at exit
    assert any(entry.get("model_name") == "double" for entry in traces)
