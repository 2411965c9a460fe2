"""The server options of the client commands (``caption``, ``ask``, ``index build``, ``search``), in one place."""

from __future__ import annotations

import argparse

from .errors import Blip2ClientError
from .options import DEFAULT_PORTS
from .sync_client import Blip2Client

__all__ = ["client_from_args", "server_options"]

DEFAULT_CONCURRENCY = 16


def server_options(*, model: str | None = None, concurrency: bool = False) -> argparse.ArgumentParser:
    """A parent parser with the "server" group: ``--url``, ``--protocol``, ``--timeout``;
    ``--model`` (default ``model``) when given, ``--concurrency`` when asked for."""
    parent = argparse.ArgumentParser(add_help=False)
    server = parent.add_argument_group("server")
    server.add_argument(
        "--url",
        default=None,
        help=f"host:port of the server (default localhost:{DEFAULT_PORTS['grpc']} for grpc, "
        f"localhost:{DEFAULT_PORTS['http']} for http)",
    )
    server.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    if model is not None:
        server.add_argument("--model", default=model, help=f"model name (default {model})")
    server.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="per-request timeout (default 60)"
    )
    if concurrency:
        server.add_argument(
            "--concurrency",
            type=int,
            default=DEFAULT_CONCURRENCY,
            metavar="N",
            help=f"requests in flight at most (default {DEFAULT_CONCURRENCY})",
        )
    return parent


def client_from_args(args: argparse.Namespace, model_name: str | None = None) -> Blip2Client:
    """The client the server options ask for (``model_name`` instead of ``--model`` when given);
    a bad option is a one-line Blip2ClientError."""
    try:
        return Blip2Client(
            args.url,
            protocol=args.protocol,
            model_name=model_name or args.model,
            inference_timeout_s=args.timeout,
            max_concurrency=getattr(args, "concurrency", DEFAULT_CONCURRENCY),
        )
    except ValueError as exc:
        raise Blip2ClientError(str(exc)) from None
