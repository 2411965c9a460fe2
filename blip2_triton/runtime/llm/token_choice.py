"""Choosing each request's next token inside a mixed batch, as ``generate`` would for it alone.

Per request: the checkpoint's generation config merged with the request's settings the way
``generate`` merges them, transformers' own logits processors for that config (built by the
model's ``_get_logits_processor``, so their set and order are exactly ``generate``'s), its stop
tokens and lengths, and, when sampling, its own ``torch.Generator`` (seeded: same text alone and
under load, equal to ``torch.manual_seed(seed)`` + ``generate``). Rows with nothing to process
(plain greedy) take one batched argmax.
"""

from __future__ import annotations

import os

import torch

from ..contract import GenerationSettings
from ..settings import generate_kwargs


class TokenChoice:
    """How one request picks its tokens and when it stops."""

    def __init__(self, model, settings: GenerationSettings, start_length: int, device) -> None:
        """``start_length``: the ids ``generate`` starts from (decoder-only: the prompt ids, image
        tokens included; encoder-decoder: the decoder start token)."""
        config, _ = model._prepare_generation_config(None, **generate_kwargs(settings))
        model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device)
        self.processors = model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=start_length,
            encoder_input_ids=None,  # BLIP-2 generates from embeddings: generate has none either
            prefix_allowed_tokens_fn=None,
            logits_processor=None,
            device=device,
            model_kwargs={},
        )
        eos = config._eos_token_tensor
        self.eos_ids = set() if eos is None else {int(t) for t in eos.reshape(-1).tolist()}
        self.max_new_tokens = int(config.max_new_tokens)
        self.sampling = bool(config.do_sample)
        self.generator = None
        if self.sampling:
            seed = settings.random_seed
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little") >> 1
            self.generator = torch.Generator(device=device).manual_seed(int(seed) % 2**63)
        self.eos_index = sorted(self.eos_ids)
        self.batchable, self.eos_blocked_below = self._minimum_length_only(start_length)

    def _minimum_length_only(self, start_length: int) -> tuple[bool, int]:
        """Greedy with no processing but a minimum length: batchable (one argmax over the batch,
        the stop tokens masked below that length, exactly as the processors mask them)."""
        from transformers.generation.logits_process import (
            MinLengthLogitsProcessor,
            MinNewTokensLengthLogitsProcessor,
        )

        if self.sampling:
            return False, 0
        below = 0
        for processor in self.processors:
            if isinstance(processor, MinNewTokensLengthLogitsProcessor):
                below = max(below, int(processor.min_new_tokens))
            elif isinstance(processor, MinLengthLogitsProcessor):
                below = max(below, int(processor.min_length) - start_length)
            else:
                return False, 0
        return True, below

    def blocks_eos(self, generated: int) -> bool:
        """Whether the stop tokens are masked for the token after ``generated`` new ones."""
        return generated < self.eos_blocked_below and bool(self.eos_index)

    def pick(self, history: torch.Tensor, logits: torch.Tensor) -> int:
        """The next token from ``logits`` [1, V] (float32) given the ids so far ``history`` [1, L]."""
        scores = self.processors(history, logits) if len(self.processors) else logits
        if self.sampling:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])
        return int(torch.argmax(scores, dim=-1)[0])

    def stops(self, token: int, generated: int) -> bool:
        """Whether the request is done after ``token``, its ``generated``-th new token."""
        return token in self.eos_ids or generated >= self.max_new_tokens
