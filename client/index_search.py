"""Scoring and search for the image index: chunked ITC scores, top-k, ITM re-ranking.

ITC: an image's score for a text is the max over its ``Q`` query embeddings of the cosine with
the text embedding. :func:`itc_scores` scores the stored int16 ``[N, Q, D]`` array in chunks of
``chunk_size`` images, so memory beyond the stored index stays at one chunk in float32 plus one
score per image. ITM re-ranking (the BLIP-2 paper's protocol) asks the server's ITM head about
the best few candidates only.

The re-ranking functions are plans (see ``steps``): they run with either client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Blip2ClientError
from .images import ImageLike
from .index_storage import SCALE
from .steps import Plan

__all__ = [
    "DEFAULT_CHUNK",
    "ImageHit",
    "TextHit",
    "check_count",
    "image_hits",
    "itc_scores",
    "rerank_images",
    "search_texts",
    "top_indices",
]

DEFAULT_CHUNK = 256


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


def check_count(name: str, value: object) -> None:
    """Refuse anything but a positive int (``top_k``, ``rerank``, ``batch_size``) with a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: lower index first)."""
    count = len(scores)
    k = min(k, count)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < count else np.arange(count)
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def itc_scores(stored: np.ndarray, text_embeds: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """ITC scores of every image of the int16 ``stored`` ``[N, Q, D]``: ``[N]`` for one text ``[D]``,
    ``[T, N]`` for ``[T, D]``. One chunk of ``chunk_size`` images is in float32 at a time."""
    texts = np.asarray(text_embeds, dtype=np.float32)
    single = texts.ndim == 1
    texts = np.atleast_2d(texts)
    count = len(stored)
    if count and texts.shape[1] != stored.shape[2]:
        raise Blip2ClientError(f"text embeddings have {texts.shape[1]} values, the index {stored.shape[2]}")
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


def image_hits(scores: np.ndarray, paths: Sequence[str], top_k: int) -> list[ImageHit]:
    """The ``top_k`` images by ITC score (``scores`` ``[N]``, one per path), ranked from 1."""
    order = top_indices(scores, top_k)
    return [ImageHit(rank, int(i), paths[i], float(scores[i])) for rank, i in enumerate(order, start=1)]


def rerank_images(
    client: Any, text: str, hits: list[ImageHit], top_k: int, rerank: int | None
) -> Plan[list[ImageHit]]:
    """The first ``top_k`` of ``hits`` (ranked by ITC), the best ``rerank`` re-ranked by ITM first.

    Re-ranking reads the image files; re-ranked hits come first, by ITM probability, and the rest
    follow by ITC.
    """
    if rerank:
        head, tail = hits[:rerank], hits[rerank:]
        matches = yield lambda: client.match_batch([(hit.path, text) for hit in head], progress=False)
        scored = [(itm, hit) for (itm, _), hit in zip(matches, head, strict=True)]
        scored.sort(key=lambda pair: (-pair[0], -pair[1].itc, pair[1].index))
        hits = [ImageHit(0, hit.index, hit.path, hit.itc, itm) for itm, hit in scored] + tail
    return [ImageHit(rank, h.index, h.path, h.itc, h.itm) for rank, h in enumerate(hits[:top_k], start=1)]


def search_texts(
    client: Any, image: ImageLike, texts: list[str], top_k: int | None, rerank: int | None
) -> Plan[list[TextHit]]:
    """Texts for ``image`` by ITC (both embedded by the server), the best ``rerank`` re-ranked by ITM."""
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
