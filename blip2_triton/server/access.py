"""Who may call what: bind address, HTTP on or off, and the admin key for Triton's restricted APIs.

Triton's restricted-protocol flags (``--grpc-restricted-protocol``, ``--http-restricted-api``) make
a group of APIs answer only requests that carry a header with the right value. We restrict the
APIs that change or expose server state (``model-repository``, ``shared-memory``, ``logging``,
``trace``); health, inference, metadata, model config and statistics stay open.

The key comes from ``BLIP2_TRITON_ADMIN_KEY``; when that is unset, a random key is generated and
written to a file only its owner can read. The key is a tritonserver argument, so local users who
can read the server's command line (``/proc/<pid>/cmdline``) can see it: run the server in its own
container or user namespace, as the images do.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import ServerProcessError

ADMIN_KEY_ENV = "BLIP2_TRITON_ADMIN_KEY"
ADMIN_HEADER = "admin-key"
# tritonserver prefixes the header of a restricted gRPC protocol with this.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-.~+/]{16,256}")


@dataclass(frozen=True)
class AdminKey:
    """The key of the restricted APIs and where it came from (for the operator, never the key)."""

    value: str
    source: str

    @property
    def grpc_headers(self) -> dict[str, str]:
        """Headers for tritonclient.grpc calls to a restricted protocol."""
        return {GRPC_HEADER_PREFIX + ADMIN_HEADER: self.value}

    @property
    def http_headers(self) -> dict[str, str]:
        """Headers for HTTP calls to a restricted API."""
        return {ADMIN_HEADER: self.value}

    def server_args(self) -> list[str]:
        """The tritonserver flags that put ``RESTRICTED_APIS`` behind this key."""
        group = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={self.value}"
        return [f"--grpc-restricted-protocol={group}", f"--http-restricted-api={group}"]

    def __repr__(self) -> str:  # never show the key itself
        return f"AdminKey(source={self.source!r})"


def check_key(value: str) -> str:
    """The key, if tritonserver can take it as a flag value; a one-line error otherwise."""
    if not _KEY_PATTERN.fullmatch(value):
        raise ServerProcessError(f"{ADMIN_KEY_ENV} must be 16 to 256 characters from A-Z a-z 0-9 _ - . ~ + /")
    return value


def default_key_file(grpc_port: int) -> Path:
    """``$XDG_RUNTIME_DIR`` (or ``~/.cache``) ``/blip2-triton/admin-key.<grpc port>``."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "blip2-triton" / f"admin-key.{grpc_port}"


def resolve_admin_key(key_file: Path, environ: dict[str, str] | None = None) -> AdminKey:
    """The key from ``BLIP2_TRITON_ADMIN_KEY``, or a new random one written to ``key_file`` (mode 0600)."""
    env = os.environ if environ is None else environ
    given = env.get(ADMIN_KEY_ENV)
    if given:
        return AdminKey(check_key(given), f"${ADMIN_KEY_ENV}")
    value = secrets.token_urlsafe(32)
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file may have had other permissions
        os.write(fd, value.encode() + b"\n")
    finally:
        os.close(fd)
    return AdminKey(value, str(key_file))
