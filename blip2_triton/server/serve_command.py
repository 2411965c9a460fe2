"""``blip2-triton serve``: run tritonserver on a model repository in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from blip2_triton.command_errors import CommandError

from .access import ADMIN_KEY_ENV, RESTRICTED_APIS, default_key_file, resolve_admin_key
from .drain import drain, requests_in_flight
from .errors import ServerProcessError
from .log_parsing import one_line
from .process import TritonServer
from .stub_watchdog import StubWatchdog

# The longest generation the contract allows is 512 new tokens with 8 beams, in a full batch behind
# a full queue; on a GPU with a 7B model that takes about a minute, on a CPU several. The default
# drain timeout leaves room for that; Kubernetes' terminationGracePeriodSeconds and compose's
# stop_grace_period are this plus the stop margin below.
DEFAULT_DRAIN_TIMEOUT_S = 300.0
# tritonserver's own --exit-timeout-secs, once drained: only stub shutdown is left.
_EXIT_TIMEOUT_S = 20


class _StopRequested(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with tritonserver (foreground; Ctrl+C stops)",
        description="Start tritonserver on a model repository, wait until every model is ready, print "
        "the endpoints, and serve until SIGINT or SIGTERM; then drain (readiness false, new requests "
        "refused, accepted ones finish) and stop. A dead Python-backend stub's model is reloaded; if "
        "that fails, exit 1. See docs/operations.md.",
    )
    parser.add_argument("--model-repository", required=True, type=Path, metavar="DIR")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="default: %(default)s")
    parser.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="default: %(default)s")
    parser.add_argument("--metrics-port", type=int, default=8002, metavar="PORT", help="default: %(default)s")
    parser.add_argument(
        "--log-file", type=Path, metavar="FILE", help="server log (default: a new file in the temp folder)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long models may take to load (default: %(default)g)",
    )
    parser.add_argument("--log-verbose", type=int, default=0, metavar="N", help="tritonserver --log-verbose")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address every endpoint binds (default: %(default)s; 0.0.0.0 in containers)",
    )
    parser.add_argument(
        "--allow-http", action="store_true", help="also serve HTTP/REST on --http-port (default: gRPC only)"
    )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        metavar="FILE",
        help=f"where a generated admin key is written when ${ADMIN_KEY_ENV} is unset "
        "(default: $XDG_RUNTIME_DIR or ~/.cache, /blip2-triton/admin-key.<grpc port>)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=DEFAULT_DRAIN_TIMEOUT_S,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long accepted requests may take to finish before they are cut off "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--on-stub-death",
        choices=("reload", "exit"),
        default="reload",
        help="when a Python backend stub dies: reload its model (default), or exit non-zero at once",
    )
    parser.set_defaults(func=run, expected_errors=(ServerProcessError,))
    return parser


def _request_stop(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals: only --drain-timeout may cut accepted work off.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _StopRequested(signal.Signals(signum).name)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (drain, then exit 0) or until the server cannot serve (CommandError)."""
    repository = args.model_repository
    if not repository.is_dir():
        raise CommandError(f"model repository not found: {repository}")
    if args.drain_timeout <= 0:
        raise CommandError("--drain-timeout must be positive")
    admin_key = resolve_admin_key(args.admin_key_file or default_key_file(args.grpc_port))
    server = TritonServer(
        repository,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        startup_timeout_s=args.startup_timeout,
        log_verbose=args.log_verbose,
        host=args.host,
        allow_http=args.allow_http,
        admin_key=admin_key,
        model_control="explicit",
        exit_timeout_s=_EXIT_TIMEOUT_S,
    )
    watchdog = StubWatchdog(
        server,
        reload_timeout_s=args.startup_timeout,
        max_recoveries=0 if args.on_stub_death == "exit" else 5,
        log=_log,
    )
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _log(f"blip2-triton: starting tritonserver on {repository.absolute()}")
        server.start()
        watchdog.start()
        models = server.ready_models()
        print(f"gRPC     {args.host}:{server.grpc_port}")
        print(f"HTTP     {f'{args.host}:{server.http_port}' if args.allow_http else 'off (--allow-http)'}")
        print(
            f"metrics  http://{args.host}:{server.metrics_port}/metrics (internal: keep it off public networks)"
        )
        print(f"models   {', '.join(models) if models else '(none)'}")
        print(f"log      {server.log_path}")
        print(f"admin    {', '.join(RESTRICTED_APIS)} need the admin key ({admin_key.source})")
        print("ready; Ctrl+C or SIGTERM drains and stops the server", flush=True)
        while server.is_alive() and not watchdog.failed.is_set():
            time.sleep(0.2)
        if watchdog.failed.is_set():
            raise ServerProcessError(f"{watchdog.failure} (log: {server.log_path})")
        raise ServerProcessError(
            f"tritonserver exited unexpectedly with code {server.returncode} (log: {server.log_path})"
        )
    except _StopRequested as stop:
        watchdog.pause()
        _drain_and_stop(server, args.drain_timeout, str(stop))
        return 0
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        watchdog.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain_and_stop(server: TritonServer, timeout_s: float, signal_name: str) -> None:
    """Drain (readiness false, new requests refused, accepted ones finish), then stop tritonserver."""
    if not server.is_alive():
        return
    _log(f"blip2-triton: {signal_name}: draining, at most {timeout_s:g} s (--drain-timeout)")
    try:
        result = drain(server, timeout_s, log=_log)
    except Exception as exc:  # the server may be dying: stop it anyway
        _log(f"blip2-triton: drain failed ({one_line(str(exc))}); stopping tritonserver")
        server.stop()
        return
    if result.complete:
        _log(f"blip2-triton: drained in {result.seconds:.1f} s; stopping tritonserver")
        server.stop()
        return
    try:
        counts = requests_in_flight(server.metrics_url)
        detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
        total = sum(counts.values())
        cut = f"{total} in-flight requests ({detail})" if total else "the in-flight requests"
    except OSError:
        cut = "the in-flight requests (count unavailable)"
    unfinished = ", ".join(f"{name} {state}" for name, state in result.unfinished.items())
    server.stop()
    _log(f"blip2-triton: drain timeout ({timeout_s:g} s): cut off {cut}; still draining: {unfinished}")
