"""The ``blip2-triton export`` subcommand; its option flags come from ``ExportOptions``."""

from __future__ import annotations

import argparse

from .errors import ExportError
from .options import ExportOptions, flag_fields


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="turn a BLIP-2 checkpoint into a Triton model repository",
        description="Export a BLIP-2 checkpoint (hub id or local folder) into a self-contained Triton model repository.",
    )
    parser.add_argument(
        "--model", required=True, help="hub id (e.g. Salesforce/blip2-opt-2.7b) or local folder"
    )
    parser.add_argument(
        "--revision",
        help="hub ids: the branch, tag or commit to export (default: the default branch); "
        "manifest.json records the commit it resolved to",
    )
    parser.add_argument("--output", required=True, help="new folder for the model repository")
    for option in flag_fields():
        spec = option.metadata["flag"]
        name = "--" + option.name.replace("_", "-")
        if isinstance(option.default, bool):
            parser.add_argument(name, action="store_true", help=spec["help"])
        else:
            kind = type(option.default)
            parser.add_argument(
                name, type=kind, default=option.default, choices=spec["choices"], help=spec["help"]
            )
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=run, expected_errors=(ExportError,))


def run(args: argparse.Namespace) -> int:
    from .repository import export_repository  # torch and transformers load only when exporting

    options = ExportOptions(**{option.name: getattr(args, option.name) for option in flag_fields()})
    export_repository(args.model, args.output, options, quiet=args.quiet, revision=args.revision)
    return 0
