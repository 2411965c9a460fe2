"""A helper process that cleans up after tritonserver when the process that started it dies.

``PR_SET_PDEATHSIG`` kills tritonserver with its parent, however the parent dies, but not its
Python-backend stubs (a stub notices a dead parent only once the parent has been reaped, and one
busy in its own thread was seen running 20 s later, another 7 minutes), and nobody removes their
``/dev/shm`` regions (tritonserver does that when it stops a stub; a killed one cannot). So
``TritonServer`` starts this script beside tritonserver, in a session of its own (a SIGKILL of the
parent's process group does not reach it), and tells it over a pipe what to clean: the process
groups of the servers it runs and the regions their stubs use, one JSON line per change. When the
pipe reaches end-of-file (the parent exited, however), the guardian SIGKILLs every tritonserver and
stub process still in those groups (by PID, nothing else), unlinks those regions and exits. A parent
that stopped its server itself sends an empty state first, so the guardian then has nothing to do.

Standard library only, run as a script (``python -I guardian.py``): it must not depend on the
package importing cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PROC = Path("/proc")
_SHM = Path("/dev/shm")
_REGION_PREFIX = "triton_python_backend_shm_region_"
_OURS = ("tritonserver", "triton_python_backend_stub")


def _members(pgid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live tritonserver and stub processes in process group ``pgid``."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] in ("Z", "X"):
                continue
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError, ValueError):
            continue
        if argv and argv[0].endswith(_OURS):
            found.append((int(entry.name), argv))
    return found


def _valid_region(name: str) -> bool:
    return name.startswith(_REGION_PREFIX) and "/" not in name


def cleanup(pgids: list[int], regions: list[str], wait_s: float = 5.0) -> tuple[int, int]:
    """Kill our processes in ``pgids``, unlink ``regions`` (and those of the stubs found); counts."""
    ours = {r for r in regions if _valid_region(r)}
    killed = []
    for pgid in pgids:
        for pid, argv in _members(pgid):
            ours.update(a for a in argv[2:3] if _valid_region(a))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_members(pgid) for pgid in pgids):
        time.sleep(0.02)
    removed = 0
    for region in sorted(ours):
        with contextlib.suppress(OSError):
            (_SHM / region).unlink()
            removed += 1
    return len(killed), removed


def main() -> int:
    """Read states from stdin until end-of-file, then clean up after the last one."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    state: dict = {"pgids": [], "regions": []}
    for line in sys.stdin:
        with contextlib.suppress(ValueError):
            state = json.loads(line)
    pgids = [int(p) for p in state.get("pgids", [])]
    if not pgids and not state.get("regions"):
        return 0
    killed, removed = cleanup(pgids, [str(r) for r in state.get("regions", [])])
    with contextlib.suppress(OSError):
        print(
            f"blip2-triton guardian: parent gone; killed {killed} tritonserver/stub processes, "
            f"removed {removed} /dev/shm regions",
            file=sys.stderr,
            flush=True,
        )
    return 0


class Guardian:
    """The parent's handle on a running guardian process (one per ``TritonServer``)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._last = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # out of reach of a kill of the parent's process group
            close_fds=True,
        )

    def update(self, pgids: list[int], regions: list[str]) -> None:
        """Tell the guardian what to clean if this process dies now (sent only when it changed)."""
        line = json.dumps({"pgids": sorted(set(pgids)), "regions": sorted(set(regions))}) + "\n"
        if line == self._last or self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.write(line.encode())
            self._process.stdin.flush()
            self._last = line
        except OSError:  # the guardian died: nothing to update
            pass

    def close(self) -> None:
        """Nothing left to clean: tell the guardian, let it exit, reap it."""
        if self._process is None:
            return
        self.update([], [])
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        self._last = ""


if __name__ == "__main__":
    sys.exit(main())
