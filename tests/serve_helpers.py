"""Running ``blip2-triton serve`` as a subprocess, as an operator would, for the reliability tests."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blip2_triton.server import free_ports

DOUBLE_CONFIG = """\
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

DOUBLE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 2).astype(np.float32))]))
        return responses
"""


def double_repository(root: Path) -> Path:
    """A repository with one tiny Python model, ``double`` (y = 2x)."""
    repository = root / "model_repository"
    version = repository / "double" / "1"
    version.mkdir(parents=True)
    (repository / "double" / "config.pbtxt").write_text(DOUBLE_CONFIG)
    (version / "model.py").write_text(DOUBLE_MODEL)
    return repository


def infer_double(grpc_url: str, values: list[float]) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        x = grpcclient.InferInput("x", [1, len(values)], "FP32")
        x.set_data_from_numpy(np.array([values], dtype=np.float32))
        return client.infer("double", [x], client_timeout=60).as_numpy("y")
    finally:
        client.close()


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def serve_command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("blip2-triton")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "blip2_triton.cli"]
    return [*prefix, "serve", *args]


def _pump(stream, into: queue.Queue, times: list | None = None) -> None:
    for line in stream:
        if times is not None:
            times.append((time.monotonic(), line))
        into.put(line)
    into.put(None)


@dataclass
class ServeProcess:
    """A running ``blip2-triton serve``; ``output`` holds its stdout lines so far."""

    process: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    log_file: Path
    output: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    # (monotonic time it was read, line) for every stderr line so far
    stderr_times: list[tuple[float, str]] = field(default_factory=list)
    _lines: queue.Queue = field(default_factory=queue.Queue)
    _errors: queue.Queue = field(default_factory=queue.Queue)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_ready(self, timeout_s: float = 300.0) -> str:
        deadline = time.monotonic() + timeout_s
        while not self.output or not self.output[-1].startswith("ready"):
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"serve exited early ({self.process.wait()}): {self.stderr_text()}")
            self.output.append(line)
        return "".join(self.output)

    def stderr_text(self) -> str:
        while not self._errors.empty():
            line = self._errors.get()
            if line is not None:
                self.stderr.append(line)
        return "".join(self.stderr)

    def stderr_since(self, since: float) -> str:
        """The stderr lines read at or after ``since`` (a shared serve logged earlier events too)."""
        self.stderr_text()
        return "".join(line for read_at, line in list(self.stderr_times) if read_at >= since)

    def tritonserver_pid(self) -> int:
        """PID of serve's tritonserver (serve's other child is its guardian)."""
        from blip2_triton.server.process_table import children

        (pid,) = [pid for pid in children(self.process.pid) if _command(pid).endswith("tritonserver")]
        return pid

    def wait_stderr(self, text: str, timeout_s: float, after: float = 0.0) -> float:
        """Wait until a stderr line read after ``after`` contains ``text``; the time it was read."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for read_at, line in list(self.stderr_times):
                if read_at >= after and text in line:
                    return read_at
            if self.process.poll() is not None and not any(text in line for _, line in self.stderr_times):
                break
            time.sleep(0.05)
        raise AssertionError(f"serve never said {text!r}: {self.stderr_text()[-3000:]}")

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_serve(
    repository: Path,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> ServeProcess:
    """Start ``blip2-triton serve`` on free ports (it is not ready yet: call ``wait_ready``).

    ``new_session``: serve leads a process group of its own (which a test may then SIGKILL whole).
    """
    grpc_port, http_port, metrics_port = free_ports(3)
    log_file = log_dir / "serve-tritonserver.log"
    command = serve_command(
        "--model-repository",
        str(repository),
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        f"--log-file={log_file}",
        *args,
    )
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )
    served = ServeProcess(process, grpc_port, http_port, metrics_port, log_file)
    threading.Thread(target=_pump, args=(process.stdout, served._lines), daemon=True).start()
    threading.Thread(
        target=_pump, args=(process.stderr, served._errors, served.stderr_times), daemon=True
    ).start()
    return served
