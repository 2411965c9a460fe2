"""``blip2-triton serve``: run tritonserver on a model repository in the foreground, supervised."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from blip2_triton.command_errors import CommandError
from blip2_triton.openai_api import child as openai_child

from .access import ADMIN_KEY_ENV, RESTRICTED_APIS, default_key_file, resolve_admin_key
from .errors import ServerProcessError
from .liveness import ProbeSettings
from .log_tee import DEFAULT_MAX_BYTES
from .passthrough import check_passthrough
from .process import TritonServer
from .supervisor import Policy, Supervisor

# The longest generation the contract allows is 512 new tokens with 8 beams, in a full batch behind
# a full queue; on a GPU with a 7B model that takes about a minute, on a CPU several. The default
# drain timeout leaves room for that; Kubernetes' terminationGracePeriodSeconds and compose's
# stop_grace_period are this plus the stop margin below.
DEFAULT_DRAIN_TIMEOUT_S = 300.0
# tritonserver's own --exit-timeout-secs, once drained: only stub shutdown is left.
_EXIT_TIMEOUT_S = 20


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model repository with tritonserver (foreground; Ctrl+C stops)",
        description="Start tritonserver on a model repository, wait until every model is ready, print "
        "the endpoints, and serve until SIGINT or SIGTERM; then drain (readiness false, new requests "
        "refused, accepted ones finish) and stop. A dead Python-backend stub's model is reloaded; a "
        "dead or stuck tritonserver (found by a real inference every --probe-interval seconds) is "
        "restarted. Exit status: 0 drained, 1 gave up, 3 drain timeout, 4 drain failed. "
        "Flags after '--' go to tritonserver as they are (tracing, --log-format, ...), except those "
        "serve manages. See docs/operations.md.",
    )
    parser.add_argument("--model-repository", required=True, type=Path, metavar="DIR")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="default: %(default)s")
    parser.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="default: %(default)s")
    parser.add_argument("--metrics-port", type=int, default=8002, metavar="PORT", help="default: %(default)s")
    parser.add_argument(
        "--log-file", type=Path, metavar="FILE", help="server log (default: a new file in the temp folder)"
    )
    parser.add_argument(
        "--log-max-mb",
        type=float,
        default=DEFAULT_MAX_BYTES / 2**20,
        metavar="MB",
        help="rotate the log file at this size, keeping one backup (default: %(default)g)",
    )
    parser.add_argument(
        "--log-stdout",
        action="store_true",
        help="also write tritonserver's log on stdout (containers: where kubectl/docker logs look)",
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
        "--http-host",
        metavar="ADDRESS",
        help="address HTTP binds, when it differs from --host (the images: 127.0.0.1, for the health check)",
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
        "(exit 3) (default: %(default)g)",
    )
    parser.add_argument(
        "--on-stub-death",
        choices=("reload", "exit"),
        default="reload",
        help="when a Python backend stub dies: reload its model (default), or exit 1 at once",
    )
    parser.add_argument(
        "--on-crash",
        choices=("restart", "exit"),
        default="restart",
        help="when tritonserver dies or is stuck: restart it (default; at most --max-restarts times "
        "within --restart-window, then exit 1), or exit 1 at once",
    )
    parser.add_argument("--max-restarts", type=int, default=3, metavar="N", help="default: %(default)s")
    parser.add_argument(
        "--restart-window", type=float, default=600.0, metavar="SECONDS", help="default: %(default)g"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between liveness probes, a tiny real inference (default: %(default)g; 0: no probe)",
    )
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long one probe may take (default: %(default)g)",
    )
    parser.add_argument(
        "--probe-failures",
        type=int,
        default=3,
        metavar="N",
        help="failed probes in a row (with no other request completing) that mean stuck (default: %(default)s)",
    )
    parser.add_argument(
        "tritonserver_flags",
        nargs="*",
        metavar="-- TRITONSERVER_FLAG",
        help="passed to tritonserver (after '--'), e.g. -- --trace-config mode=opentelemetry",
    )
    openai_child.add_serve_flags(parser)
    parser.set_defaults(func=run, expected_errors=(ServerProcessError,))
    return parser


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The supervision policy of the flags; ``CommandError`` for a value outside its range."""
    checks = [
        (args.drain_timeout > 0, "--drain-timeout must be positive"),
        (args.startup_timeout > 0, "--startup-timeout must be positive"),
        (args.max_restarts >= 0, "--max-restarts must be 0 or more"),
        (args.restart_window > 0, "--restart-window must be positive"),
        (args.probe_interval >= 0, "--probe-interval must be 0 (off) or positive"),
        (args.probe_timeout > 0, "--probe-timeout must be positive"),
        (args.probe_failures >= 1, "--probe-failures must be 1 or more"),
        (args.log_max_mb > 0, "--log-max-mb must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise CommandError(message, exit_code=2)
    return Policy(
        on_crash=args.on_crash,
        on_stub_death=args.on_stub_death,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
        reload_timeout_s=args.startup_timeout,
        drain_timeout_s=args.drain_timeout,
        probe=ProbeSettings(args.probe_interval, args.probe_timeout, args.probe_failures),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM, then drain; the exit code (``supervisor.ExitCode``)."""
    repository = args.model_repository
    if not repository.is_dir():
        raise CommandError(f"model repository not found: {repository}")
    policy = policy_from_args(args)
    tritonserver_flags = check_passthrough(args.tritonserver_flags)
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
        http_host=args.http_host,
        allow_http=args.allow_http,
        admin_key=admin_key,
        model_control="explicit",
        exit_timeout_s=_EXIT_TIMEOUT_S,
        log_max_bytes=int(args.log_max_mb * 2**20),
        echo_log=sys.stdout if args.log_stdout else None,
        extra_args=tritonserver_flags,
    )
    supervisor = Supervisor(server, policy, log=_log)
    frontend = openai_child.for_serve(args, server.grpc_port)  # None without --openai-port

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Further signals change nothing: only --drain-timeout may cut accepted work off.
        supervisor.request_stop()

    def ready() -> None:
        print(f"gRPC     {args.host}:{server.grpc_port}")
        print(
            f"HTTP     {f'{server.http_host}:{server.http_port}' if args.allow_http else 'off (--allow-http)'}"
        )
        print(
            f"metrics  http://{args.host}:{server.metrics_port}/metrics (internal: keep it off public networks)"
        )
        print(f"models   {', '.join(server.ready_models()) or '(none)'}")
        print(f"log      {server.log_path}")
        print(f"admin    {', '.join(RESTRICTED_APIS)} need the admin key ({admin_key.source})")
        if frontend is not None:
            frontend.start()
            print(f"openai   {frontend.url}/v1 (OpenAI API; stopped after the drain)")
        print("ready; Ctrl+C or SIGTERM drains and stops the server", flush=True)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _log(f"blip2-triton: starting tritonserver on {repository.absolute()}")
        return int(supervisor.run(on_ready=ready))
    finally:
        if frontend is not None:  # after the drain: until then it answers 503 for what Triton refuses
            frontend.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
