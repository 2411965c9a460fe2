"""Flan-T5 in flight: the encoder once per request, decoder steps over many sequences at once.

What ``T5ForConditionalGeneration`` computes for a sequence, on the model's own weights and
modules (layer norms, feed-forward blocks, the encoder): a request's encoder output is turned into
its cross-attention keys and values once, when it joins; a decode step feeds each active slot its
next decoder token at its own position. T5's relative position bias is taken per slot (each query
at its own position), T5 attention has no 1/sqrt(d) scaling, and encoder padding is masked per slot.
"""

from __future__ import annotations

import torch

from .kv_slots import SlotCache


class T5Stepper:
    """Admission (encoder + cross-attention cache) and decode steps of a ``T5ForConditionalGeneration``."""

    def __init__(self, model, slots: int, tokens: int, encoder_tokens: int) -> None:
        self.model = model
        self.decoder = model.decoder
        config = model.config
        self.heads = config.num_heads
        self.head_dim = config.d_kv
        self.scale_output = bool(getattr(config, "scale_decoder_outputs", config.tie_word_embeddings))
        self.model_dim = config.d_model
        self.bias_attention = self.decoder.block[0].layer[0].SelfAttention
        weight = self.decoder.embed_tokens.weight
        layers = len(self.decoder.block)
        options = {"dtype": weight.dtype, "device": weight.device}
        self.cache = SlotCache(layers, slots, self.heads, tokens, self.head_dim, **options)
        self.cross = SlotCache(layers, slots, self.heads, encoder_tokens, self.head_dim, **options)
        self.start_token = int(config.decoder_start_token_id)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def admit(self, slot: int, embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Encode a new request (``[1, S, D]`` embeddings, ``[1, S]`` mask) into ``slot``."""
        encoded = self.model.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        for index, block in enumerate(self.decoder.block):
            attention = block.layer[1].EncDecAttention
            keys, values = self._heads(attention.k(encoded)), self._heads(attention.v(encoded))
            self.cross.write_prefix(index, slot, keys[0], values[0])
        self.cross.lengths[slot] = encoded.shape[1]
        self.cache.lengths[slot] = 0

    def _position_bias(self, positions: torch.Tensor, span: int) -> torch.Tensor:
        """``[n, heads, 1, span]``: each slot's query at its own position, keys ``[0, span)``."""
        relative = torch.arange(span, device=positions.device)[None, :] - positions[:, None]
        attention = self.bias_attention
        buckets = attention._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        return attention.relative_attention_bias(buckets).permute(0, 2, 1)[:, :, None, :]

    @staticmethod
    def _attend(query, keys, values, bias) -> torch.Tensor:
        scores = torch.matmul(query, keys.transpose(2, 3)) + bias
        weights = torch.nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        output = torch.matmul(weights, values)
        return output.transpose(1, 2).reshape(output.shape[0], 1, -1)

    def decode(self, count: int, tokens: torch.Tensor) -> torch.Tensor:
        """Feed slots ``[0, count)`` their next decoder token (``[count]``); logits ``[count, V]``."""
        positions = self.cache.lengths[:count]
        span = int(positions.max()) + 1
        minimum = torch.finfo(self.decoder.embed_tokens.weight.dtype).min
        keys_range = torch.arange(span, device=tokens.device)
        causal = (keys_range[None, :] > positions[:, None])[:, None, None, :]
        self_bias = self._position_bias(positions, span).masked_fill(causal, minimum)
        cross_lengths = self.cross.lengths[:count]
        cross_span = int(cross_lengths.max())
        padding = torch.arange(cross_span, device=tokens.device)[None, :] >= cross_lengths[:, None]
        cross_bias = torch.zeros(count, 1, 1, cross_span, dtype=self_bias.dtype, device=tokens.device)
        cross_bias = cross_bias.masked_fill(padding[:, None, None, :], minimum)
        hidden = self.decoder.embed_tokens(tokens)[:, None, :]
        for index, block in enumerate(self.decoder.block):
            layer = block.layer[0]
            normed = layer.layer_norm(hidden)
            attention = layer.SelfAttention
            keys, values = self.cache.append(
                index,
                count,
                self._heads(attention.k(normed))[:, :, 0],
                self._heads(attention.v(normed))[:, :, 0],
                span,
            )
            hidden = hidden + attention.o(
                self._attend(self._heads(attention.q(normed)), keys, values, self_bias)
            )
            layer = block.layer[1]
            normed = layer.layer_norm(hidden)
            attention = layer.EncDecAttention
            keys = self.cross.keys[index, :count, :, :cross_span]
            values = self.cross.values[index, :count, :, :cross_span]
            hidden = hidden + attention.o(
                self._attend(self._heads(attention.q(normed)), keys, values, cross_bias)
            )
            hidden = block.layer[-1](hidden)
        self.cache.lengths[:count] += 1
        hidden = self.decoder.final_layer_norm(hidden[:, 0])
        if self.scale_output:
            hidden = hidden * (self.model_dim**-0.5)
        return self.model.lm_head(hidden).float()

    def move(self, source: int, target: int) -> None:
        self.cache.move(source, target)
        self.cross.move(source, target)
