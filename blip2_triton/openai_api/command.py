"""``blip2-triton openai``: the OpenAI-compatible HTTP frontend in front of a running Triton.

Imports FastAPI and uvicorn only when it runs (``pip install 'blip2-triton[openai]'``), so the
other commands and ``--help`` never need them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blip2_triton.command_errors import CommandError

from .config import API_KEY_ENV, DEFAULT_MAX_BODY_BYTES, FrontendConfig, api_key_from

DEFAULT_PORT = 9000
_MIB = 1024 * 1024


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``openai``."""
    parser = subparsers.add_parser(
        "openai",
        help="serve the OpenAI API (chat completions, embeddings) in front of a blip2-triton server",
        description="An HTTP frontend speaking the OpenAI API (/v1/models, /v1/chat/completions, "
        "/v1/embeddings, /v1/score, /health, /metrics) that talks to tritonserver over gRPC. "
        "SIGTERM stops it after the requests it holds are answered.",
    )
    parser.add_argument(
        "--triton-url", required=True, metavar="HOST:PORT", help="tritonserver's gRPC endpoint"
    )
    parser.add_argument(
        "--model-repository",
        required=True,
        type=Path,
        metavar="DIR",
        help="the exported repository Triton serves (read for the model id, family and tokenizer)",
    )
    add_frontend_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", metavar="ADDRESS", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="PORT", help="default: %(default)s")
    parser.set_defaults(func=run)
    return parser


def add_frontend_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``serve --openai-port`` passes on to the frontend, shared with ``openai``."""
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"clients must send Authorization: Bearer KEY (default: ${API_KEY_ENV}; unset: off)",
    )
    parser.add_argument(
        "--allow-image-host",
        action="append",
        default=[],
        metavar="HOST",
        help="image_url may be an http(s) URL on HOST (repeat for more; default: data: URLs only)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="answered 504 past it (default: %(default)g)",
    )
    parser.add_argument(
        "--image-fetch-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="per image URL (default: %(default)g)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / _MIB,
        metavar="MIB",
        help="larger request bodies are refused 413 unread (default: %(default).0f)",
    )


def frontend_args(args: argparse.Namespace) -> list[str]:
    """The frontend flags of ``args`` as command-line arguments again (the API key is not among
    them: it goes through the environment, never a process's command line)."""
    values = [f"--allow-image-host={host}" for host in args.allow_image_host]
    values += [
        f"--request-timeout={args.request_timeout}",
        f"--image-fetch-timeout={args.image_fetch_timeout}",
    ]
    return [*values, f"--max-body-mb={args.max_body_mb}"]


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    try:
        return FrontendConfig(
            triton_url=args.triton_url,
            model_repository=args.model_repository,
            api_key=api_key_from(args.api_key),
            allowed_image_hosts=frozenset(args.allow_image_host),
            request_timeout_s=args.request_timeout,
            image_fetch_timeout_s=args.image_fetch_timeout,
            max_body_bytes=int(args.max_body_mb * _MIB),
        )
    except ValueError as exc:
        raise CommandError(str(exc), exit_code=2) from None


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    config = config_from_args(args)
    try:
        import uvicorn

        from .app import create_app
        from .served_model import NotARepositoryError, load_served_model
    except ImportError as exc:
        raise CommandError(f"the OpenAI frontend needs pip install 'blip2-triton[openai]' ({exc})") from None
    from blip2_triton.server.ports import port_in_use

    try:
        model = load_served_model(config.model_repository)
    except NotARepositoryError as exc:
        raise CommandError(str(exc)) from None
    if port_in_use(args.port):
        raise CommandError(f"port {args.port} is in use (--port)")
    app = create_app(config, model)
    auth = "on" if config.api_key else "off"
    print(
        f"openai   http://{args.host}:{args.port}/v1 (model {model.id}, {model.capability}; API key {auth})",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(config.request_timeout_s) + 5,
    )
    print("openai frontend stopped", file=sys.stderr, flush=True)
    return 0
