"""The image index on disk: int16 fixed-point values, the ``.npz`` file, the journal of a build.

Values: L2-normalised embeddings (every value in [-1, 1]) are stored as 16-bit fixed point
(``int16``, value x stored as round(x * 32767)): the same 2 bytes per value as float16, an
absolute error of at most 1.5e-5 per value (float16's is up to 2.4e-4 near 1), and numpy turns it
into float32 about ten times faster than float16.

File: one ``.npz`` holds an index (``embeddings`` ``[N, Q, D]`` int16, ``paths``, ``metadata`` as
JSON), written atomically; no pickles are written or read.

Journal: while a build runs, each finished batch is appended to ``<file>.partial``: the metadata
(JSON, once, first), then per batch its paths and its int16 embeddings, each one ``np.save``
record, fsynced. An interrupted build replays it; a torn last batch is cut off.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Blip2ClientError

__all__ = [
    "FORMAT",
    "PARTIAL_SUFFIX",
    "SCALE",
    "append_journal",
    "dequantize",
    "journal_path",
    "quantize",
    "read_index",
    "replay_journal",
    "write_index",
]

FORMAT = 1
SCALE = 32767.0  # int16 fixed point for values in [-1, 1]
PARTIAL_SUFFIX = ".partial"


def quantize(embeddings: np.ndarray) -> np.ndarray:
    """float embeddings in [-1, 1] -> int16 fixed point."""
    values = np.asarray(embeddings, dtype=np.float32)
    return np.rint(np.clip(values, -1.0, 1.0) * SCALE).astype(np.int16)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """int16 fixed point -> float32 values in [-1, 1]."""
    return stored.astype(np.float32) / np.float32(SCALE)


def journal_path(path: str | os.PathLike) -> Path:
    """The journal of a build that writes ``path``: ``<path>.partial``."""
    return Path(str(path) + PARTIAL_SUFFIX)


def write_index(
    path: str | os.PathLike, embeddings: np.ndarray, paths: Sequence[str], metadata: dict[str, Any]
) -> Path:
    """Write one index file (``.npz`` layout, whatever the name) atomically; returns its path.

    ``metadata`` is stored with the format's own keys added (format, storage, scale, count, shape,
    the time saved).
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    stored_metadata = {
        **metadata,
        "format": FORMAT,
        "storage": "int16 fixed point, value = stored / 32767",
        "scale": SCALE,
        "count": len(paths),
        "shape": list(embeddings.shape),
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(
                out,
                embeddings=embeddings,
                paths=np.array(list(paths), dtype=np.str_),
                metadata=np.array(json.dumps(stored_metadata)),
            )
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_index(path: str | os.PathLike) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """The int16 embeddings, paths and metadata of a file written by :func:`write_index`.

    A missing file, another kind of file or another format version raises a one-line
    :class:`Blip2ClientError`.
    """
    source = Path(path).expanduser()
    try:
        with np.load(source, allow_pickle=False) as data:
            embeddings, paths = data["embeddings"], data["paths"].tolist()
            metadata = json.loads(str(data["metadata"]))
    except FileNotFoundError:
        raise Blip2ClientError(f"index file not found: {source}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise Blip2ClientError(f"{source} is not an image index: {exc}") from None
    if metadata.get("format") != FORMAT or embeddings.dtype != np.int16:
        raise Blip2ClientError(f"{source}: unsupported index format {metadata.get('format')!r}")
    return embeddings, paths, metadata


def append_journal(journal: Path, metadata: dict[str, Any], stored: np.ndarray, names: Sequence[str]) -> None:
    """Append one finished batch (int16 ``stored``, its ``names``) to the journal, fsynced.

    ``metadata`` is written first when the journal is new, and ignored otherwise.
    """
    new = not journal.exists()
    with journal.open("ab") as out:
        if new:
            np.save(out, np.array(json.dumps(metadata)), allow_pickle=False)
        np.save(out, np.array(list(names), dtype=np.str_), allow_pickle=False)
        np.save(out, stored, allow_pickle=False)
        out.flush()
        os.fsync(out.fileno())


def replay_journal(
    journal: Path, add_batch: Callable[[list[str], np.ndarray], None]
) -> dict[str, Any] | None:
    """Call ``add_batch(names, stored)`` for each complete batch of the journal, in order.

    A torn or unreadable tail is cut off the file. Returns the journal's metadata; ``None`` when
    not even that could be read (the file is then removed).
    """
    good_end = 0
    with journal.open("r+b") as handle:
        try:
            metadata = json.loads(str(np.load(handle, allow_pickle=False)))
            good_end = handle.tell()
            while True:
                names = np.load(handle, allow_pickle=False).tolist()
                stored = np.load(handle, allow_pickle=False)
                if len(names) != len(stored):
                    break
                add_batch(names, stored)
                good_end = handle.tell()
        except (EOFError, ValueError, OSError):
            pass
        handle.truncate(good_end)
    if good_end == 0:
        journal.unlink(missing_ok=True)
        return None
    return metadata
