"""What ``/proc`` says about tritonserver's processes: children, Python-backend stubs, memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .installation import STUB_NAME

_PROC = Path("/proc")


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
    """A Python-backend stub: its PID, model and instance (e.g. ``blip2_llm_0_0``)."""

    pid: int
    model: str
    instance: str


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live Python-backend stubs that ``server_pid`` started.

    A stub's command line is ``<stub> <model folder>/<version>/model.py <shm region> ... <instance>
    <kind>``: the model is the folder above the version folder.
    """
    stubs = []
    for pid in children(server_pid):
        try:
            args = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args if a]
        if len(args) < 3 or not args[0].endswith(STUB_NAME) or not is_running(pid):
            continue
        model = Path(args[1]).parent.parent.name
        instance = next((a for a in args[2:] if a.startswith(model + "_")), model)
        stubs.append(StubProcess(pid, model, instance))
    return stubs
