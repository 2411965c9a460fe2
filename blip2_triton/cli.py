"""The ``blip2-triton`` command line: one argparse parser, one subcommand per command module.

Each module in ``COMMAND_MODULES`` exposes ``add_parser(subparsers)``, which adds its subparser and
sets ``func`` (``args -> int`` exit code) and, optionally, ``expected_errors`` (exception types
printed as ``blip2-triton: error: <one line>`` instead of a traceback). The modules are imported
here explicitly: a missing one is an import error, never a silently absent command. They keep
their heavy imports (torch, transformers) inside ``func`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from blip2_triton import __version__
from blip2_triton.client import command as client_command
from blip2_triton.client import index_command
from blip2_triton.command_errors import PROG, CommandError, print_error
from blip2_triton.demo import command as demo_command
from blip2_triton.export import command as export_command
from blip2_triton.openai_api import command as openai_command
from blip2_triton.scenes import eval_command
from blip2_triton.server import serve_command

COMMAND_MODULES = (
    serve_command,
    export_command,
    client_command,
    index_command,
    demo_command,
    eval_command,
    openai_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(prog=PROG, description="Serve BLIP-2 on NVIDIA Triton Inference Server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


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
        print_error(exc)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
