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
from .errors import ServerProcessError
from .process import TritonServer


class _StopRequested(Exception):
    """Raised in the main thread by the SIGINT/SIGTERM handler."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with tritonserver (foreground; Ctrl+C stops)",
        description="Start tritonserver on a model repository, wait until every model is ready, print "
        "the endpoints, and serve until SIGINT or SIGTERM.",
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
    parser.set_defaults(func=run, expected_errors=(ServerProcessError,))
    return parser


def _request_stop(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so that the clean-up below runs to the end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _StopRequested(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or until the server dies (CommandError)."""
    repository = args.model_repository
    if not repository.is_dir():
        raise CommandError(f"model repository not found: {repository}")
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
    )
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"blip2-triton: starting tritonserver on {repository.absolute()}", file=sys.stderr, flush=True)
        server.start()
        models = server.ready_models()
        print(f"gRPC     {args.host}:{server.grpc_port}")
        print(f"HTTP     {f'{args.host}:{server.http_port}' if args.allow_http else 'off (--allow-http)'}")
        print(
            f"metrics  http://{args.host}:{server.metrics_port}/metrics (internal: keep it off public networks)"
        )
        print(f"models   {', '.join(models) if models else '(none)'}")
        print(f"log      {server.log_path}")
        print(f"admin    {', '.join(RESTRICTED_APIS)} need the admin key ({admin_key.source})")
        print("ready; Ctrl+C stops the server", flush=True)
        while server.is_alive():
            time.sleep(0.5)
        server.stop()
        raise ServerProcessError(
            f"tritonserver exited unexpectedly with code {server.returncode} (log: {server.log_path})"
        )
    except _StopRequested:
        print("blip2-triton: stopping tritonserver", file=sys.stderr, flush=True)
        return 0
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
