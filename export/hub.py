"""Where a checkpoint comes from: a local folder, or a hub id resolved to one commit.

A hub id (at ``--revision``: a branch, tag or commit; the default branch when none) is resolved
once, through ``huggingface_hub`` (so ``HF_ENDPOINT``, ``HF_TOKEN`` and the ``HTTPS_PROXY`` /
``NO_PROXY`` settings apply), to the commit every later ``from_pretrained`` loads and the manifest
records. When the hub cannot be reached, the commit that the local cache holds for that revision
is used; when the cache has none, the export stops with one line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError

HUB_TIMEOUT_S = 10.0
LOCAL_FOLDER_HINT = "pass a local checkpoint folder instead (--model /path/to/checkpoint, a folder written by save_pretrained)"


@dataclass(frozen=True)
class CheckpointSource:
    """A checkpoint to load: ``location`` for ``from_pretrained``, and for a hub id its commit."""

    name: str  # as the user gave it
    location: str  # the folder, or the hub id
    revision: str | None = None  # as asked for (hub ids only)
    commit: str | None = None  # the hub commit loaded (hub ids only)
    cache_only: bool = False  # the hub could not be reached: the commit comes from the local cache

    @property
    def is_folder(self) -> bool:
        return self.commit is None

    def pretrained_kwargs(self) -> dict[str, Any]:
        """What every ``from_pretrained`` of this checkpoint is given, so that all load one commit."""
        if self.is_folder:
            return {}
        return {"revision": self.commit, **({"local_files_only": True} if self.cache_only else {})}

    def identity(self) -> dict[str, Any]:
        """What ``manifest.json`` records: the revision asked for and the commit loaded (None for a folder)."""
        return {"revision": self.revision, "hub_commit": self.commit}


def resolve_source(source: str, revision: str | None = None) -> CheckpointSource:
    """The checkpoint ``source`` (a folder or a hub id) at ``revision``, resolved; ExportError if it cannot be."""
    folder = Path(source).expanduser()
    if folder.exists():
        if revision is not None:
            raise ExportError(f"--revision is for hub ids; {source} is a local folder")
        return CheckpointSource(name=source, location=str(folder))
    if source.startswith(("/", "./", "../", "~")):
        raise ExportError(f"checkpoint folder {source} does not exist")
    try:
        commit = _hub_commit(source, revision)
        _remember_revision(source, revision, commit)
        return CheckpointSource(name=source, location=source, revision=revision, commit=commit)
    except _Unreachable as exc:
        commit = _cached_commit(source, revision, str(exc))
        return CheckpointSource(
            name=source, location=source, revision=revision, commit=commit, cache_only=True
        )


class _Unreachable(Exception):
    """The hub did not answer (offline mode, no route, proxy failure, timeout, server error)."""


def _hub_commit(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    except OfflineModeIsEnabled as exc:
        raise _Unreachable("the model hub is disabled (HF_HUB_OFFLINE=1)") from exc
    except HFValidationError as exc:
        raise ExportError(f"{repo_id!r} is neither a folder nor a hub id (org/name)") from exc
    except RevisionNotFoundError as exc:
        raise ExportError(f"the hub model {repo_id!r} has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise ExportError(
            f"no model {repo_id!r} on the hub{at} (a private or gated model needs HF_TOKEN)"
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and status < 500:
            raise ExportError(f"the model hub refused {repo_id!r}{at}: {_first_line(exc)}") from exc
        raise _Unreachable(f"the model hub answered {status}") from exc
    except Exception as exc:  # httpx's connection, proxy and timeout errors
        raise _Unreachable(_unreachable_reason(exc)) from exc
    if not info.sha:
        raise ExportError(f"the model hub named no commit for {repo_id!r}{at}")
    return str(info.sha)


def _remember_revision(repo_id: str, revision: str | None, commit: str) -> None:
    """Record ``revision`` -> ``commit`` in the cache's ``refs/`` (its documented layout), as a download
    at ``revision`` would: the files are loaded at the commit, and a later export offline finds them."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    name = revision or "main"
    if name == commit:
        return
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / name
    with contextlib.suppress(OSError):  # a read-only cache: offline exports then need the commit itself
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def _cached_commit(repo_id: str, revision: str | None, reason: str) -> str:
    """The commit the local cache holds for ``revision`` of ``repo_id``; ExportError when none."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception as exc:  # LocalEntryNotFoundError, or a malformed id
        raise ExportError(f"cannot download {repo_id!r}: {reason}; {LOCAL_FOLDER_HINT}") from exc
    return Path(snapshot).name


def _unreachable_reason(exc: BaseException) -> str:
    from huggingface_hub import constants

    scheme = constants.ENDPOINT.partition(":")[0].upper()  # HTTPS_PROXY for https://, HTTP_PROXY for http://
    proxy = next(
        (os.environ[v] for v in (f"{scheme}_PROXY", f"{scheme.lower()}_proxy") if os.environ.get(v)), None
    )
    through = f" through the proxy {proxy}" if proxy else ""
    return f"the model hub ({constants.ENDPOINT}) cannot be reached{through} ({_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
