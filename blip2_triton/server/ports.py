"""Free and taken TCP ports, and which process holds a taken one."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_LISTEN = "0A"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free right now (for tests)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port that is free right now (for tests)."""
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any address); TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def accepts_connections(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class PortHolder:
    """A process with a socket listening on a port: its PID and command line."""

    pid: int
    command: str


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port``, from ``/proc/net/tcp`` and ``tcp6``."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _command(pid: int) -> str:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg) or "?"


def port_holders(port: int) -> list[PortHolder]:
    """The processes listening on ``port`` that this user may inspect (sorted by PID)."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    holders: list[PortHolder] = []
    if not targets:
        return holders
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) in targets:
                    holders.append(PortHolder(int(entry.name), _command(int(entry.name))))
                    break
            except OSError:
                continue
    return sorted(holders, key=lambda holder: holder.pid)


def describe_port_holders(port: int, max_chars: int = 160) -> str:
    """``"pid 12 (tritonserver --model-repository=...)"`` for each holder, or why none is named."""
    holders = port_holders(port)
    if not holders:
        return "by a process this user cannot inspect (another user's, or another network namespace's)"
    named = []
    for holder in holders[:3]:
        command = (
            holder.command if len(holder.command) <= max_chars else holder.command[: max_chars - 3] + "..."
        )
        named.append(f"pid {holder.pid} ({command})")
    more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
    return "by " + ", ".join(named) + more
