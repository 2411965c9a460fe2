"""The LLM stage for BLIP-2 OPT checkpoints (decoder-only language model).

Runs transformers' own ``generate`` on batches of requests that share their settings, left-padded,
exactly as ``Blip2ForConditionalGeneration.generate`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from .contract import GenerationSettings
from .engine import GenerationRequest, LlmSettings
from .errors import RequestValidationError
from .generation import generate_kwargs
from .prompt_engine import PromptEngine


class DecoderOnlyEngine(PromptEngine):
    """OPT-style causal LM: image tokens + prompt, left-padded batches, transformers ``generate``."""

    def __init__(self, model, tokenizer, settings: LlmSettings, device: str = "cpu") -> None:
        super().__init__(model, tokenizer, settings, device)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    def check_length(self, ids: list[int], settings: GenerationSettings) -> None:
        total = len(ids) + settings.max_tokens
        if self.context_length and total > self.context_length:
            raise RequestValidationError(
                f"prompt is {len(ids)} tokens (image tokens included); with max_tokens "
                f"{settings.max_tokens} that exceeds the model's context of {self.context_length} tokens"
            )

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
            )
        new_tokens = sequences[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]
