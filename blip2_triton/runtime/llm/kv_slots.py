"""Preallocated per-slot attention caches for the in-flight engine.

``tensors`` holds the keys and values of every layer as one ``[layers, slots, heads, tokens,
head_dim]`` tensor each: slot ``r`` keeps its sequence's entries in columns ``[0, lengths[r])``.
The active sequences always occupy slots ``[0, n)``: when one leaves, the last one moves into its
slot, so a decode step reads plain views (no gather) and its cost never depends on how many
requests came and went before.
"""

from __future__ import annotations

import torch


class SlotCache:
    """Keys and values of ``slots`` sequences of at most ``tokens`` positions, per layer."""

    def __init__(
        self, layers: int, slots: int, heads: int, tokens: int, head_dim: int, *, dtype, device
    ) -> None:
        shape = (layers, slots, heads, tokens, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.tokens = tokens

    def write_prefix(self, layer: int, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``[heads, L, head_dim]`` keys/values as positions ``[0, L)`` of ``slot``."""
        length = keys.shape[1]
        self.keys[layer, slot, :, :length] = keys
        self.values[layer, slot, :, :length] = values

    def append(self, layer: int, count: int, keys: torch.Tensor, values: torch.Tensor, span: int):
        """Store one new position per active slot (``[count, heads, head_dim]`` at each slot's
        length) and return the keys and values of positions ``[0, span)`` of slots ``[0, count)``."""
        rows = torch.arange(count, device=keys.device)
        columns = self.lengths[:count]
        self.keys[layer, rows, :, columns] = keys
        self.values[layer, rows, :, columns] = values
        return self.keys[layer, :count, :, :span], self.values[layer, :count, :, :span]

    def move(self, source: int, target: int) -> None:
        """Slot ``source``'s entries become slot ``target``'s."""
        length = int(self.lengths[source])
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
        self.lengths[target] = length
