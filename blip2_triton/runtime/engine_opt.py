"""The LLM stage for BLIP-2 OPT checkpoints (decoder-only language model).

Runs transformers' own ``generate`` on batches of requests that share their settings, left-padded,
exactly as ``Blip2ForConditionalGeneration.generate`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from .engine import GenerationRequest
from .generation import generate_kwargs
from .prompt_engine import PromptEngine


class DecoderOnlyEngine(PromptEngine):
    """OPT-style causal LM: image tokens + prompt, left-padded batches, transformers ``generate``."""

    def _generate_group(self, requests: Sequence[GenerationRequest], all_ids: list[list[int]]) -> list[str]:
        torch = self._torch
        settings = requests[0].settings
        with torch.inference_mode():
            input_ids, attention_mask, inputs_embeds = self._batch_inputs(requests, all_ids)
            self._seed(settings)
            sequences = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                input_ids=input_ids,
                **generate_kwargs(settings),
                **self._stopping(requests),
            )
        new_tokens = sequences[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]
