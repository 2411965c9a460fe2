"""Where the ``nvidia-pytriton`` wheel put tritonserver, and a backend directory with our stub.

The Python backend's stub must match this interpreter: ``prepare_backend_directory`` copies the
wheel's Python backend plus the stub of this Python version into a cache folder (site-packages is
never edited).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ServerProcessError, TritonNotInstalledError

STUB_NAME = "triton_python_backend_stub"
_MARKER = ".blip2-triton-source"


SERVER_ROOT_ENV = "BLIP2_TRITONSERVER_ROOT"


def installed_server_root() -> Path | None:
    """``$BLIP2_TRITONSERVER_ROOT``: a full tritonserver install (``/opt/tritonserver`` in the NGC image)."""
    given = os.environ.get(SERVER_ROOT_ENV)
    return Path(given) if given else None


def tritonserver_root() -> Path:
    """``$BLIP2_TRITONSERVER_ROOT``, else the ``pytriton/tritonserver`` folder of the ``nvidia-pytriton`` wheel."""
    installed = installed_server_root()
    if installed is not None:
        if not (installed / "bin" / "tritonserver").is_file():
            raise TritonNotInstalledError(f"{SERVER_ROOT_ENV}={installed} has no bin/tritonserver")
        return installed
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(
            "tritonserver not found: install nvidia-pytriton==0.7.0 (pip install 'blip2-triton[server]')"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TritonNotInstalledError(f"tritonserver not found in {root}: reinstall nvidia-pytriton==0.7.0")
    return root


def tritonserver_binary() -> Path:
    """Path of the ``tritonserver`` executable."""
    return tritonserver_root() / "bin" / "tritonserver"


def site_packages() -> Path:
    return tritonserver_root().parent.parent


def _stub_source() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tritonserver_root() / "python_backend_stubs" / version / STUB_NAME
    if not stub.is_file():
        raise TritonNotInstalledError(f"no Python backend stub for Python {version} in nvidia-pytriton")
    return stub


def _backend_key(source: Path, stub: Path) -> str:
    """Identifies the installed backend + stub: changes when the wheel or the interpreter changes."""
    digest = hashlib.sha256(f"{sys.version_info[:2]}\n{source}\n{stub}\n".encode())
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    stat = stub.stat()
    digest.update(f"{STUB_NAME} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _is_complete(python_dir: Path, key: str) -> bool:
    try:
        return (python_dir / _MARKER).read_text() == key and (python_dir / STUB_NAME).is_file()
    except OSError:
        return False


def default_backend_directory() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/blip2-triton/backends/<hash of the installed backend>``."""
    source = tritonserver_root() / "backends" / "python"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "blip2-triton" / "backends" / _backend_key(source, _stub_source())


def prepare_backend_directory(directory: str | os.PathLike[str] | None = None) -> Path:
    """Make a ``--backend-directory`` whose ``python/`` backend holds the stub of this interpreter.

    Copies ``pytriton/tritonserver/backends/python`` (site-packages is never edited) and the
    ``python_backend_stubs/<major.minor>/triton_python_backend_stub`` into ``directory`` (default:
    ``default_backend_directory()``). Idempotent, and safe when several processes do it at once: the
    folder is built under a temporary name and renamed into place. With ``$BLIP2_TRITONSERVER_ROOT``
    set, that install's own ``backends/`` folder is used as it is.
    """
    installed = installed_server_root()
    if installed is not None:  # a full install: its backends (and stub) are used as they are
        tritonserver_root()
        return installed / "backends"
    source = tritonserver_root() / "backends" / "python"
    stub = _stub_source()
    key = _backend_key(source, stub)
    backend_dir = Path(directory) if directory is not None else default_backend_directory()
    target = backend_dir / "python"
    if _is_complete(target, key):
        return backend_dir
    backend_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".python-", dir=backend_dir))
    try:
        staged = scratch / "python"
        shutil.copytree(source, staged, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staged / STUB_NAME)
        (staged / STUB_NAME).chmod(0o755)
        (staged / _MARKER).write_text(key)
        if target.exists() and not _is_complete(target, key):
            # Built from another wheel or interpreter: move it aside (another process may race us).
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, scratch / "stale")
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _is_complete(target, key):
                raise ServerProcessError(
                    f"cannot prepare the backend directory {backend_dir}: {exc}"
                ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return backend_dir
