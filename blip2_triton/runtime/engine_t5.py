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

from .engine import GenerationRequest
from .generation import generate_kwargs
from .prompt_engine import PromptEngine


class EncoderDecoderEngine(PromptEngine):
    """Flan-T5: encoder over [query embeddings; prompt], decoder generates with ``generate``."""

    padding_side = "right"

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
                **self._stopping(requests),
            )
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [text.strip() for text in texts]
