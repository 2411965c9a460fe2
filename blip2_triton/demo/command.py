"""The ``blip2-triton demo`` subcommand (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

from .run import add_arguments, run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        "demo", help="export, serve, caption and ask, stop (tiny checkpoint by default)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
