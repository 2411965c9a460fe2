"""tritonserver's output, line by line, into a size-capped log file and (optionally) onto a stream.

Operators read logs from the container's stdout (``kubectl logs``, ``docker logs``); serve reads
the file (why a start failed). A reader thread copies every line of the server's pipe to both. The
file is rotated by the standard library's ``RotatingFileHandler`` when it would pass ``max_bytes``:
the file and one backup (``<file>.1``), so never more than twice that on disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path
from typing import IO, TextIO

DEFAULT_MAX_BYTES = 100 * 2**20


class _Rotating(logging.handlers.RotatingFileHandler):
    """A rotating file of raw lines (no formatting, the line keeps its own line break)."""

    terminator = ""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(
            path, mode="a", maxBytes=max_bytes, backupCount=1, encoding="utf-8", errors="replace"
        )
        self.setFormatter(logging.Formatter("%(message)s"))
        self.rollovers = 0

    def doRollover(self) -> None:
        super().doRollover()
        self.rollovers += 1


class LogTee:
    """Copies ``source`` (the server's stdout) to ``path`` (capped at ``max_bytes``) and to ``echo``."""

    def __init__(
        self, source: IO[bytes], path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, echo: TextIO | None = None
    ):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = path
        self._source = source
        self._echo = echo
        self._file = _Rotating(path, max_bytes)
        self.start_offset = path.stat().st_size  # where this run's lines begin (the file is open to append)
        self._thread = threading.Thread(target=self._copy, name="tritonserver-log", daemon=True)
        self._thread.start()

    @property
    def rolled_over(self) -> bool:
        """Whether the file was rotated since this run began (its start is then in ``<file>.1``)."""
        return self._file.rollovers > 0

    def _copy(self) -> None:
        try:
            for raw in iter(self._source.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                self._file.emit(logging.makeLogRecord({"msg": line, "args": None}))
                if self._echo is not None:
                    try:
                        self._echo.write(line)
                        self._echo.flush()
                    except (OSError, ValueError):  # a closed stdout must not stop the file copy
                        self._echo = None
        finally:
            self._file.close()
            self._source.close()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the server's output ended (every line copied); False on timeout."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
