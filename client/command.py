"""``blip2-triton caption`` and ``blip2-triton ask``: the client SDK on the command line.

Registered on the shared parser by ``blip2_triton.cli`` through :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from blip2_triton.runtime.contract import GENERATION_INPUTS, PUBLIC_MODEL, TensorSpec

from .cli_options import client_from_args, server_options
from .errors import Blip2ClientError, InvalidImageError
from .settings import GenerationSettings

# Flags spelled otherwise before they were derived from the contract: kept as aliases.
_FLAG_ALIASES: dict[str, tuple[str, ...]] = {"random_seed": ("--seed",)}
_PYTHON_TYPES: dict[str, type] = {"TYPE_INT32": int, "TYPE_UINT64": int, "TYPE_FP32": float}


def _common_options() -> argparse.ArgumentParser:
    parent = server_options(model=PUBLIC_MODEL)
    generation = parent.add_argument_group("generation (left out: the server's default)")
    for spec in GENERATION_INPUTS:
        _add_setting(generation, spec)
    parent.add_argument("--json", action="store_true", help="print one JSON object per line")
    return parent


def _add_setting(group: argparse._ArgumentGroup, spec: TensorSpec) -> None:
    """``--name-with-dashes`` for the setting tensor ``spec``: its type, its doc as help."""
    kind = _PYTHON_TYPES[spec.triton_type]
    flags = ("--" + spec.name.replace("_", "-"), *_FLAG_ALIASES.get(spec.name, ()))
    group.add_argument(
        *flags, dest=spec.name, type=kind, default=None, metavar="N" if kind is int else "X", help=spec.doc
    )


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
    caption.add_argument(
        "--stream", action="store_true", help="print the text as it is generated (one image; gRPC)"
    )
    caption.set_defaults(func=run_caption, expected_errors=(Blip2ClientError,))

    ask = subparsers.add_parser(
        "ask",
        parents=[parent],
        help="ask a question about an image",
        description="Ask a running blip2-triton server a question about an image; prints the answer.",
    )
    ask.add_argument("image", metavar="IMAGE", help="image file")
    ask.add_argument("question", metavar="QUESTION", help="the question")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is generated (gRPC)")
    ask.set_defaults(func=run_ask, expected_errors=(Blip2ClientError,))


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The generation settings given on the command line."""
    return GenerationSettings(**{spec.name: getattr(args, spec.name) for spec in GENERATION_INPUTS})


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
    if args.stream:
        if len(paths) != 1 or args.json:
            raise Blip2ClientError("--stream takes one image and prints plain text (no --json)")
        with client_from_args(args) as client:
            _print_stream(client.stream_caption(paths[0], args.prompt, settings))
        return 0
    show_progress = None if sys.stderr.isatty() else False
    with client_from_args(args) as client:
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
    if args.stream:
        if args.json:
            raise Blip2ClientError("--stream prints plain text (no --json)")
        with client_from_args(args) as client:
            _print_stream(client.stream_ask(args.image, args.question, settings))
        return 0
    with client_from_args(args) as client:
        answer = client.ask(args.image, args.question, settings)
    if args.json:
        print(
            json.dumps({"image": args.image, "question": args.question, "answer": answer}, ensure_ascii=False)
        )
    else:
        print(answer)
    return 0


def _print_stream(pieces: Iterable[str]) -> None:
    """Print each piece as it comes (flushed), then the line end."""
    for piece in pieces:
        print(piece, end="", flush=True)
    print(flush=True)
