"""Keep the Python backend's shared-memory regions readable by the serving user only.

The regions carry every request's tensors (prompts in plain text). python_backend creates them
with Boost.Interprocess, which ``fchmod``s them to 0644 whatever the umask (tritonserver runs with
umask 077 all the same: its other files are private). So a thread beside the server finds, every
``interval_s``, the regions our tritonserver holds open and turns any that is not 0600 to 0600.
A region is readable by others for at most about ``interval_s`` after its creation (tritonserver
creates one per stub at model load); a process that opened one in that window keeps its mapping,
so a host shared with untrusted local users still needs the server in a user or container of its own.
"""

from __future__ import annotations

import contextlib
import os
import threading

from .process import TritonServer
from .process_table import SHM_DIR, server_regions

PRIVATE_MODE = 0o600


def make_private(server_pid: int) -> int:
    """chmod 0600 the regions ``server_pid`` holds that are not; how many were changed."""
    changed = 0
    for region in server_regions(server_pid):
        path = SHM_DIR / region
        with contextlib.suppress(OSError):
            if os.stat(path).st_mode & 0o777 != PRIVATE_MODE:
                os.chmod(path, PRIVATE_MODE)
                changed += 1
    return changed


class RegionPrivacy:
    """A daemon thread that calls ``make_private`` on ``server``'s current process every ``interval_s``."""

    def __init__(self, server: TritonServer, interval_s: float = 0.1) -> None:
        self.server = server
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shm-privacy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            pid = self.server.pid
            if pid is not None:
                make_private(pid)
