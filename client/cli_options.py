"""The server options of the client commands (``caption``, ``ask``, ``index build``, ``search``), in one place."""

from __future__ import annotations

import argparse

from .errors import Blip2ClientError
from .network import parse_header
from .options import DEFAULT_PORTS
from .sync_client import Blip2Client

__all__ = ["client_from_args", "server_options"]

DEFAULT_CONCURRENCY = 16


def server_options(*, model: str | None = None, concurrency: bool = False) -> argparse.ArgumentParser:
    """A parent parser with the "server" group: ``--url``, ``--protocol``, ``--timeout``, TLS and
    ``--header``; ``--model`` (default ``model``) when given, ``--concurrency`` when asked for.
    What is not given comes from the BLIP2_TRITON_* environment (the SDK reads it)."""
    parent = argparse.ArgumentParser(add_help=False)
    server = parent.add_argument_group("server (each defaults to its BLIP2_TRITON_* variable)")
    server.add_argument(
        "--url",
        default=None,
        help=f"host:port of the server, https:// or grpcs:// in front for TLS (BLIP2_TRITON_URL; default "
        f"localhost:{DEFAULT_PORTS['grpc']} for grpc, localhost:{DEFAULT_PORTS['http']} for http)",
    )
    server.add_argument(
        "--protocol", choices=("grpc", "http"), default=None, help="BLIP2_TRITON_PROTOCOL; default grpc"
    )
    server.add_argument(
        "--tls", action="store_true", default=None, help="TLS (BLIP2_TRITON_TLS; on with any file below)"
    )
    server.add_argument("--ca-file", metavar="PEM", help="CA bundle to trust (BLIP2_TRITON_CA_FILE)")
    server.add_argument("--cert-file", metavar="PEM", help="client certificate (BLIP2_TRITON_CERT_FILE)")
    server.add_argument("--key-file", metavar="PEM", help="its private key (BLIP2_TRITON_KEY_FILE)")
    server.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="http only: TLS without checking the certificate (BLIP2_TRITON_INSECURE)",
    )
    server.add_argument(
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="sent with every call, gRPC metadata; repeat for more (BLIP2_TRITON_HEADERS, one a line)",
    )
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
        headers = None if args.header is None else dict(parse_header(h) for h in args.header)
        return Blip2Client(
            args.url,
            protocol=args.protocol,
            model_name=model_name or args.model,
            inference_timeout_s=args.timeout,
            max_concurrency=getattr(args, "concurrency", DEFAULT_CONCURRENCY),
            tls=args.tls,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            insecure=args.insecure,
            headers=headers,
        )
    except ValueError as exc:
        raise Blip2ClientError(str(exc)) from None
