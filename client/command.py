"""``blip2-triton caption`` and ``blip2-triton ask``: the client SDK on the command line.

Registered on the shared parser by ``blip2_triton.cli`` through :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blip2_triton.runtime.contract import ENSEMBLE_MODEL

from .errors import Blip2ClientError, InvalidImageError
from .settings import GenerationSettings
from .sync_client import DEFAULT_PORTS, Blip2Client

# CLI option -> GenerationSettings field, with its type and help.
_GENERATION_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-tokens", "max_tokens", int, "new tokens at most (server default 30)"),
    ("--min-tokens", "min_tokens", int, "new tokens at least"),
    ("--beam-width", "beam_width", int, "beams (server default 1)"),
    ("--temperature", "temperature", float, "> 0 turns sampling on"),
    ("--top-p", "top_p", float, "nucleus sampling"),
    ("--top-k", "top_k", int, "top-k sampling"),
    ("--repetition-penalty", "repetition_penalty", float, "as in transformers"),
    ("--length-penalty", "length_penalty", float, "beam length penalty"),
    ("--no-repeat-ngram-size", "no_repeat_ngram_size", int, "as in transformers"),
    ("--seed", "random_seed", int, "random seed (same seed, same request, same text)"),
)


def _common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    server = parent.add_argument_group("server")
    server.add_argument(
        "--url",
        default=None,
        help=f"host:port of the server (default localhost:{DEFAULT_PORTS['grpc']} for grpc, "
        f"localhost:{DEFAULT_PORTS['http']} for http)",
    )
    server.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default grpc")
    server.add_argument("--model", default=ENSEMBLE_MODEL, help=f"model name (default {ENSEMBLE_MODEL})")
    server.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="per-request timeout (default 60)"
    )
    generation = parent.add_argument_group("generation (left out: the server's default)")
    for flag, dest, kind, help_text in _GENERATION_OPTIONS:
        generation.add_argument(
            flag, dest=dest, type=kind, default=None, metavar="N" if kind is int else "X", help=help_text
        )
    parent.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parent


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``caption`` and ``ask`` on the shared ``blip2-triton`` parser."""
    parent = _common_options()
    caption = subparsers.add_parser(
        "caption",
        parents=[parent],
        help="caption images with a running server",
        description="Caption images with a running blip2-triton server; prints 'path<TAB>caption' lines.",
    )
    caption.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    caption.add_argument("--prompt", default=None, help="text the caption continues (default: none)")
    caption.set_defaults(func=run_caption, expected_errors=(Blip2ClientError,))

    ask = subparsers.add_parser(
        "ask",
        parents=[parent],
        help="ask a question about an image",
        description="Ask a running blip2-triton server a question about an image; prints the answer.",
    )
    ask.add_argument("image", metavar="IMAGE", help="image file")
    ask.add_argument("question", metavar="QUESTION", help="the question")
    ask.set_defaults(func=run_ask, expected_errors=(Blip2ClientError,))


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The generation settings given on the command line."""
    return GenerationSettings(**{dest: getattr(args, dest) for _, dest, _, _ in _GENERATION_OPTIONS})


def _client(args: argparse.Namespace) -> Blip2Client:
    try:
        return Blip2Client(
            args.url, protocol=args.protocol, model_name=args.model, inference_timeout_s=args.timeout
        )
    except ValueError as exc:
        raise Blip2ClientError(str(exc)) from None


def _check_files(paths: list[str]) -> None:
    for path in paths:
        if not Path(path).is_file():
            what = "is not a file" if Path(path).exists() else "not found"
            raise InvalidImageError(f"image file {what}: {path}")


def _with_path(exc: Blip2ClientError, paths: list[str]) -> Blip2ClientError:
    if exc.index is None or not 0 <= exc.index < len(paths):
        return exc
    return type(exc)(f"{paths[exc.index]}: {exc.message}", exc.status, index=exc.index)


def run_caption(args: argparse.Namespace) -> int:
    """``blip2-triton caption``: one line per image, in the order given."""
    paths = list(args.images)
    _check_files(paths)
    settings = settings_from_args(args)
    show_progress = None if sys.stderr.isatty() else False
    with _client(args) as client:
        try:
            captions = client.caption_batch(paths, args.prompt, settings, progress=show_progress)
        except Blip2ClientError as exc:
            raise _with_path(exc, paths) from exc
    for path, text in zip(paths, captions, strict=True):
        if args.json:
            print(json.dumps({"image": path, "caption": text}, ensure_ascii=False))
        else:
            print(f"{path}\t{text}")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    """``blip2-triton ask``: the answer on one line."""
    _check_files([args.image])
    settings = settings_from_args(args)
    with _client(args) as client:
        answer = client.ask(args.image, args.question, settings)
    if args.json:
        print(
            json.dumps({"image": args.image, "question": args.question, "answer": answer}, ensure_ascii=False)
        )
    else:
        print(answer)
    return 0
