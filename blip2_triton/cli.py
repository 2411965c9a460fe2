"""The ``blip2-triton`` command line: one argparse parser, subcommands registered per module.

Each module in ``_COMMAND_MODULES`` exposes ``add_parser(subparsers)``, which adds its subparser
and sets ``func`` (``args -> int`` exit code) and, optionally, ``expected_errors`` (exception types
printed as ``blip2-triton: error: <one line>`` instead of a traceback). A module that does not
exist yet is skipped; any other import error propagates.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from blip2_triton import __version__

PROG = "blip2-triton"

_COMMAND_MODULES = (
    "blip2_triton.serve_command",
    "blip2_triton.export.command",
    "blip2_triton.client.command",
    "blip2_triton.client.index_command",
    "blip2_triton.demo_command",
)


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _import_command_module(name: str):
    """The module, or None when it (or a parent package) does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        parts = name.split(".")
        if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog=PROG, description="Serve BLIP-2 on NVIDIA Triton Inference Server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = _import_command_module(name)
        if module is not None:
            module.add_parser(subparsers)
    return parser


def error(message: object) -> None:
    """Print ``blip2-triton: error: <message on one line>`` to stderr."""
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blip2-triton`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    expected = (CommandError, *getattr(args, "expected_errors", ()))
    try:
        return int(func(args) or 0)
    except expected as exc:
        error(exc)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
