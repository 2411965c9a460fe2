"""Numbered export steps with timings, on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """Numbered steps with timings on stderr; ``quiet`` silences the steps, not the results."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.done, self.quiet, self.started = total, 0, quiet, time.monotonic()

    def step(self, message: str) -> None:
        self.done += 1
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            print(f"[{self.done}/{self.total}] {message} (+{elapsed:.1f}s)", file=sys.stderr, flush=True)

    @staticmethod
    def result(message: str) -> None:
        """A figure the export promises to show (ONNX differences, where it wrote): always printed."""
        print(message, file=sys.stderr, flush=True)
