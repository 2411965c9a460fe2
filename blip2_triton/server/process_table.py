"""What ``/proc`` says about tritonserver's processes: children, Python-backend stubs, memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .installation import STUB_NAME

_PROC = Path("/proc")
SHM_DIR = Path("/dev/shm")
# The Python backend's shared-memory regions: /dev/shm/triton_python_backend_shm_region_<uuid>.
SHM_PREFIX = "triton_python_backend_shm_region_"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None if gone."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def group_members(pgid: int) -> list[int]:
    """Live PIDs (zombies excluded) of process group ``pgid``."""
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return sorted(found)


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 when it is gone)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class StubProcess:
    """A Python-backend stub: its PID, model, instance (e.g. ``blip2_0_0``) and ``/dev/shm`` region.

    Besides one stub per model instance, the backend runs a short-lived helper stub while it loads a
    model (to complete its config), whose instance name is the model's own: ``is_instance`` is False.
    """

    pid: int
    model: str
    instance: str
    region: str | None = None

    @property
    def is_instance(self) -> bool:
        return self.instance != self.model

    @property
    def region_path(self) -> Path | None:
        return SHM_DIR / self.region if self.region else None


def _args(pid: int) -> list[str]:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def parse_stub(pid: int, args: list[str]) -> StubProcess | None:
    """The stub a command line describes, or None if it is not a Python-backend stub's.

    A stub's command line is ``<stub> <model folder>/<version>/model.py <shm region> <sizes> <parent
    pid> <backend folder> <ipc handle> <instance> <kind>``: the model is the folder above the version
    folder; the instance is ``<model>_<group>_<index>``, or the model's name for a helper stub.
    """
    if len(args) < 3 or not args[0].endswith(STUB_NAME):
        return None
    model = Path(args[1]).parent.parent.name
    if len(args) >= 10:
        instance = args[-2]
    else:
        instance = next((a for a in args[2:] if a.startswith(model + "_")), model)
    region = args[2] if args[2].startswith(SHM_PREFIX) and "/" not in args[2] else None
    return StubProcess(pid, model, instance, region)


def stub_processes(server_pid: int, *, helpers: bool = False) -> list[StubProcess]:
    """The live Python-backend stubs of model instances that ``server_pid`` started (with
    ``helpers``, also the short-lived helper stubs of models being loaded)."""
    stubs = []
    for pid in children(server_pid):
        stub = parse_stub(pid, _args(pid))
        if stub is not None and (helpers or stub.is_instance) and is_running(pid):
            stubs.append(stub)
    return stubs


def group_stubs(pgid: int) -> list[StubProcess]:
    """Every live stub in process group ``pgid`` (also those whose tritonserver already died)."""
    stubs = []
    for pid in group_members(pgid):
        stub = parse_stub(pid, _args(pid))
        if stub is not None:
            stubs.append(stub)
    return stubs


def server_regions(server_pid: int) -> set[str]:
    """The Python-backend regions ``server_pid`` holds open (it creates one per stub, before the stub)."""
    regions: set[str] = set()
    try:
        fds = list((_PROC / str(server_pid) / "fd").iterdir())
    except OSError:
        return regions
    prefix = str(SHM_DIR / SHM_PREFIX)
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        name = target[len(str(SHM_DIR)) + 1 :]
        if target.startswith(prefix) and "/" not in name and not name.endswith(" (deleted)"):
            regions.add(name)
    return regions


def region_mode(region: str) -> int | None:
    """Permission bits of ``/dev/shm/<region>`` (None if it is gone)."""
    try:
        return os.stat(SHM_DIR / region).st_mode & 0o777
    except OSError:
        return None
