"""The ``blip2-triton export`` subcommand."""

from __future__ import annotations

import argparse

from .errors import ExportError
from .repository import DTYPES, VISION_BACKENDS, ExportOptions, export_repository


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="turn a BLIP-2 checkpoint into a Triton model repository",
        description="Export a BLIP-2 checkpoint (hub id or local folder) into a self-contained Triton model repository.",
    )
    parser.add_argument(
        "--model", required=True, help="hub id (e.g. Salesforce/blip2-opt-2.7b) or local folder"
    )
    parser.add_argument("--output", required=True, help="new folder for the model repository")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights precision (fp32 on CPU)")
    parser.add_argument("--device", default="cpu", help="where the LLM stage runs: cpu, cuda, cuda:N")
    parser.add_argument(
        "--vision-backend",
        choices=VISION_BACKENDS,
        default="python",
        help="python: onnxruntime inside a Python-backend model (pip-installed server); "
        "onnxruntime: Triton's native onnxruntime backend (NGC container)",
    )
    parser.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching queue delay")
    parser.add_argument("--force", action="store_true", help="allow a dtype/device choice we advise against")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=run, expected_errors=(ExportError,))


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(
        max_batch_size=args.max_batch_size,
        dtype=args.dtype,
        vision_backend=args.vision_backend,
        device=args.device,
        queue_delay_us=args.queue_delay_us,
        force=args.force,
    )
    export_repository(args.model, args.output, options, quiet=args.quiet)
    return 0
