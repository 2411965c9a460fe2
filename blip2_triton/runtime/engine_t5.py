"""The LLM stage for BLIP-2 Flan-T5 checkpoints (encoder-decoder language model).

What ``Blip2ForConditionalGeneration.generate`` does for an encoder-decoder language model, in
transformers 5.23: the encoder reads ``inputs_embeds`` = [query embeddings; prompt token
embeddings] (the image tokens of the input ids replaced by the query embeddings) with their
attention mask, no ``input_ids`` reach the language model, and the decoder generates from
``decoder_start_token_id``. The returned sequences are decoder tokens only, so the whole sequence
is the new text (special tokens skipped).

Without a prompt, ``generate`` builds the input ids as the image tokens + ``text_config.bos_token_id``.
Salesforce's Flan-T5 checkpoints set it to 1 (``</s>``, transformers' BLIP-2 conversion adds it),
which is also what ``Blip2Processor`` gives for the prompt "" (T5's tokenizer encodes "" as
``</s>``). A T5 text config without it makes transformers fail (``T5Config`` has no
``bos_token_id`` attribute: AttributeError); this engine then uses the tokenizer's encoding of "",
i.e. the same image tokens + ``</s>`` (``PromptEngine.prompt_ids``).

Batches are padded on the right: T5 has relative positions only, so a request's encoder states
do not depend on where the padding is, and masked padding is what the tokenizer itself does.
"""

from __future__ import annotations

from collections.abc import Sequence

from .contract import GenerationSettings
from .engine import GenerationRequest, LlmSettings
from .errors import RequestValidationError
from .generation import generate_kwargs
from .prompt_engine import PromptEngine

# T5 has no position table; Flan-T5's tokenizer says 512 (``model_max_length``) and was trained so.
DEFAULT_ENCODER_TOKENS = 512


class EncoderDecoderEngine(PromptEngine):
    """Flan-T5: encoder over [query embeddings; prompt], decoder generates with ``generate``."""

    padding_side = "right"
    auto_model_class = "AutoModelForSeq2SeqLM"

    def __init__(self, model, tokenizer, settings: LlmSettings, device: str = "cpu") -> None:
        super().__init__(model, tokenizer, settings, device)
        self.encoder_length = encoder_token_limit(tokenizer)

    def check_length(self, ids: list[int], settings: GenerationSettings) -> None:
        """The encoder input, image tokens included, must fit the tokenizer's ``model_max_length``.

        ``Blip2Processor`` counts the image tokens against ``max_length`` the same way. The decoder
        has no fixed limit; ``max_tokens`` is capped by the contract.
        """
        if len(ids) > self.encoder_length:
            raise RequestValidationError(
                f"prompt is {len(ids)} tokens (image tokens included); the encoder takes at most "
                f"{self.encoder_length} tokens"
            )

    def _generate_group(self, requests: Sequence[GenerationRequest], all_ids: list[list[int]]) -> list[str]:
        torch = self._torch
        settings = requests[0].settings
        with torch.inference_mode():
            _, attention_mask, inputs_embeds = self._batch_inputs(requests, all_ids)
            self._seed(settings)
            sequences = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                **generate_kwargs(settings),
            )
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [text.strip() for text in texts]


def encoder_token_limit(tokenizer) -> int:
    """The tokenizer's ``model_max_length``, or 512 when it sets none (transformers' huge default)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return DEFAULT_ENCODER_TOKENS
