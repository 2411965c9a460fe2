"""A searchable image index over a blip2-triton retrieval server: ITC search, ITM re-ranking.

>>> with Blip2Client("localhost:8001") as client:
...     index = ImageIndex.build(client, "photos/", path="photos.npz")  # resumable
...     for hit in index.search("a dog on the beach", top_k=5, rerank=20):
...         print(hit.rank, hit.path, hit.itc, hit.itm)

With an :class:`~blip2_triton.client.AsyncBlip2Client` the methods that talk to the server are
awaited: ``index = await ImageIndex.build(client, ...)``, ``await index.search(...)``.

This module is the public face: :class:`ImageIndex` holds the embeddings and paths, and runs
building and search as plans of client calls (``steps``). The parts it stands on:
``index_storage`` (int16 storage, the ``.npz`` file, the ``.partial`` journal of a build),
``index_search`` (chunked ITC scores, top-k, ITM re-ranking, the hit types) and ``index_build``
(the image files of a folder, their embeddings from the server).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Blip2ClientError
from .images import ImageLike
from .index_build import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from .index_build import embed_files, image_files, split_batch
from .index_search import (
    DEFAULT_CHUNK,
    ImageHit,
    TextHit,
    check_count,
    image_hits,
    itc_scores,
    rerank_images,
    search_texts,
)
from .index_search import top_indices as top_indices
from .index_storage import FORMAT as FORMAT
from .index_storage import PARTIAL_SUFFIX as PARTIAL_SUFFIX
from .index_storage import SCALE as SCALE
from .index_storage import append_journal, journal_path, quantize, read_index, replay_journal, write_index
from .index_storage import dequantize as dequantize
from .steps import Blocking, Plan, run

__all__ = ["ImageHit", "ImageIndex", "TextHit", "image_files"]
# The ``name as name`` imports above keep every name this module had before it was split
# importable from here (tests and benchmarks use quantize, dequantize, top_indices, PARTIAL_SUFFIX).

PROBE_TEXT = "blip2-triton index probe: a photo of a dog on a beach"
PROBE_TOLERANCE = 1e-3


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
        """How many images the index holds."""
        return len(self._paths)

    def __contains__(self, path: object) -> bool:
        """Whether the image file ``path`` (absolute, as indexed) is in the index."""
        return str(path) in self._known

    @property
    def paths(self) -> list[str]:
        """The image paths, in index order (a copy)."""
        return list(self._paths)

    @property
    def embeddings(self) -> np.ndarray:
        """The stored int16 ``[N, Q, D]`` array (``dequantize`` it for float32)."""
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else np.zeros((0, 0, 0), np.int16)

    @property
    def nbytes(self) -> int:
        """Bytes the stored embeddings take in memory."""
        return sum(part.nbytes for part in self._parts)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, Q, D)``: images, query embeddings per image, values per embedding."""
        return tuple(self.embeddings.shape)  # type: ignore[return-value]

    def _append(self, embeddings: np.ndarray, paths: Sequence[str]) -> None:
        """Add images (float or int16 embeddings) at the end; another model's shape is refused."""
        stored = embeddings if embeddings.dtype == np.int16 else quantize(embeddings)
        if self._parts and stored.shape[1:] != self._parts[0].shape[1:]:
            raise Blip2ClientError(
                f"embeddings of shape {list(stored.shape[1:])} do not fit this index "
                f"({list(self._parts[0].shape[1:])}): another model?"
            )
        self._parts.append(stored)
        self._paths.extend(str(p) for p in paths)
        self._known.update(str(p) for p in paths)

    # -- search -----------------------------------------------------------------------------------
    def scores(self, text_embeds: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
        """ITC scores (max over queries of the cosine) of every image: ``[N]`` for one text ``[D]``,
        ``[T, N]`` for ``[T, D]``. Chunked: one chunk of ``chunk_size`` images in float32 at a time."""
        return itc_scores(self.embeddings, text_embeds, chunk_size)

    def search_embedding(
        self, text_embedding: np.ndarray, top_k: int = 5, *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[ImageHit]:
        """The ``top_k`` images by ITC score for an already computed text embedding ``[D]``."""
        scores = self.scores(np.asarray(text_embedding, np.float32).reshape(-1), chunk_size=chunk_size)
        return image_hits(scores, self._paths, top_k)

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
        check_count("top_k", top_k)
        if rerank is not None:
            check_count("rerank", rerank)
        yield from self._check_model(client)
        (text_embedding,) = yield lambda: client.embed_texts([text], progress=False)
        hits = self.search_embedding(text_embedding, max(top_k, rerank or 0), chunk_size=chunk_size)
        return (yield from rerank_images(client, text, hits, top_k, rerank))

    def search_texts(
        self, image: ImageLike, texts: Sequence[str], top_k: int | None = None, rerank: int | None = None
    ) -> list[TextHit]:
        """Texts for ``image`` (any image, indexed or not): ITC ranking, optional ITM re-ranking."""
        client = self._require_client()
        return run(search_texts(client, image, list(texts), top_k, rerank), client)

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
        partial = None if path is None else journal_path(path)
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

        check_count("batch_size", batch_size)
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
                results = yield functools.partial(embed_files, client, batch)
                names, embeddings, refused = split_batch(batch, results)
                skipped.update(refused)
                if names:
                    stored = quantize(np.stack(embeddings))
                    if partial is not None:
                        yield Blocking(functools.partial(self._append_partial, partial, stored, names))
                    self._append(stored, names)
                    added += len(names)
                bar.update(len(batch))
        self.metadata["skipped"] = skipped
        return added

    def _finish_build(self, path: str | os.PathLike) -> None:
        """Save the finished index to ``path``, then drop the build's journal."""
        self.save(path)
        journal_path(path).unlink(missing_ok=True)

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
        """The index's client; a one-line error when it has none."""
        if self.client is None:
            raise Blip2ClientError("this index has no client: pass client=Blip2Client(...) to load or build")
        return self.client

    # -- files (format: index_storage) ------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to one file (``.npz`` layout, whatever the name), atomically."""
        return write_index(path, self.embeddings, self._paths, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, *, client: Any = None) -> ImageIndex:
        """Read an index written by :meth:`save` (no pickles are loaded), and its build's journal."""
        embeddings, paths, metadata = read_index(path)
        index = cls(embeddings if len(paths) else None, paths, metadata, client=client)
        partial = journal_path(Path(path).expanduser())
        if partial.exists():
            index._load_partial(partial)
        return index

    def _append_partial(self, partial: Path, stored: np.ndarray, names: list[str]) -> None:
        """Journal one finished batch of a build (with the metadata, when the journal is new)."""
        append_journal(partial, self.metadata, stored, names)

    def _load_partial(self, partial: Path) -> None:
        """Append the finished batches of an interrupted build; a torn last batch is cut off."""

        def add_fresh(names: list[str], stored: np.ndarray) -> None:
            fresh = [i for i, name in enumerate(names) if name not in self._known]
            if fresh:
                self._append(stored[fresh], [names[i] for i in fresh])

        metadata = replay_journal(partial, add_fresh)
        for key, value in (metadata or {}).items():
            self.metadata.setdefault(key, value)
