"""Beam search with transformers' own ``generate``, for both families (the engine's beam worker).

What ``Blip2ForConditionalGeneration.generate`` does after the vision half, in transformers 5.23:
the image tokens of the input ids (image tokens + prompt, as ``Blip2Processor`` builds them) are
replaced by the query embeddings in ``inputs_embeds``, then

- OPT (decoder-only): ``language_model.generate(inputs_embeds, attention_mask, input_ids)``; the
  returned sequences start with the input ids, so the new text is what follows them;
- Flan-T5 (encoder-decoder): the encoder reads ``inputs_embeds`` (no ``input_ids`` reach the
  language model) and the decoder generates from ``decoder_start_token_id``; the returned sequences
  are decoder tokens only, so the whole sequence is the new text.

Without a prompt, ``generate`` builds the input ids as the image tokens + ``text_config.bos_token_id``.
Salesforce's Flan-T5 checkpoints set it to 1 (``</s>``), which is also what ``Blip2Processor`` gives
for the prompt "" (T5's tokenizer encodes "" as ``</s>``); a T5 text config without it gets the
same from ``PromptChecker.prompt_ids``. One request per call, so nothing is padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..settings import generate_kwargs, stop_when_cancelled
from .checkpoint import GenerationRequest, LlmSettings


class BeamSearch:
    """One request at a time through the language model's ``generate`` (any settings, beams too)."""

    def __init__(self, model, tokenizer, settings: LlmSettings, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.encoder_decoder = settings.family == "t5"

    def generate(self, request: GenerationRequest, ids: Sequence[int]) -> str:
        """The text of ``request``, whose input ids ``ids`` a ``PromptChecker`` accepted.

        A request with a ``cancelled`` check stops at the next beam step once it says so.
        """
        torch = self._torch
        settings = request.settings
        with torch.inference_mode():
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            attention_mask = torch.ones_like(input_ids)
            inputs_embeds = self.model.get_input_embeddings()(input_ids)
            query = torch.from_numpy(np.asarray(request.query_embeds)[None]).to(
                self.device, inputs_embeds.dtype
            )
            image_mask = (input_ids == self.settings.image_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, query)
            if settings.sampling and settings.random_seed is not None:
                torch.manual_seed(settings.random_seed)  # as the reference seeds a seeded sampling request
            extra = {} if self.encoder_decoder else {"input_ids": input_ids}
            stopping = stop_when_cancelled([request.cancelled]) if request.cancelled is not None else {}
            sequences = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                **extra,
                **generate_kwargs(settings),
                **stopping,
            )
        new_tokens = sequences[0] if self.encoder_decoder else sequences[0, input_ids.shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
