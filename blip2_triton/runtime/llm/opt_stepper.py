"""One OPT decode step over many sequences at different positions, on the model's own weights.

What ``OPTForCausalLM.forward`` computes for a sequence, with a slot cache instead of
transformers' cache classes: a prefill writes a new sequence's prompt into its slot and returns
the logits of its last position; a decode step feeds each active slot its next token at its own
position (OPT's learned positions, offset 2) and returns one row of logits per slot. Queries are
scaled before the product, as OPT does, and attention runs in ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention

from .kv_slots import SlotCache


class OptStepper:
    """Prefill and decode steps of one ``OPTForCausalLM`` over a ``SlotCache``."""

    def __init__(self, model, slots: int, tokens: int) -> None:
        self.model = model
        self.decoder = model.model.decoder
        config = model.config
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        self.layer_norm_before = bool(getattr(config, "do_layer_norm_before", True))
        self.offset = getattr(self.decoder.embed_positions, "offset", 2)
        weight = self.decoder.embed_tokens.weight
        self.cache = SlotCache(
            len(self.decoder.layers),
            slots,
            self.heads,
            tokens,
            self.head_dim,
            dtype=weight.dtype,
            device=weight.device,
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` (before any projection): what BLIP-2 scatters its queries into."""
        return self.decoder.embed_tokens(ids)

    def _inputs(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.decoder.project_in is not None:
            embeds = self.decoder.project_in(embeds)
        return embeds + self.decoder.embed_positions.weight[positions + self.offset]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.decoder.final_layer_norm is not None:
            hidden = self.decoder.final_layer_norm(hidden)
        if self.decoder.project_out is not None:
            hidden = self.decoder.project_out(hidden)
        return self.model.lm_head(hidden).float()

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _layer(self, index: int, layer, hidden: torch.Tensor, attend) -> torch.Tensor:
        residual = hidden
        if self.layer_norm_before:
            hidden = layer.self_attn_layer_norm(hidden)
        attention = layer.self_attn
        query = self._heads(attention.q_proj(hidden) * attention.scaling)
        keys, values, mask, causal = attend(
            index, self._heads(attention.k_proj(hidden)), self._heads(attention.v_proj(hidden))
        )
        output = scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, is_causal=causal, scale=1.0
        )
        batch, _, length, _ = output.shape
        hidden = residual + attention.out_proj(output.transpose(1, 2).reshape(batch, length, -1))
        if not self.layer_norm_before:
            hidden = layer.self_attn_layer_norm(hidden)
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        residual = flat
        if self.layer_norm_before:
            flat = layer.final_layer_norm(flat)
        flat = layer.fc2(layer.activation_fn(layer.fc1(flat)))
        hidden = (residual + flat).view(shape)
        if not self.layer_norm_before:
            hidden = layer.final_layer_norm(hidden)
        return hidden

    def prefill(self, first_slot: int, prompts: list[torch.Tensor]) -> torch.Tensor:
        """Run new sequences' prompts (each ``[L_i, D]`` embeddings) into slots ``first_slot``,
        ``first_slot + 1``, ... in one pass; logits ``[n, V]`` of each one's last position.

        The prompts are padded on the right: under the causal mask a real position never sees
        the padding after it, so each sequence computes what it would alone.
        """
        lengths = [prompt.shape[0] for prompt in prompts]
        width = max(lengths)
        embeds = prompts[0].new_zeros((len(prompts), width, prompts[0].shape[-1]))
        for row, prompt in enumerate(prompts):
            embeds[row, : lengths[row]] = prompt
        hidden = self._inputs(embeds, torch.arange(width, device=embeds.device))

        def attend(index: int, keys: torch.Tensor, values: torch.Tensor):
            for row, length in enumerate(lengths):
                self.cache.write_prefix(
                    index, first_slot + row, keys[row, :, :length], values[row, :, :length]
                )
            return keys, values, None, True

        for index, layer in enumerate(self.decoder.layers):
            hidden = self._layer(index, layer, hidden, attend)
        for row, length in enumerate(lengths):
            self.cache.lengths[first_slot + row] = length
        last = torch.tensor([length - 1 for length in lengths], device=embeds.device)
        return self._logits(hidden[torch.arange(len(prompts), device=embeds.device), last])

    def prefill_after(self, first_slot: int, entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        """New sequences whose first positions are known, in slots ``first_slot``, ``first_slot + 1``,
        ... in one pass. Each entry is (keys, values, new): the known positions' keys and values
        ``[layers, heads, m, head_dim]`` (from the prefix cache) go into the slot as they are, and
        only the ``[w, D]`` embeddings ``new`` of positions ``[m, m + w)`` are computed, each attending
        to its own prefix and to its new positions before it. Logits ``[n, V]`` of each one's last
        position.

        The new parts are padded on the right; a padded position sees only its own row's real
        positions (so no row attends to nothing) and what it computes is never kept.
        """
        known = [keys.shape[2] for keys, _, _ in entries]
        widths = [new.shape[0] for _, _, new in entries]
        count, width = len(entries), max(widths)
        device = entries[0][2].device
        span = max(m + w for m, w in zip(known, widths, strict=True))
        embeds = entries[0][2].new_zeros((count, width, entries[0][2].shape[-1]))
        for row, (keys, values, new) in enumerate(entries):
            slot = first_slot + row
            self.cache.keys[:, slot, :, : known[row]] = keys
            self.cache.values[:, slot, :, : known[row]] = values
            embeds[row, : widths[row]] = new
        starts = torch.tensor(known, device=device)
        positions = starts[:, None] + torch.arange(width, device=device)[None, :]  # [n, W]
        # A padded position past the position table is clamped: what it computes is never kept.
        last_position = self.decoder.embed_positions.weight.shape[0] - self.offset - 1
        hidden = self._inputs(embeds, positions.clamp(max=last_position))
        ends = starts + torch.tensor(widths, device=device)
        columns = torch.arange(span, device=device)[None, None, :]
        mask = ((columns <= positions[:, :, None]) & (columns < ends[:, None, None]))[:, None]

        def attend(index: int, keys: torch.Tensor, values: torch.Tensor):
            for row in range(count):
                slot, start, end = first_slot + row, known[row], known[row] + widths[row]
                self.cache.keys[index, slot, :, start:end] = keys[row, :, : widths[row]]
                self.cache.values[index, slot, :, start:end] = values[row, :, : widths[row]]
            slots = slice(first_slot, first_slot + count)
            return (
                self.cache.keys[index, slots, :, :span],
                self.cache.values[index, slots, :, :span],
                mask,
                False,
            )

        for index, layer in enumerate(self.decoder.layers):
            hidden = self._layer(index, layer, hidden, attend)
        for row in range(count):
            self.cache.lengths[first_slot + row] = known[row] + widths[row]
        last = torch.tensor([w - 1 for w in widths], device=device)
        return self._logits(hidden[torch.arange(count, device=device), last])

    def slot_entries(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the keys and values of positions ``[0, length)`` of ``slot``: ``[layers, heads, length, head_dim]``."""
        return (
            self.cache.keys[:, slot, :, :length].clone(),
            self.cache.values[:, slot, :, :length].clone(),
        )

    def decode(self, count: int, tokens: torch.Tensor) -> torch.Tensor:
        """Feed slots ``[0, count)`` their next token (``[count]``); logits ``[count, V]``."""
        lengths = self.cache.lengths[:count]
        shortest, longest = int(lengths.min()), int(lengths.max())
        span = longest + 1
        mask = None  # every slot at the same position: nothing to mask
        if shortest != longest:
            mask = (torch.arange(span, device=tokens.device)[None, :] <= lengths[:, None])[:, None, None, :]
        hidden = self._inputs(self.embed(tokens)[:, None, :], lengths[:, None])

        def attend(index: int, keys: torch.Tensor, values: torch.Tensor):
            keys, values = self.cache.append(index, count, keys[:, :, 0], values[:, :, 0], span)
            return keys, values, mask, False

        for index, layer in enumerate(self.decoder.layers):
            hidden = self._layer(index, layer, hidden, attend)
        self.cache.lengths[:count] += 1
        return self._logits(hidden[:, 0])

    def move(self, source: int, target: int) -> None:
        self.cache.move(source, target)
