"""A searchable image index over a blip2-triton retrieval server: ITC search, ITM re-ranking.

>>> with Blip2Client("localhost:8001") as client:
...     index = ImageIndex.build(client, "photos/", path="photos.npz")  # resumable
...     for hit in index.search("a dog on the beach", top_k=5, rerank=20):
...         print(hit.rank, hit.path, hit.itc, hit.itm)

With an :class:`~blip2_triton.client.AsyncBlip2Client` the methods that talk to the server are
awaited: ``index = await ImageIndex.build(client, ...)``, ``await index.search(...)``.

Storage: the ``[N, Q, D]`` image embeddings (L2-normalised, every value in [-1, 1]) are kept as
16-bit fixed point (``int16``, value x stored as round(x * 32767)): the same 2 bytes per value as
float16, an absolute error of at most 1.5e-5 per value (float16's is up to 2.4e-4 near 1), and
numpy turns it into float32 about ten times faster than float16, which is what chunked scoring
spends its time on. Search scores the index in chunks of ``chunk_size`` images, so memory beyond
the stored index stays at one chunk in float32 plus one score per image.

One file holds an index (``.npz``: ``embeddings``, ``paths``, ``metadata`` as JSON). While a
build runs, finished batches are appended to ``<file>.partial``; an interrupted build resumes
from it, and re-running a build skips the images already indexed.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .calls import image_embed_call
from .errors import Blip2ClientError
from .fan_out import fan_out, fan_out_async
from .images import ImageLike, image_bytes, image_bytes_async
from .steps import Blocking, Plan, is_async_client, run
from .transport import Call

__all__ = ["ImageHit", "ImageIndex", "TextHit", "image_files"]

FORMAT = 1
SCALE = 32767.0  # int16 fixed point for values in [-1, 1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PROBE_TEXT = "blip2-triton index probe: a photo of a dog on a beach"
PROBE_TOLERANCE = 1e-3
DEFAULT_CHUNK = 256
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ImageHit:
    """One search result: ``itc`` is the max-over-queries cosine, ``itm`` the ITM probability (re-ranked hits)."""

    rank: int
    index: int
    path: str
    itc: float
    itm: float | None = None


@dataclass(frozen=True)
class TextHit:
    """One text retrieval result (``index`` is the text's position in the list given)."""

    rank: int
    index: int
    text: str
    itc: float
    itm: float | None = None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, by suffix, sorted), as absolute paths."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise Blip2ClientError(f"not a folder: {root}")
    return sorted(p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def quantize(embeddings: np.ndarray) -> np.ndarray:
    """float embeddings in [-1, 1] -> int16 fixed point."""
    values = np.asarray(embeddings, dtype=np.float32)
    return np.rint(np.clip(values, -1.0, 1.0) * SCALE).astype(np.int16)


def dequantize(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(SCALE)


class ImageIndex:
    """Image embeddings (int16 fixed point ``[N, Q, D]``) and their paths, searchable by text.

    ``client`` (a :class:`~blip2_triton.client.Blip2Client` or
    :class:`~blip2_triton.client.AsyncBlip2Client`) is needed by :meth:`search`,
    :meth:`search_texts` and :meth:`add`; :meth:`search_embedding` works without a server. With the
    asyncio client, :meth:`search`, :meth:`search_texts`, :meth:`add`, :meth:`build` and
    :meth:`check_model` return awaitables of what they return with the blocking one (their logic
    is written once, as a plan of client calls: see ``steps``).
    """

    def __init__(
        self,
        embeddings: np.ndarray | None = None,
        paths: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        *,
        client: Any = None,
    ) -> None:
        paths = [str(p) for p in paths]
        if embeddings is None:
            embeddings = np.zeros((0, 0, 0), np.int16)
        if embeddings.dtype != np.int16:
            embeddings = quantize(embeddings)
        if embeddings.ndim != 3 or len(embeddings) != len(paths):
            raise ValueError(f"embeddings {embeddings.shape} do not match {len(paths)} paths")
        self._parts: list[np.ndarray] = [embeddings] if len(embeddings) else []
        self._paths = paths
        self._known = set(paths)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.client = client
        self._probe_checked_for: int | None = None

    # -- contents ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, path: object) -> bool:
        return str(path) in self._known

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    @property
    def embeddings(self) -> np.ndarray:
        """The stored int16 ``[N, Q, D]`` array (``dequantize`` it for float32)."""
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else np.zeros((0, 0, 0), np.int16)

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self._parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.embeddings.shape)  # type: ignore[return-value]

    def _append(self, embeddings: np.ndarray, paths: Sequence[str]) -> None:
        stored = embeddings if embeddings.dtype == np.int16 else quantize(embeddings)
        if self._parts and stored.shape[1:] != self._parts[0].shape[1:]:
            raise Blip2ClientError(
                f"embeddings of shape {list(stored.shape[1:])} do not fit this index "
                f"({list(self._parts[0].shape[1:])}): another model?"
            )
        self._parts.append(stored)
        self._paths.extend(str(p) for p in paths)
        self._known.update(str(p) for p in paths)

    # -- scoring ----------------------------------------------------------------------------------
    def scores(self, text_embeds: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
        """ITC scores (max over queries of the cosine) of every image: ``[N]`` for one text ``[D]``,
        ``[T, N]`` for ``[T, D]``. Chunked: one chunk of ``chunk_size`` images in float32 at a time."""
        texts = np.asarray(text_embeds, dtype=np.float32)
        single = texts.ndim == 1
        texts = np.atleast_2d(texts)
        stored = self.embeddings
        count = len(stored)
        if count and texts.shape[1] != stored.shape[2]:
            raise Blip2ClientError(
                f"text embeddings have {texts.shape[1]} values, the index {stored.shape[2]}"
            )
        out = np.empty((len(texts), count), dtype=np.float32)
        if count:
            queries, dim = stored.shape[1:]
            weights = np.ascontiguousarray((texts / np.float32(SCALE)).T)  # [D, T], scale folded in
            buffer = np.empty((min(chunk_size, count), queries, dim), dtype=np.float32)
            for start in range(0, count, chunk_size):
                part = stored[start : start + chunk_size]
                chunk = buffer[: len(part)]
                np.copyto(chunk, part)  # int16 -> float32, in place
                sims = chunk.reshape(-1, dim) @ weights  # [n * Q, T]
                out[:, start : start + len(part)] = sims.reshape(len(part), queries, -1).max(axis=1).T
        return out[0] if single else out

    def search_embedding(
        self, text_embedding: np.ndarray, top_k: int = 5, *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[ImageHit]:
        """The ``top_k`` images by ITC score for an already computed text embedding ``[D]``."""
        scores = self.scores(np.asarray(text_embedding, np.float32).reshape(-1), chunk_size=chunk_size)
        order = top_indices(scores, top_k)
        return [
            ImageHit(rank, int(i), self._paths[i], float(scores[i])) for rank, i in enumerate(order, start=1)
        ]

    def search(
        self, text: str, top_k: int = 5, rerank: int | None = None, *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[ImageHit]:
        """Images for ``text``: ITC scores over the whole index, then (``rerank=K``) the best K
        re-ranked by the ITM head (the BLIP-2 paper's protocol; re-ranking reads the image files).

        Re-ranked hits come first, by ITM probability; when ``top_k > K`` the rest follow by ITC.
        """
        client = self._require_client()
        return run(self._search(client, text, top_k, rerank, chunk_size), client)

    def _search(
        self, client: Any, text: str, top_k: int, rerank: int | None, chunk_size: int
    ) -> Plan[list[ImageHit]]:
        _check_count("top_k", top_k)
        if rerank is not None:
            _check_count("rerank", rerank)
        yield from self._check_model(client)
        (text_embedding,) = yield lambda: client.embed_texts([text], progress=False)
        hits = self.search_embedding(text_embedding, max(top_k, rerank or 0), chunk_size=chunk_size)
        if rerank:
            head, tail = hits[:rerank], hits[rerank:]
            matches = yield lambda: client.match_batch([(hit.path, text) for hit in head], progress=False)
            scored = [(itm, hit) for (itm, _), hit in zip(matches, head, strict=True)]
            scored.sort(key=lambda pair: (-pair[0], -pair[1].itc, pair[1].index))
            hits = [ImageHit(0, hit.index, hit.path, hit.itc, itm) for itm, hit in scored] + tail
        return [ImageHit(rank, h.index, h.path, h.itc, h.itm) for rank, h in enumerate(hits[:top_k], start=1)]

    def search_texts(
        self, image: ImageLike, texts: Sequence[str], top_k: int | None = None, rerank: int | None = None
    ) -> list[TextHit]:
        """Texts for ``image`` (any image, indexed or not): ITC ranking, optional ITM re-ranking."""
        client = self._require_client()
        return run(_search_texts(client, image, list(texts), top_k, rerank), client)

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        client: Any,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        path: str | os.PathLike | None = None,
        *,
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> ImageIndex:
        """Embed a folder (recursive) or a list of image files; with ``path``, resumable and saved.

        With ``path``: an existing index there (and the ``.partial`` file of an interrupted build)
        is loaded first and its images are skipped; every ``batch_size`` images are appended to the
        ``.partial`` file as they finish; at the end the index is written to ``path`` in one file.
        Images the server refuses (or that cannot be read) are skipped and listed in
        ``index.metadata["skipped"]`` (path: reason); they are tried again on the next build.
        """
        return run(cls._build(client, images, path, batch_size, progress), client)

    @classmethod
    def _build(
        cls,
        client: Any,
        images: str | os.PathLike | Iterable[str | os.PathLike],
        path: str | os.PathLike | None,
        batch_size: int,
        progress: bool | None,
    ) -> Plan[ImageIndex]:
        partial = None if path is None else Path(str(path) + PARTIAL_SUFFIX)
        index = cls(client=client)
        if path is not None and Path(path).exists():
            index = yield Blocking(lambda: cls.load(path, client=client))
        elif partial is not None and partial.exists():
            yield Blocking(lambda: index._load_partial(partial))
        if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
            index.metadata.setdefault("root", str(Path(images).expanduser().resolve()))
            files: list[str | os.PathLike] = yield Blocking(lambda: list(image_files(images)))
        elif isinstance(images, (str, os.PathLike)):
            raise Blip2ClientError(f"not a folder: {images} (pass a folder or a list of image files)")
        else:
            files = list(images)
        yield from index._add(client, files, partial, batch_size, progress)
        if path is not None:
            yield Blocking(lambda: index._finish_build(path))
        return index

    def add(
        self,
        images: Iterable[str | os.PathLike],
        *,
        partial: Path | None = None,
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> int:
        """Embed the image files not in the index yet (paths made absolute); returns how many were added."""
        client = self._require_client()
        return run(self._add(client, images, partial, batch_size, progress), client)

    def _add(
        self,
        client: Any,
        images: Iterable[str | os.PathLike],
        partial: Path | None,
        batch_size: int,
        progress: bool | None,
    ) -> Plan[int]:
        from tqdm.auto import tqdm

        _check_count("batch_size", batch_size)
        wanted: dict[str, None] = yield Blocking(
            lambda: dict.fromkeys(str(Path(p).expanduser().resolve()) for p in images)
        )
        todo = [p for p in wanted if p not in self._known]
        skipped: dict[str, str] = {}
        if todo:
            yield from self._check_model(client)
        show = len(todo) > 8 if progress is None else bool(progress)
        added = 0
        with tqdm(total=len(todo), desc="index", unit="image", disable=not show) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                results = yield functools.partial(_embed_files, client, batch)
                good = [(p, r) for p, r in zip(batch, results, strict=True) if not isinstance(r, Exception)]
                skipped.update(
                    (p, str(r)) for p, r in zip(batch, results, strict=True) if isinstance(r, Exception)
                )
                if good:
                    stored = quantize(np.stack([r for _, r in good]))
                    names = [p for p, _ in good]
                    if partial is not None:
                        yield Blocking(functools.partial(self._append_partial, partial, stored, names))
                    self._append(stored, names)
                    added += len(good)
                bar.update(len(batch))
        self.metadata["skipped"] = skipped
        return added

    def _finish_build(self, path: str | os.PathLike) -> None:
        self.save(path)
        Path(str(path) + PARTIAL_SUFFIX).unlink(missing_ok=True)

    # -- model check ------------------------------------------------------------------------------
    def check_model(self, client: Any) -> None:
        """Record (empty index) or compare the server's embedding of a fixed probe text.

        An index searched with another model than the one that built it would give meaningless
        rankings: refused with a one-line error.
        """
        return run(self._check_model(client), client)

    def _check_model(self, client: Any) -> Plan[None]:
        if self._probe_checked_for == id(client):
            return
        (probe,) = yield lambda: client.embed_texts([PROBE_TEXT], progress=False)
        known = self.metadata.get("probe_embedding")
        if known is None:
            self.metadata["probe_embedding"] = [float(v) for v in probe]
        else:
            known = np.asarray(known, np.float32)
            if known.shape != probe.shape or float(np.max(np.abs(known - probe))) > PROBE_TOLERANCE:
                raise Blip2ClientError(
                    f"this index was built with another model than the one at {client.url} "
                    "(its embedding of a probe text differs); rebuild the index"
                )
        self._probe_checked_for = id(client)

    def _require_client(self) -> Any:
        if self.client is None:
            raise Blip2ClientError("this index has no client: pass client=Blip2Client(...) to load or build")
        return self.client

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to one file (``.npz`` layout, whatever the name), atomically."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        stored = self.embeddings
        metadata = {
            **self.metadata,
            "format": FORMAT,
            "storage": "int16 fixed point, value = stored / 32767",
            "scale": SCALE,
            "count": len(self),
            "shape": list(stored.shape),
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(
                    out,
                    embeddings=stored,
                    paths=np.array(self._paths, dtype=np.str_),
                    metadata=np.array(json.dumps(metadata)),
                )
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, client: Any = None) -> ImageIndex:
        """Read an index written by :meth:`save` (no pickles are loaded)."""
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
        index = cls(embeddings if len(paths) else None, paths, metadata, client=client)
        partial = Path(str(source) + PARTIAL_SUFFIX)
        if partial.exists():
            index._load_partial(partial)
        return index

    def _append_partial(self, partial: Path, stored: np.ndarray, names: list[str]) -> None:
        new = not partial.exists()
        with partial.open("ab") as out:
            if new:
                np.save(out, np.array(json.dumps(self.metadata)), allow_pickle=False)
            np.save(out, np.array(names, dtype=np.str_), allow_pickle=False)
            np.save(out, stored, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())

    def _load_partial(self, partial: Path) -> None:
        """Append the finished batches of an interrupted build; a torn last batch is cut off."""
        good_end = 0
        with partial.open("r+b") as handle:
            try:
                header = json.loads(str(np.load(handle, allow_pickle=False)))
                good_end = handle.tell()
                while True:
                    names = np.load(handle, allow_pickle=False).tolist()
                    stored = np.load(handle, allow_pickle=False)
                    if len(names) != len(stored):
                        break
                    fresh = [i for i, n in enumerate(names) if n not in self._known]
                    if fresh:
                        self._append(stored[fresh], [names[i] for i in fresh])
                    good_end = handle.tell()
            except (EOFError, ValueError, OSError):
                pass
            handle.truncate(good_end)
        if good_end == 0:
            partial.unlink(missing_ok=True)
            return
        for key, value in header.items():
            self.metadata.setdefault(key, value)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: lower index first)."""
    count = len(scores)
    k = min(k, count)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _search_texts(
    client: Any, image: ImageLike, texts: list[str], top_k: int | None, rerank: int | None
) -> Plan[list[TextHit]]:
    if not texts:
        return []
    (image_embeds,) = yield lambda: client.embed_images([image], progress=False)
    text_embeds = yield lambda: client.embed_texts(texts, progress=False)
    itc = (image_embeds @ text_embeds.T).max(axis=0)
    order = top_indices(itc, len(texts))
    hits = [TextHit(0, int(i), texts[i], float(itc[i])) for i in order]
    if rerank:
        head, tail = hits[:rerank], hits[rerank:]
        matches = yield lambda: client.match_batch([(image, hit.text) for hit in head], progress=False)
        head = [TextHit(0, h.index, h.text, h.itc, itm) for (itm, _), h in zip(matches, head, strict=True)]
        head.sort(key=lambda h: (-(h.itm or 0.0), -h.itc, h.index))
        hits = head + tail
    limit = len(hits) if top_k is None else top_k
    return [TextHit(rank, h.index, h.text, h.itc, h.itm) for rank, h in enumerate(hits[:limit], start=1)]


def _embed_files(client: Any, paths: list[str]) -> list | Awaitable[list]:
    """The image embedding of each file, or the error of a file that is refused or cannot be read."""
    protocol = client.protocol
    options = {"max_concurrency": client.max_concurrency, "progress": False, "keep_refused": True}
    if is_async_client(client):

        async def read_and_make(path: str) -> Call[np.ndarray]:
            return image_embed_call(protocol, await image_bytes_async(path))

        return fan_out_async(client.transport, paths, read_and_make, **options)
    return fan_out(
        client.transport, paths, lambda path: image_embed_call(protocol, image_bytes(path)), **options
    )
