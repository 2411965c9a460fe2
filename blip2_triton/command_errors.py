"""What every ``blip2-triton`` subcommand shares: the expected-failure error and its one-line print."""

from __future__ import annotations

import sys

PROG = "blip2-triton"


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit status ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def print_error(message: object) -> None:
    """Print ``blip2-triton: error: <message on one line>`` to stderr."""
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
