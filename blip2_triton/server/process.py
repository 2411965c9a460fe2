"""Run the real ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, as a child process.

The server is started pytriton-style: its own session, killed with its parent
(``PR_SET_PDEATHSIG`` = SIGKILL: a wedged server ignores SIGTERM), umask 077 (its shared-memory
regions are the serving user's only), output to a size-capped log file and optionally echoed on a
stream (``log_tee.py``), readiness polled with a timeout,
stopped by PID (SIGINT, wait, then SIGKILL of its process group). A guardian process
(``guardian.py``) kills the stubs and removes their ``/dev/shm`` regions if this process dies
without stopping the server. Startup failures raise a ``ServerProcessError`` whose message is one
line naming the cause; the end of the server log stays on ``log_tail``.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from .access import AdminKey
from .environment import server_environment
from .errors import ModelLoadError, PortInUseError, ServerProcessError, ServerStartupError
from .guardian import Guardian
from .installation import prepare_backend_directory, tritonserver_root
from .log_parsing import startup_failure, tail
from .log_tee import DEFAULT_MAX_BYTES, LogTee
from .ports import describe_port_holders, free_ports, port_in_use
from .process_table import SHM_DIR, group_members, group_stubs, server_regions, stub_processes

if TYPE_CHECKING:
    from tritonclient.grpc import InferenceServerClient

MANIFEST = "manifest.json"
_PR_SET_PDEATHSIG = 1
# The server's files, shared-memory regions included, are the serving user's only.
SERVER_UMASK = 0o077


def response_cache_args(model_repository: Path) -> list[str]:
    """``--cache-config`` for the response cache an export asked for (``response_cache_bytes`` in its
    manifest: the vision cache); none for a repository without one."""
    try:
        manifest = json.loads((model_repository / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    size = int(manifest.get("response_cache_bytes", 0) or 0)
    return [f"--cache-config=local,size={size}"] if size > 0 else []


# The python backend runs each Python model instance's BLS calls on a pool of its own (32 threads
# by default) and holds a thread per call until the callee's first response: the relay ``blip2``
# holds one per request it passes to the engine model, which answers once, at the end. Sized to the
# requests the engine takes (slots + wait queue), so that no request waits for a pool thread.
THREAD_POOL_MARGIN = 16
DEFAULT_THREAD_POOL = 32
ENGINE_CONFIG = Path("blip2_stream") / "config.pbtxt"


def python_backend_args(model_repository: Path, extra_args: Sequence[str] = ()) -> list[str]:
    """``--backend-config=python,thread-pool-size=N`` for a repository with the engine model (N =
    its slots + wait queue + a margin, at least the default 32); none when the operator set it."""
    if any("thread-pool-size" in arg for arg in extra_args):
        return []
    from blip2_triton.export.configs import parse_config
    from blip2_triton.export.errors import ExportError

    try:
        config = parse_config((model_repository / ENGINE_CONFIG).read_text(), source=str(ENGINE_CONFIG))
        taken = sum(
            int(config.parameters[k].string_value) for k in ("max_active_sequences", "max_queued_requests")
        )
    except (OSError, ExportError, ValueError):
        return []  # no engine model here (or not ours): Triton's default
    size = max(DEFAULT_THREAD_POOL, taken + THREAD_POOL_MARGIN)
    return [f"--backend-config=python,thread-pool-size={size}"]


def _server_preexec(parent_pid: int, libc: ctypes.CDLL) -> None:
    """preexec_fn: SIGKILL the server when the thread that started it exits; umask 077."""
    os.umask(SERVER_UMASK)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _local(host: str) -> str:
    """The address a local client uses for an endpoint bound to ``host``: loopback for every interface."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ServerStartAborted(ServerProcessError):
    """``start(abort=...)`` was told to give up before the server was ready (it is left running)."""


class TritonServer:
    """A ``tritonserver`` child process serving ``model_repository`` (context manager).

    ``grpc_url`` and ``http_url`` are ``host:port`` (what tritonclient's ``url=`` takes);
    ``metrics_url`` is the full Prometheus URL. All models load at startup and the server is ready
    only when every model is. ``model_control="explicit"`` keeps the model-repository API (load,
    unload) usable afterwards, which stub recovery and draining need.
    The server gets SIGKILL when the thread that started it exits (``PR_SET_PDEATHSIG``): start it
    from a thread that lives as long as the server should. A guardian process then kills the stubs
    and removes their shared-memory regions (``guardian.py``).

    ``host`` is the address every endpoint binds (loopback unless told otherwise), ``http_host`` the
    HTTP endpoint's when it differs (None: ``host``); ``allow_http`` turns the HTTP endpoint on; ``admin_key`` puts the restricted APIs (``access.RESTRICTED_APIS``)
    behind a key (None: no restriction). The server's output goes to ``log_file`` (rotated at
    ``log_max_bytes``, one backup) and, when ``echo_log`` is a stream, onto it too.
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
        http_host: str | None = None,
        log_max_bytes: int = DEFAULT_MAX_BYTES,
        echo_log: TextIO | None = None,
    ) -> None:
        if model_control not in ("none", "explicit"):
            raise ValueError(f"model_control must be 'none' or 'explicit', not {model_control!r}")
        self.host = host
        self.http_host = host if http_host is None else http_host
        self.log_max_bytes = log_max_bytes
        self.echo_log = echo_log
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
        self._tee: LogTee | None = None
        self._guardian = Guardian()
        # The /dev/shm regions our stubs used (from their command lines), for cleanup after a crash:
        # tritonserver removes a region when it stops the stub; a killed server cannot.
        self._regions: set[str] = set()

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
        return _local(self.host)

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{_local(self.http_host)}:{self.http_port}"

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
        """The server's output of this run so far (since the last rotation, if the file was rotated)."""
        tee = self._tee
        if self._log_file is None or tee is None:
            return ""
        if not self.is_alive():
            tee.wait(timeout_s=2.0)  # every line it wrote before exiting, copied
        try:
            with open(self._log_file, "rb") as fh:
                fh.seek(0 if tee.rolled_over else tee.start_offset)
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
            f"--http-address={self.http_host}",
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
            *python_backend_args(self.model_repository, self.extra_args),
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
                raise PortInUseError(f"{name} port {port} is already in use {describe_port_holders(port)}")

    def start(self, abort: Callable[[], bool] | None = None) -> None:
        """Start the server and wait until it (every model) is ready; raise ``ServerProcessError`` if not.

        ``abort`` is asked while waiting: when it returns True, ``ServerStartAborted`` is raised and the
        server is left running as it is (the caller drains or stops it).
        """
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
        self._guardian.start()
        self._process = subprocess.Popen(
            self.command(backend_dir),
            env=server_environment(),
            cwd=backend_dir,  # the stub puts '' (the cwd) first on sys.path: keep it inert
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _server_preexec(parent_pid, libc),
        )
        assert self._process.stdout is not None
        self._tee = LogTee(
            self._process.stdout, self._log_file, max_bytes=self.log_max_bytes, echo=self.echo_log
        )
        self._regions = set()
        self.track_stubs()
        try:
            self._wait_ready(abort)
        except ServerStartAborted:
            raise
        except BaseException:
            self.stop()
            raise
        self.track_stubs()

    def track_stubs(self) -> None:
        """Note the shared-memory regions of the running stubs, and tell the guardian (call it often)."""
        if self._process is None:
            return
        pid = self._process.pid
        if self._process.returncode is None:
            self._regions.update(stub.region for stub in stub_processes(pid, helpers=True) if stub.region)
            self._regions.update(server_regions(pid))
            self._guardian.update([pid], sorted(self._regions))

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

    def _wait_ready(self, abort: Callable[[], bool] | None = None) -> None:
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
                if abort is not None and abort():
                    raise ServerStartAborted("tritonserver start abandoned before it was ready")
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
        are killed too, and the shared-memory regions of every stub it ran are removed. The guardian
        is told there is nothing left to clean, and exits.
        """
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                # WNOWAIT: leave the exited server a zombie so its PID (= process group) is not
                # reused before the group is cleaned up below.
                if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
                time.sleep(0.05)
        self.kill()
        self._guardian.close()

    def kill(self) -> None:
        """SIGKILL the server's process group now (a crashed or wedged server), wait until it is empty,
        and remove the shared-memory regions of its stubs. The server may be started again."""
        process = self._process
        if process is None:
            return
        pid = process.pid
        self.track_stubs()
        self._regions.update(stub.region for stub in group_stubs(pid) if stub.region)
        if process.returncode is None or group_members(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        process.wait()
        # SIGKILL is delivered asynchronously: wait (briefly) until the group is empty.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.02)
        for region in self._regions:
            with contextlib.suppress(OSError):
                os.unlink(SHM_DIR / region)
        self._regions = set()
        self._guardian.update([], [])

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
