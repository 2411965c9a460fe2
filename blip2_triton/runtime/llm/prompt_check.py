"""Prompt → input ids and the length checks of the LLM stage, without the language model.

What ``Blip2Processor`` + ``generate`` build (image tokens + prompt) and what the model takes,
shared by the engines (authoritative) and the public front models, which check a request before
they spend the vision encoder on it (errors of a model called through BLS lose their code in
Python backend 2.51, so a front must refuse bad input itself to answer INVALID_ARG).
"""

from __future__ import annotations

from ..contract import GenerationSettings
from ..errors import RequestValidationError
from .checkpoint import LlmSettings

# T5 has no position table; Flan-T5's tokenizer says 512 (``model_max_length``) and was trained so.
DEFAULT_ENCODER_TOKENS = 512


def encoder_token_limit(tokenizer) -> int:
    """The tokenizer's ``model_max_length``, or 512 when it sets none (transformers' huge default)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return DEFAULT_ENCODER_TOKENS


class PromptChecker:
    """Input ids of a prompt and whether a request fits the model.

    ``context_length``: decoder-only models, image tokens + prompt + ``max_tokens`` at most (0: no
    limit known). Encoder-decoder models: the encoder input (image tokens included) at most
    ``encoder_token_limit(tokenizer)``; the decoder has no fixed limit (``max_tokens`` is capped by
    the contract). ``max_sequence_tokens``: what one slot of the in-flight engine holds (decoder
    tokens: image tokens + prompt + new tokens for OPT, start token + new tokens for T5; 0: none).
    """

    def __init__(
        self, tokenizer, settings: LlmSettings, *, context_length: int = 0, max_sequence_tokens: int = 0
    ) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.context_length = context_length
        self.max_sequence_tokens = max_sequence_tokens
        self.encoder_length = encoder_token_limit(tokenizer)
        image_tokens = tokenizer.convert_ids_to_tokens(settings.image_token_id) * settings.num_query_tokens
        self.image_ids = tokenizer(image_tokens, add_special_tokens=False)["input_ids"]
        if self.image_ids != [settings.image_token_id] * settings.num_query_tokens:
            raise ValueError("the tokenizer does not map the image token to a single id")

    @property
    def encoder_decoder(self) -> bool:
        return self.settings.family == "t5"

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of image tokens + prompt, as ``Blip2Processor`` and ``generate`` build them.

        Without a prompt ``generate`` appends ``text_config.bos_token_id``. A checkpoint without
        one (transformers' ``generate`` then fails) gets what ``Blip2Processor`` gives for an empty
        prompt, the tokenizer's encoding of "" (``</s>`` for T5, as Flan-T5 checkpoints' bos 1).
        """
        if prompt:
            text_ids = self.tokenizer(prompt)["input_ids"]
        elif self.settings.bos_token_id is not None:
            text_ids = [self.settings.bos_token_id]
        else:
            text_ids = self.tokenizer("")["input_ids"]
        return self.image_ids + list(text_ids)

    def check(self, prompt: str, settings: GenerationSettings) -> list[int]:
        """The request's input ids; ``RequestValidationError`` when the model cannot take it."""
        ids = self.prompt_ids(prompt)
        if ids.count(self.settings.image_token_id) != self.settings.num_query_tokens:
            image_token = self.tokenizer.convert_ids_to_tokens(self.settings.image_token_id)
            raise RequestValidationError(f"the prompt must not contain the image token {image_token}")
        if self.encoder_decoder:
            if len(ids) > self.encoder_length:
                raise RequestValidationError(
                    f"prompt is {len(ids)} tokens (image tokens included); the encoder takes at most "
                    f"{self.encoder_length} tokens"
                )
            decoder_tokens = 1 + (settings.max_tokens or 0)
            if self.max_sequence_tokens and decoder_tokens > self.max_sequence_tokens:
                raise RequestValidationError(
                    f"max_tokens {settings.max_tokens} exceeds the engine's slot of {self.max_sequence_tokens} "
                    "decoder tokens (export --max-sequence-tokens)"
                )
            return ids
        total = len(ids) + (settings.max_tokens or 0)
        if self.max_sequence_tokens and total > self.max_sequence_tokens:
            raise RequestValidationError(
                f"prompt is {len(ids)} tokens (image tokens included); with max_tokens {settings.max_tokens} "
                f"that exceeds the engine's slot of {self.max_sequence_tokens} tokens (export --max-sequence-tokens)"
            )
        if self.context_length and total > self.context_length:
            raise RequestValidationError(
                f"prompt is {len(ids)} tokens (image tokens included); with max_tokens "
                f"{settings.max_tokens} that exceeds the model's context of {self.context_length} tokens"
            )
        return ids
