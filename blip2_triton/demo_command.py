"""The ``blip2-triton demo`` subcommand (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="export, serve, caption and ask, stop (tiny checkpoint by default)"
    )
    parser.add_argument("--model", help="hub id or local checkpoint folder (default: build a tiny one)")
    parser.add_argument("--work-dir", default=".work/demo", type=Path)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .demo import main

    argv = ["--work-dir", str(args.work_dir), "--dtype", args.dtype, "--device", args.device]
    return main(argv + (["--model", args.model] if args.model else []))
