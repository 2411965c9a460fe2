"""Run the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, as a child process.

The server is started pytriton-style: its own session, dies with its parent
(``PR_SET_PDEATHSIG``), output to a log file, readiness polled with a timeout, stopped by PID
(SIGINT, wait, then SIGKILL of its process group). Startup failures raise a ``ServerError``
whose message is one line naming the cause; the end of the server log stays on ``log_tail``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import InferenceServerClient

STUB_NAME = "triton_python_backend_stub"
_MARKER = ".blip2-triton-source"
_SHM_PREFIX = "triton_python_backend_shm_region_"
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 60
_MAX_MESSAGE_CHARS = 400


class ServerError(Exception):
    """Base class of every error this module raises. ``log_tail``: end of the server log, if any."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(_one_line(message))
        self.log_tail = log_tail


class TritonNotInstalledError(ServerError):
    """The ``nvidia-pytriton`` package (which ships tritonserver) is not installed."""


class PortInUseError(ServerError):
    """A port the server needs is taken; nothing was started."""


class ServerStartupError(ServerError):
    """tritonserver exited or did not become ready in time."""


class ModelLoadError(ServerStartupError):
    """A model of the repository failed to load. ``model_name`` names it."""

    def __init__(self, message: str, *, model_name: str, log_tail: str = "") -> None:
        super().__init__(message, log_tail=log_tail)
        self.model_name = model_name


# --------------------------------------------------------------------------------------------------
# Locating the installed server


def tritonserver_root() -> Path:
    """The ``pytriton/tritonserver`` folder of the installed ``nvidia-pytriton`` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "tritonserver not found: install nvidia-pytriton==0.7.0 (pip install 'blip2-triton[server]')"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonNotInstalledError(f"tritonserver not found in {root}: reinstall nvidia-pytriton==0.7.0")
    return root


def tritonserver_binary() -> Path:
    """Path of the ``tritonserver`` executable."""
    return tritonserver_root() / "bin" / "tritonserver"


def _site_packages() -> Path:
    return tritonserver_root().parent.parent


def _stub_source() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tritonserver_root() / "python_backend_stubs" / version / STUB_NAME
    if not stub.is_file():
        raise TritonNotInstalledError(f"no Python backend stub for Python {version} in nvidia-pytriton")
    return stub


# --------------------------------------------------------------------------------------------------
# Backend directory


def _backend_key(source: Path, stub: Path) -> str:
    """Identifies the installed backend + stub: changes when the wheel or the interpreter changes."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}\n{source}\n{stub}\n".encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    stat = stub.stat()
    digest.update(f"{STUB_NAME} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _is_complete(python_dir: Path, key: str) -> bool:
    try:
        return (python_dir / _MARKER).read_text() == key and (python_dir / STUB_NAME).is_file()
    except OSError:
        return False


def default_backend_directory() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/blip2-triton/backends/<hash of the installed backend>``."""
    source = tritonserver_root() / "backends" / "python"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "blip2-triton" / "backends" / _backend_key(source, _stub_source())


def prepare_backend_directory(directory: str | os.PathLike[str] | None = None) -> Path:
    """Make a ``--backend-directory`` whose ``python/`` backend holds the stub of this interpreter.

    Copies ``pytriton/tritonserver/backends/python`` (site-packages is never edited) and the
    ``python_backend_stubs/<major.minor>/triton_python_backend_stub`` into ``directory`` (default:
    ``default_backend_directory()``). Idempotent, and safe when several processes do it at once: the
    folder is built under a temporary name and renamed into place.
    """
    source = tritonserver_root() / "backends" / "python"
    stub = _stub_source()
    key = _backend_key(source, stub)
    backend_dir = Path(directory) if directory is not None else default_backend_directory()
    target = backend_dir / "python"
    if _is_complete(target, key):
        return backend_dir
    backend_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".python-", dir=backend_dir))
    try:
        staged = scratch / "python"
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staged / STUB_NAME)
        (staged / STUB_NAME).chmod(0o755)
        (staged / _MARKER).write_text(key)
        if target.exists() and not _is_complete(target, key):
            # Built from another wheel or interpreter: move it aside (another process may race us).
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, scratch / "stale")
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_complete(target, key):
                raise ServerError(f"cannot prepare the backend directory {backend_dir}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return backend_dir


# --------------------------------------------------------------------------------------------------
# Environment


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver (and perf_analyzer) so the Python backend runs this interpreter.

    PATH starts with the folder of ``sys.executable`` (the stub finds site-packages through the
    ``python3`` on PATH); LD_LIBRARY_PATH starts with the base interpreter's LIBDIR (the stub embeds
    whichever libpython the linker finds first), ``nvidia_pytriton.libs`` and, when installed,
    ``nvidia/cuda_runtime/lib`` (perf_analyzer). PYTHONPATH is dropped: the backend ignores it.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    site = _site_packages()
    libs = [sysconfig.get_config_var("LIBDIR"), site / "nvidia_pytriton.libs"]
    cuda_runtime = site / "nvidia" / "cuda_runtime" / "lib"
    if cuda_runtime.is_dir():
        libs.append(cuda_runtime)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in libs if p)
    return env


# --------------------------------------------------------------------------------------------------
# Ports


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free right now (for tests)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port that is free right now (for tests)."""
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any address); TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Log parsing

_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]*\] ?(.*)$")
_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
_BAD_MODEL_DIR = re.compile(r"Poll failed for model directory '([^']+)': (.*)")
# Logged at error level on every machine without a GPU; not the cause of anything.
_HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM")


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[: _MAX_MESSAGE_CHARS - 3] + "..."


def _glog_message(raw: str) -> str:
    """The message of a glog line with Triton's quoting undone, cut at its first line break."""
    if raw.startswith('"'):
        raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
        raw = raw.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
    return raw.strip().split("\n", 1)[0].strip()


def _startup_failure(log: str, returncode: int | None) -> tuple[str, str | None]:
    """(one-line cause, failing model or None) from the log of a server that is not ready.

    In order: the first model that failed to load, the first other error line, the server's
    final ``error: ...`` line, the exit code; "" when nothing explains it (still starting).
    """
    first_error = None
    final_error = None
    for line in log.splitlines():
        if line.startswith("error: "):
            final_error = final_error or line.removeprefix("error: ").strip()
            continue
        match = _GLOG.match(line)
        if not match or match.group(1) not in "EF":
            continue
        message = _glog_message(match.group(2))
        failed = _FAILED_LOAD.search(message) or _BAD_MODEL_DIR.search(message)
        if failed:
            detail = failed.group(2).removeprefix("Internal: ").strip()
            return f"model '{failed.group(1)}' failed to load: {detail}", failed.group(1)
        if first_error is None and message and not any(h in message for h in _HARMLESS):
            first_error = message
    if first_error or final_error:
        return first_error or final_error or "", None
    if returncode is None:
        return "", None
    return f"tritonserver exited with code {returncode}", None


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# The server


def _die_with_parent(parent_pid: int, libc: ctypes.CDLL) -> None:
    """preexec_fn: SIGTERM the server when the thread that started it exits."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _stub_shm_regions(pgid: int) -> list[Path]:
    """The ``/dev/shm`` files of the Python backend stubs still running in process group ``pgid``."""
    regions = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(STUB_NAME.encode()):
            names = (a.decode(errors="replace") for a in args[1:])
            regions += [Path("/dev/shm") / n for n in names if n.startswith(_SHM_PREFIX) and "/" not in n]
    return regions


class TritonServer:
    """A ``tritonserver`` child process serving ``model_repository`` (context manager).

    ``grpc_url`` and ``http_url`` are ``host:port`` (what tritonclient's ``url=`` takes);
    ``metrics_url`` is the full Prometheus URL. All models load at startup
    (``--model-control-mode=none``) and the server is ready only when every model is.
    The server gets SIGTERM when the thread that started it exits (``PR_SET_PDEATHSIG``).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        log_file: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 300.0,
        extra_args: Sequence[str] = (),
        backend_directory: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
    ) -> None:
        self.model_repository = Path(model_repository).absolute()
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = tuple(extra_args)
        self.log_verbose = log_verbose
        self._log_file = Path(log_file).absolute() if log_file is not None else None
        self._backend_directory = backend_directory
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- endpoints ---------------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """PID of the running server (also its process group), None before ``start()``."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        """The file holding the server's stdout and stderr (set by ``start()`` when not given)."""
        return self._log_file

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """The server's output of this run so far."""
        if self._log_file is None:
            return ""
        try:
            with open(self._log_file, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    # -- lifecycle ---------------------------------------------------------------------------------

    def command(self, backend_directory: str | os.PathLike[str]) -> list[str]:
        """The tritonserver command line."""
        root = tritonserver_root()
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            f"--cache-directory={root / 'caches'}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def _check_ports(self) -> None:
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServerError(f"{name} port {port} is not a valid TCP port")
            if port in seen:
                raise ServerError(f"{seen[port]} and {name} ports are both {port}")
            seen[port] = name
        for name, port in ports.items():
            if port_in_use(port):
                raise PortInUseError(f"{name} port {port} is already in use")

    def start(self) -> None:
        """Start the server and wait until it (every model) is ready; raise ``ServerError`` if not."""
        if self.is_alive():
            raise ServerError(f"tritonserver is already running (pid {self.pid})")
        if not self.model_repository.is_dir():
            raise ServerError(f"model repository not found: {self.model_repository}")
        self._check_ports()
        backend_dir = prepare_backend_directory(self._backend_directory)
        if self._log_file is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self._log_file = Path(name)
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        parent_pid = os.getpid()
        with open(self._log_file, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(backend_dir),
                env=server_environment(),
                cwd=backend_dir,  # the stub puts '' (the cwd) first on sys.path: keep it inert
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent_pid, libc),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _endpoints_ready(self, client: InferenceServerClient) -> bool:
        """gRPC says ready (every model loaded) and the HTTP and metrics endpoints answer.

        tritonserver opens gRPC, then HTTP, then metrics: the last two are checked too, since a
        server whose HTTP or metrics port was taken meanwhile exits after gRPC said ready.
        """
        from tritonclient.utils import InferenceServerException

        try:
            if not client.is_server_ready(client_timeout=1.0):
                return False
            for url in (f"http://{self.http_url}/v2/health/ready", self.metrics_url):
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status != 200:
                        return False
        except (InferenceServerException, OSError):
            return False
        return True

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        # Short reconnect backoff: the default grows to minutes while the server is not up yet.
        channel_args = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        client = grpcclient.InferenceServerClient(self.grpc_url, channel_args=channel_args)
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._process is not None
        try:
            while True:
                if self._process.poll() is not None:
                    raise self._startup_error(self._process.returncode)
                if self._endpoints_ready(client):
                    return
                if time.monotonic() > deadline:
                    raise self._startup_error(None)
                time.sleep(0.2)
        finally:
            client.close()

    def _startup_error(self, returncode: int | None) -> ServerStartupError:
        log = self.log_text()
        cause, model = _startup_failure(log, returncode)
        if returncode is None:
            waited = f"tritonserver not ready after {self.startup_timeout_s:g} s"
            cause = f"{waited}: {cause}" if cause else waited
        tail = _tail(log)
        if model is not None:
            return ModelLoadError(cause, model_name=model, log_tail=tail)
        return ServerStartupError(cause, log_tail=tail)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT the server, wait up to ``timeout_s``, then SIGKILL its process group. Idempotent."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        pid = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # WNOWAIT: leave the exited server a zombie so its PID (= process group) is not reused
            # before the group is cleaned up below.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.05)
        # A hung server, or backend stubs left behind (a server stopped while loading models exits
        # without stopping them): kill the group, then remove the stubs' shared-memory regions.
        regions = _stub_shm_regions(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        process.wait()
        # SIGKILL is delivered asynchronously: wait (briefly) until the group is empty.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.02)
        for region in regions:
            with contextlib.suppress(OSError):
                os.unlink(region)

    def ready_models(self) -> list[str]:
        """Names of the models that are READY, sorted."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            index = client.get_model_repository_index()
        finally:
            client.close()
        return sorted({model.name for model in index.models if model.state == "READY"})

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TritonServer({str(self.model_repository)!r}, grpc_port={self.grpc_port}, pid={self.pid})"
