"""Keys and values of (image, token prefix) kept between requests, so a prefill computes only what is new.

A decoder-only model's key and value at position ``p`` depend on the tokens ``[0, p]`` only (the
causal mask) and, for BLIP-2, on the image whose query embeddings fill the image-token positions.
So a finished sequence's cache entries serve any later request about the same image whose input
ids start the same way: a second question (image tokens + "Question:" shared), or the next turn of
a chat (the whole earlier conversation shared). ``PrefixCache`` keeps such entries, bounded in
bytes and evicted least recently used first; ``lookup`` returns the longest usable prefix.
Flan-T5 is not served from it: its encoder reads the whole prompt at once, nothing to reuse.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def image_key(query_embeds: np.ndarray) -> bytes:
    """A digest of an image's query embeddings: equal embeddings, equal key."""
    array = np.ascontiguousarray(query_embeds)
    return hashlib.blake2b(array.tobytes(), digest_size=16, person=str(array.dtype).encode()[:16]).digest()


@dataclass
class _Entry:
    ids: tuple[int, ...]
    keys: torch.Tensor  # [layers, heads, len(ids), head_dim]
    values: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()


@dataclass(frozen=True)
class PrefixHit:
    """The first ``length`` positions of an entry: their keys and values ``[layers, heads, length, head_dim]``."""

    length: int
    keys: torch.Tensor
    values: torch.Tensor


class PrefixCache:
    """Least-recently-used entries of at most ``capacity_bytes`` in all; 0 turns the cache off."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: collections.OrderedDict[tuple[bytes, tuple[int, ...]], _Entry] = (
            collections.OrderedDict()
        )
        self._by_image: dict[bytes, set[tuple[int, ...]]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, image: bytes, ids: Sequence[int]) -> PrefixHit | None:
        """The longest cached prefix of ``ids`` for ``image``, at most ``len(ids) - 1`` positions (the
        last position is always computed: its logits choose the first new token); None when no entry
        shares a position with ``ids``."""
        if not self.enabled:
            return None
        wanted = tuple(ids)
        best: tuple[int, tuple[bytes, tuple[int, ...]]] | None = None
        with self._lock:
            for cached in self._by_image.get(image, ()):
                shared = _common_prefix(cached, wanted, limit=len(wanted) - 1)
                if shared and (best is None or shared > best[0]):
                    best = (shared, (image, cached))
            if best is None:
                return None
            length, key = best
            self._entries.move_to_end(key)
            entry = self._entries[key]
            return PrefixHit(length, entry.keys[:, :, :length], entry.values[:, :, :length])

    def store(self, image: bytes, ids: Sequence[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep ``keys``/``values`` (``[layers, heads, len(ids), head_dim]``, owned by the cache from
        now on) for ``ids`` about ``image``; an entry that is a prefix of it is dropped, as it adds
        nothing; the least recently used entries go until everything fits."""
        entry = _Entry(tuple(ids), keys, values)
        if not self.enabled or entry.nbytes > self.capacity_bytes:
            return
        with self._lock:
            for cached in list(self._by_image.get(image, ())):
                if entry.ids[: len(cached)] == cached:
                    self._drop((image, cached))
            self._entries[(image, entry.ids)] = entry
            self._by_image.setdefault(image, set()).add(entry.ids)
            self._bytes += entry.nbytes
            while self._bytes > self.capacity_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[bytes, tuple[int, ...]]) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
        ids = self._by_image[key[0]]
        ids.discard(key[1])
        if not ids:
            del self._by_image[key[0]]


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...], *, limit: int) -> int:
    """How many leading ids ``a`` and ``b`` share, at most ``limit``."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y or count >= limit:
            break
        count += 1
    return count
