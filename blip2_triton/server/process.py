"""Run the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, as a child process.

The server is started pytriton-style: its own session, dies with its parent
(``PR_SET_PDEATHSIG``), output to a log file, readiness polled with a timeout, stopped by PID
(SIGINT, wait, then SIGKILL of its process group). Startup failures raise a ``ServerProcessError``
whose message is one line naming the cause; the end of the server log stays on ``log_tail``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .access import AdminKey
from .environment import server_environment
from .errors import ModelLoadError, PortInUseError, ServerProcessError, ServerStartupError
from .installation import STUB_NAME, prepare_backend_directory, tritonserver_root
from .log_parsing import startup_failure, tail
from .ports import free_ports, port_in_use

if TYPE_CHECKING:
    from tritonclient.grpc import InferenceServerClient

_SHM_PREFIX = "triton_python_backend_shm_region_"
MANIFEST = "manifest.json"
_PR_SET_PDEATHSIG = 1


def response_cache_args(model_repository: Path) -> list[str]:
    """``--cache-config`` for the response cache an export asked for (``response_cache_bytes`` in its
    manifest: the vision cache); none for a repository without one."""
    try:
        manifest = json.loads((model_repository / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    size = int(manifest.get("response_cache_bytes", 0) or 0)
    return [f"--cache-config=local,size={size}"] if size > 0 else []


def _die_with_parent(parent_pid: int, libc: ctypes.CDLL) -> None:
    """preexec_fn: SIGTERM the server when the thread that started it exits."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
    ``metrics_url`` is the full Prometheus URL. All models load at startup and the server is ready
    only when every model is. ``model_control="explicit"`` keeps the model-repository API (load,
    unload) usable afterwards, which stub recovery and draining need.
    The server gets SIGTERM when the thread that started it exits (``PR_SET_PDEATHSIG``).

    ``host`` is the address every endpoint binds (loopback unless told otherwise); ``allow_http``
    turns the HTTP endpoint on; ``admin_key`` puts the restricted APIs (``access.RESTRICTED_APIS``)
    behind a key (None: no restriction).
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
        host: str = "127.0.0.1",
        allow_http: bool = True,
        admin_key: AdminKey | None = None,
        model_control: str = "none",
        exit_timeout_s: int | None = None,
    ) -> None:
        if model_control not in ("none", "explicit"):
            raise ValueError(f"model_control must be 'none' or 'explicit', not {model_control!r}")
        self.host = host
        self.allow_http = allow_http
        self.admin_key = admin_key
        self.model_control = model_control
        self.exit_timeout_s = exit_timeout_s
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

    @classmethod
    def on_free_ports(cls, model_repository: str | os.PathLike[str], **options: Any) -> TritonServer:
        """A server (not started) whose gRPC, HTTP and metrics ports are free right now."""
        grpc_port, http_port, metrics_port = free_ports(3)
        return cls(
            model_repository, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, **options
        )

    # -- endpoints ---------------------------------------------------------------------------------

    @property
    def client_host(self) -> str:
        """The address a local client uses: loopback when the server binds every interface."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    @property
    def admin_grpc_headers(self) -> dict[str, str] | None:
        """Headers that open the restricted gRPC protocols (None when nothing is restricted)."""
        return self.admin_key.grpc_headers if self.admin_key is not None else None

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
        control = ["--model-control-mode=none"]
        if self.model_control == "explicit":
            control = ["--model-control-mode=explicit", "--load-model=*"]
        access = [f"--allow-http={'true' if self.allow_http else 'false'}"]
        if self.admin_key is not None:
            access += self.admin_key.server_args()
        exit_timeout = [] if self.exit_timeout_s is None else [f"--exit-timeout-secs={self.exit_timeout_s}"]
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            f"--cache-directory={root / 'caches'}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            *access,
            *control,
            "--strict-readiness=true",
            "--exit-on-error=true",
            *exit_timeout,
            f"--log-verbose={self.log_verbose}",
            *response_cache_args(self.model_repository),
            *self.extra_args,
        ]

    def _ports(self) -> dict[str, int]:
        ports = {"gRPC": self.grpc_port, "HTTP": self.http_port, "metrics": self.metrics_port}
        if not self.allow_http:
            del ports["HTTP"]
        return ports

    def _check_ports(self) -> None:
        ports = self._ports()
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ServerProcessError(f"{name} port {port} is not a valid TCP port")
            if port in seen:
                raise ServerProcessError(f"{seen[port]} and {name} ports are both {port}")
            seen[port] = name
        for name, port in ports.items():
            if port_in_use(port):
                raise PortInUseError(f"{name} port {port} is already in use")

    def start(self) -> None:
        """Start the server and wait until it (every model) is ready; raise ``ServerProcessError`` if not."""
        if self.is_alive():
            raise ServerProcessError(f"tritonserver is already running (pid {self.pid})")
        if not self.model_repository.is_dir():
            raise ServerProcessError(f"model repository not found: {self.model_repository}")
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
        """gRPC says ready (every model loaded) and the HTTP (when on) and metrics endpoints answer.

        tritonserver opens gRPC, then HTTP, then metrics: the last two are checked too, since a
        server whose HTTP or metrics port was taken meanwhile exits after gRPC said ready.
        """
        from tritonclient.utils import InferenceServerException

        urls = [f"http://{self.http_url}/v2/health/ready"] if self.allow_http else []
        try:
            if not client.is_server_ready(client_timeout=1.0):
                return False
            for url in (*urls, self.metrics_url):
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
        cause, model = startup_failure(log, returncode)
        if returncode is None:
            waited = f"tritonserver not ready after {self.startup_timeout_s:g} s"
            cause = f"{waited}: {cause}" if cause else waited
        log_tail = tail(log)
        if model is not None:
            return ModelLoadError(cause, model_name=model, log_tail=log_tail)
        return ServerStartupError(cause, log_tail=log_tail)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT the server, wait up to ``timeout_s``, then SIGKILL its process group. Idempotent.

        A server that died by itself (a crash) leaves its stubs running in its process group: they
        are killed too. The group keeps the server's PID from being reused while it has members.
        """
        process = self._process
        if process is None:
            return
        pid = process.pid
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                # WNOWAIT: leave the exited server a zombie so its PID (= process group) is not
                # reused before the group is cleaned up below.
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
                time.sleep(0.05)
        elif not _group_alive(pid):
            return
        # A hung server, or backend stubs left behind (a server stopped while loading models, or
        # one that crashed, exits without stopping them): kill the group, then remove the stubs'
        # shared-memory regions.
        regions = _stub_shm_regions(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        process.wait()
        # SIGKILL is delivered asynchronously: wait (briefly) until the group is empty.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.02)
        for region in regions:
            with contextlib.suppress(OSError):
                os.unlink(region)

    def ready_models(self) -> list[str]:
        """Names of the models that are READY, sorted."""
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            index = client.get_model_repository_index(headers=self.admin_grpc_headers)
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
