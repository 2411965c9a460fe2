"""Reading tritonserver's log (either ``--log-format``): why a server that is not ready failed."""

from __future__ import annotations

import re

from blip2_triton.runtime.errors import one_line as _one_line

_LOG_TAIL_LINES = 60
_MAX_MESSAGE_CHARS = 400

# A log line in either --log-format: "default" (glog, "E1205 23:45:26.123456 1234 file.cc:1] ...")
# or "ISO8601" ("2026-12-05T23:45:26Z E 1234 file.cc:1] ...").
_GLOG = re.compile(
    r"^(?:(?P<glog>[IWEF])\d{4} \d\d:\d\d:\d\d\.\d+|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<iso>[IWEF]))"
    r" +\d+ [^\]]*\] ?(?P<message>.*)$"
)
_FAILED_LOAD = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
_BAD_MODEL_DIR = re.compile(r"Poll failed for model directory '([^']+)': (.*)")
# Logged at error level on every machine without a GPU; not the cause of anything.
_HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM")


def one_line(text: str) -> str:
    """``text`` on one line (``runtime.errors.one_line``), cut to a readable length."""
    line = _one_line(text)
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[: _MAX_MESSAGE_CHARS - 3] + "..."


def _glog_message(raw: str) -> str:
    """The message of a glog line with Triton's quoting undone, cut at its first line break."""
    if raw.startswith('"'):
        raw = raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
        raw = raw.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
    return raw.strip().split("\n", 1)[0].strip()


def startup_failure(log: str, returncode: int | None) -> tuple[str, str | None]:
    """(one-line cause, failing model or None) from the log of a server that is not ready.

    In order: the first model that failed to load, the first other error line, the server's
    final ``error: ...`` line, the exit code; "" when nothing explains it (still starting).
    """
    first_error = None
    final_error = None
    for line in log.splitlines():
        if line.startswith("error: "):
            final_error = final_error or line.removeprefix("error: ").strip()
            continue
        match = _GLOG.match(line)
        if not match or (match["glog"] or match["iso"]) not in "EF":
            continue
        message = _glog_message(match["message"])
        failed = _FAILED_LOAD.search(message) or _BAD_MODEL_DIR.search(message)
        if failed:
            detail = failed.group(2).removeprefix("Internal: ").strip()
            return f"model '{failed.group(1)}' failed to load: {detail}", failed.group(1)
        if first_error is None and message and not any(h in message for h in _HARMLESS):
            first_error = message
    if first_error or final_error:
        return first_error or final_error or "", None
    if returncode is None:
        return "", None
    return f"tritonserver exited with code {returncode}", None


def tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])
