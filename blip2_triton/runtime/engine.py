"""The LLM stage of BLIP-2, free of Triton glue.

An engine turns (query embeddings, prompt, settings) requests into text. ``GenerationEngine`` is
the small interface the Triton model talks to; ``DecoderOnlyEngine`` implements it for OPT-style
causal language models by running transformers' own ``generate`` on batches of requests that
share their settings, left-padded, exactly as ``Blip2ForConditionalGeneration.generate`` does.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequestError
from .generation import GenerationSettings

SETTINGS_FILE = "llm_settings.json"


@dataclass(frozen=True)
class LlmSettings:
    """What the LLM stage must know about the checkpoint besides the language model itself."""

    family: str
    image_token_id: int
    num_query_tokens: int
    bos_token_id: int | None
    dtype: str = "fp32"

    @classmethod
    def load(cls, folder: str | Path) -> LlmSettings:
        return cls(**json.loads((Path(folder) / SETTINGS_FILE).read_text()))

    def save(self, folder: str | Path) -> None:
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the LLM stage."""

    query_embeds: np.ndarray  # [num_query_tokens, hidden]
    prompt: str
    settings: GenerationSettings


class GenerationEngine(ABC):
    """Turns requests into texts; one result (text or the error for that request) per request."""

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str | Exception]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, memory)."""


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class DecoderOnlyEngine(GenerationEngine):
    """OPT-style causal LM: image tokens + prompt, left-padded batches, transformers ``generate``."""

    def __init__(self, model, tokenizer, settings: LlmSettings, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.pad_token_id = _first(model.generation_config.pad_token_id, tokenizer.pad_token_id, 0)
        image_token = tokenizer.convert_ids_to_tokens(settings.image_token_id)
        self._image_ids = tokenizer(image_token * settings.num_query_tokens, add_special_tokens=False)["input_ids"]
        if self._image_ids != [settings.image_token_id] * settings.num_query_tokens:
            raise ValueError("the tokenizer does not map the image token to a single id")

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu") -> DecoderOnlyEngine:
        """Load the language model and tokenizer an export wrote into ``folder``."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        settings = LlmSettings.load(folder)
        dtype = getattr(torch, TORCH_DTYPES[settings.dtype])
        model = AutoModelForCausalLM.from_pretrained(folder / "language_model", dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        return cls(model, tokenizer, settings, device)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of image tokens + prompt, as ``Blip2Processor`` and ``generate`` build them."""
        if prompt:
            text_ids = self.tokenizer(prompt)["input_ids"]
        else:
            text_ids = [self.settings.bos_token_id]
        return self._image_ids + list(text_ids)

    def check(self, request: GenerationRequest) -> list[int]:
        """Validate a request against the model; returns its input ids."""
        expected = (self.settings.num_query_tokens, self.model.get_input_embeddings().embedding_dim)
        if tuple(request.query_embeds.shape) != expected:
            raise InvalidRequestError(f"query_embeds has shape {request.query_embeds.shape}, expected {expected}")
        ids = self.prompt_ids(request.prompt)
        total = len(ids) + request.settings.max_tokens
        if self.context_length and total > self.context_length:
            raise InvalidRequestError(
                f"prompt is {len(ids)} tokens (image tokens included); with max_tokens "
                f"{request.settings.max_tokens} that exceeds the model's context of {self.context_length} tokens"
            )
        return ids

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str | Exception]:
        results: list[str | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            try:
                ids = self.check(request)
            except InvalidRequestError as exc:
                results[index] = exc
                continue
            key = ("alone", index) if request.settings.runs_alone else request.settings.batch_key()
            groups.setdefault(key, []).append((index, ids))
        for members in groups.values():
            indices = [index for index, _ in members]
            try:
                texts = self._generate_group([requests[i] for i in indices], [ids for _, ids in members])
            except Exception as exc:  # one failing group must not take the others down
                texts = [exc] * len(indices)
            for index, text in zip(indices, texts, strict=True):
                results[index] = text
        return [r if r is not None else RuntimeError("request was not answered") for r in results]

    def _generate_group(self, requests: Sequence[GenerationRequest], all_ids: list[list[int]]) -> list[str]:
        torch = self._torch
        settings = requests[0].settings
        width = max(len(ids) for ids in all_ids)
        input_ids = torch.full((len(all_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(all_ids), width), dtype=torch.long)
        for row, ids in enumerate(all_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        embeddings = self.model.get_input_embeddings()
        with torch.inference_mode():
            inputs_embeds = embeddings(input_ids)
            query = torch.from_numpy(np.stack([np.asarray(r.query_embeds) for r in requests]))
            query = query.to(self.device, inputs_embeds.dtype)
            image_mask = (input_ids == self.settings.image_token_id).unsqueeze(-1)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, query)
            if settings.sampling and settings.random_seed is not None:
                torch.manual_seed(settings.random_seed)
            sequences = self.model.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                input_ids=input_ids,
                **settings.to_generate_kwargs(),
            )
        new_tokens = sequences[:, width:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]


def _first(*values):
    for value in values:
        if value is not None:
            return value[0] if isinstance(value, list) else value
    return None


def load_engine(folder: str | Path, device: str = "cpu") -> GenerationEngine:
    """The engine for the language-model family an export recorded in ``folder``."""
    family = LlmSettings.load(folder).family
    if family == "opt":
        return DecoderOnlyEngine.from_folder(folder, device)
    raise ValueError(f"no generation engine for language-model family {family!r}")
