"""The tritonserver runner and ``blip2-triton serve``, against a real tritonserver (no mocks).

The repositories are tiny Python-backend models built in tmp folders; each server start takes a
few seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from blip2_triton import cli
from blip2_triton.server import (
    ModelLoadError,
    PortInUseError,
    ServerProcessError,
    ServerStartupError,
    TritonServer,
    free_ports,
    prepare_backend_directory,
    server_environment,
    tritonserver_root,
)
from blip2_triton.server.installation import STUB_NAME

DOUBLE_CONFIG = """\
backend: "python"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

# Imports a package copied next to model.py (the version folder): checks that the Python backend
# puts that folder on sys.path, which the export relies on.
DOUBLE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils

from doubling_helper import FACTOR


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = pb_utils.Tensor("y", (x * FACTOR).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return responses
"""

BROKEN_MODEL = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("broken on purpose")
"""


SLOW_MODEL = """\
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(120)

    def execute(self, requests):
        return []
"""

# Starts a server, prints its PID, then waits to be killed.
ORPHANING_PARENT = """\
import sys, time
from blip2_triton.server import TritonServer, free_ports
grpc_port, http_port, metrics_port = free_ports(3)
server = TritonServer(
    sys.argv[1], grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, log_file=sys.argv[2]
)
server.start()
print(server.pid, flush=True)
time.sleep(600)
"""


def _write_model(repository: Path, name: str, model_py: str, *, helper: bool = False) -> None:
    version = repository / name / "1"
    version.mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(DOUBLE_CONFIG)
    (version / "model.py").write_text(model_py)
    if helper:
        (version / "doubling_helper").mkdir()
        (version / "doubling_helper" / "__init__.py").write_text("FACTOR = 2.0\n")


def _double_repository(root: Path) -> Path:
    repository = root / "model_repository"
    _write_model(repository, "double", DOUBLE_MODEL, helper=True)
    return repository


def _broken_repository(root: Path) -> Path:
    repository = _double_repository(root)
    _write_model(repository, "broken", BROKEN_MODEL)
    return repository


def _server(repository: Path, log_dir: Path, **kwargs) -> TritonServer:
    grpc_port, http_port, metrics_port = free_ports(3)
    return TritonServer(
        repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_file=log_dir / "tritonserver.log",
        startup_timeout_s=120.0,
        **kwargs,
    )


def _infer_double(grpc_url: str, values: list[float]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        x = grpcclient.InferInput("x", [1, len(values)], "FP32")
        x.set_data_from_numpy(np.array([values], dtype=np.float32))
        return client.infer("double", [x]).as_numpy("y")
    finally:
        client.close()


def _live_processes_in_group(pgid: int) -> list[int]:
    """PIDs (zombies excluded) whose process group is ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``, except the guardian that ``TritonServer`` starts beside the server."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            guardian = b"guardian.py" in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and not guardian:
            children.append(int(entry.name))
    return children


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    with _server(_double_repository(root), root) as running:
        yield running


# --------------------------------------------------------------------------------------------------
# Without a server


def test_backend_directory_holds_the_stub_of_this_interpreter(tmp_path: Path) -> None:
    backend = prepare_backend_directory(tmp_path / "backends")
    python_dir = backend / "python"
    stub = python_dir / STUB_NAME
    assert stub.is_file() and stub.stat().st_mode & stat.S_IXUSR
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected = tritonserver_root() / "python_backend_stubs" / version / STUB_NAME
    assert stub.read_bytes() == expected.read_bytes()
    assert (python_dir / "libtriton_python.so").is_file()
    assert (python_dir / "triton_python_backend_utils.py").is_file()
    # site-packages untouched
    assert not (tritonserver_root() / "backends" / "python" / STUB_NAME).exists()
    # idempotent: a second call reuses the folder as is
    mtime = stub.stat().st_mtime_ns
    assert prepare_backend_directory(tmp_path / "backends") == backend
    assert stub.stat().st_mtime_ns == mtime


def test_backend_directory_is_safe_to_prepare_concurrently(tmp_path: Path) -> None:
    target = str(tmp_path / "backends")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        # a package function: spawned children import it by name (test modules are not importable)
        results = pool.map(prepare_backend_directory, [target] * 8)
    assert {str(result) for result in results} == {target}
    assert sorted(p.name for p in Path(target).iterdir()) == ["python"]  # no temporary folders left
    assert (Path(target) / "python" / STUB_NAME).is_file()


def test_server_environment() -> None:
    env = server_environment({"PATH": "/usr/bin", "PYTHONPATH": "/somewhere", "LD_LIBRARY_PATH": "/x"})
    assert "PYTHONPATH" not in env
    assert env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/usr/bin"]
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert libs[1].endswith("nvidia_pytriton.libs")
    assert libs[-1] == "/x"


def test_cli_registers_every_command() -> None:
    """The CLI imports its command modules explicitly: each one is there, none is skipped."""
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {
        "serve",
        "export",
        "caption",
        "ask",
        "index",
        "search",
        "demo",
        "eval",
        "openai",
    }


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model-repository", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err == f"blip2-triton: error: model repository not found: {tmp_path / 'missing'}\n"


# --------------------------------------------------------------------------------------------------
# With a real tritonserver


@pytest.mark.server
def test_server_answers_grpc_infer(server: TritonServer) -> None:
    np.testing.assert_array_equal(_infer_double(server.grpc_url, [1.0, 2.5, -3.0]), [[2.0, 5.0, -6.0]])
    assert server.ready_models() == ["double"]
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        assert b"nv_inference_request_success" in response.read()


@pytest.mark.server
@pytest.mark.parametrize("taken", ["grpc_port", "http_port", "metrics_port"])
def test_taken_port_fails_without_starting(tmp_path: Path, taken: str) -> None:
    server = _server(_double_repository(tmp_path), tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", getattr(server, taken)))
        squatter.listen()
        with pytest.raises(PortInUseError) as caught:
            server.start()
    label = {"grpc_port": "gRPC", "http_port": "HTTP", "metrics_port": "metrics"}[taken]
    # the error names who holds the port: this test process
    assert str(caught.value).startswith(
        f"{label} port {getattr(server, taken)} is already in use by pid {os.getpid()} ("
    )
    assert server.pid is None


@pytest.mark.server
def test_broken_model_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    server = _server(_broken_repository(tmp_path), tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        server.start()
    error = caught.value
    assert isinstance(error, ServerProcessError)
    assert str(error) == "model 'broken' failed to load: RuntimeError: broken on purpose"
    assert error.model_name == "broken"
    assert "broken on purpose" in error.log_tail and "model.py" in error.log_tail
    assert not server.is_alive()
    assert not _pid_exists(server.pid)
    assert _live_processes_in_group(server.pid) == []


@pytest.mark.server
def test_invalid_config_fails_with_one_line_naming_the_model(tmp_path: Path) -> None:
    repository = _double_repository(tmp_path)
    _write_model(repository, "bad_config", BROKEN_MODEL)
    (repository / "bad_config" / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: x\n')
    server = _server(repository, tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        server.start()
    assert str(caught.value).startswith("model 'bad_config' failed to load: failed to read text proto from ")
    assert caught.value.model_name == "bad_config"
    assert not server.is_alive()


@pytest.mark.server
def test_startup_timeout_is_a_one_line_error(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    _write_model(repository, "slow", SLOW_MODEL)
    server = _server(repository, tmp_path)
    server.startup_timeout_s = 2.0
    started = time.monotonic()
    with pytest.raises(ServerStartupError) as caught:
        server.start()
    assert str(caught.value) == "tritonserver not ready after 2 s"
    assert "slow" in caught.value.log_tail
    assert time.monotonic() - started < 40
    assert not _pid_exists(server.pid)
    assert _live_processes_in_group(server.pid) == []


@pytest.mark.server
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(ORPHANING_PARENT)
    repository = _double_repository(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(repository), str(tmp_path / "tritonserver.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tritonserver_pid = int(parent.stdout.readline())
        assert _pid_exists(tritonserver_pid)
    finally:
        parent.kill()  # SIGKILL: no clean-up code runs in the parent
        parent.wait()
    deadline = time.monotonic() + 40
    while _live_processes_in_group(tritonserver_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_processes_in_group(tritonserver_pid) == []


@pytest.mark.server
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    server = _server(_double_repository(tmp_path), tmp_path)
    server.start()
    pid = server.pid
    assert os.getpgid(pid) == pid  # its own process group
    group = _live_processes_in_group(pid)
    assert pid in group and len(group) >= 2  # tritonserver + the Python backend stub
    server.stop()
    assert not _pid_exists(pid)
    assert _live_processes_in_group(pid) == []
    server.stop()  # idempotent


def _serve_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("blip2-triton")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "blip2_triton.cli"]
    return [*prefix, "serve", *args]


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_prints_endpoints_and_stops_on_signal(tmp_path: Path, signum: int) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    command = _serve_command(
        "--model-repository",
        str(_double_repository(tmp_path)),
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        f"--log-file={tmp_path / 'serve.log'}",
        f"--admin-key-file={tmp_path / 'admin-key'}",
        "--allow-http",
    )
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    output = []
    try:
        deadline = time.monotonic() + 120
        while not output or not output[-1].startswith("ready"):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"serve exited early: {process.wait()} {process.stderr.read()}"
            output.append(line)
        text = "".join(output)
        assert f"127.0.0.1:{grpc_port}" in text
        assert f"127.0.0.1:{http_port}" in text
        assert f"http://127.0.0.1:{metrics_port}/metrics" in text
        assert "models   double\n" in text
        np.testing.assert_array_equal(_infer_double(f"127.0.0.1:{grpc_port}", [4.0]), [[8.0]])
        (tritonserver_pid,) = _children(process.pid)
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0
        assert "Traceback" not in process.stderr.read()
        assert not _pid_exists(tritonserver_pid)
        assert _live_processes_in_group(tritonserver_pid) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.server
def test_serve_command_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", grpc_port))
        squatter.listen()
        result = subprocess.run(
            _serve_command(
                "--model-repository",
                str(_double_repository(tmp_path)),
                f"--grpc-port={grpc_port}",
                f"--http-port={http_port}",
                f"--metrics-port={metrics_port}",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"blip2-triton: error: gRPC port {grpc_port} is already in use by pid {os.getpid()} ("
    )
    assert "Traceback" not in result.stderr


@pytest.mark.server
def test_serve_command_invalid_repository_is_a_one_line_error(tmp_path: Path) -> None:
    grpc_port, http_port, metrics_port = free_ports(3)
    result = subprocess.run(
        _serve_command(
            "--model-repository",
            str(_broken_repository(tmp_path)),
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            f"--metrics-port={metrics_port}",
            f"--log-file={tmp_path / 'serve.log'}",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "blip2-triton: error: model 'broken' failed to load: RuntimeError: broken on purpose"
    )
    assert "Traceback" not in result.stderr
