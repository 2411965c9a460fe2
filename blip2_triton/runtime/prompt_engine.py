"""What the BLIP-2 language-model engines share: input ids, validation, batched ``generate``."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .contract import GenerationSettings
from .engine import GenerationEngine, GenerationRequest, LlmSettings
from .errors import RequestValidationError
from .generation import batch_key, runs_alone, stop_when_cancelled
from .prompt_check import PromptChecker
from .quantization import quantize_language_model

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class PromptEngine(GenerationEngine):
    """What the BLIP-2 language-model engines share.

    Input ids are image tokens + prompt, as ``Blip2Processor`` and ``generate`` build them;
    requests are validated one by one (a bad one gets its own error); the rest are grouped by
    their settings and each group is padded on ``padding_side`` into one ``generate`` call, with
    the query embeddings put in place of the image tokens. Subclasses say how long an input may
    be and how to run and read ``generate``.
    """

    padding_side = "left"

    def __init__(self, model, tokenizer, settings: LlmSettings, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.pad_token_id = _first(model.generation_config.pad_token_id, tokenizer.pad_token_id, 0)
        self.checker = PromptChecker(
            tokenizer, settings, context_length=context_length(model.config, settings)
        )

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu") -> PromptEngine:
        """Load the language model and tokenizer an export wrote into ``folder``."""
        model, tokenizer, settings = load_language_model(folder, device)
        return cls(model, tokenizer, settings, device)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of image tokens + prompt, as ``Blip2Processor`` and ``generate`` build them."""
        return self.checker.prompt_ids(prompt)

    def check(self, request: GenerationRequest) -> list[int]:
        """Validate a request against the model; returns its input ids."""
        expected = (self.settings.num_query_tokens, self.model.get_input_embeddings().embedding_dim)
        shape = tuple(request.query_embeds.shape)
        if shape != expected:
            raise RequestValidationError(f"query_embeds has shape {shape}, expected {expected}")
        return self.checker.check(request.prompt, request.settings)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str | Exception]:
        results: list[str | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}
        for index, request in enumerate(requests):
            try:
                ids = self.check(request)
            except RequestValidationError as exc:
                results[index] = exc
                continue
            key = ("alone", index) if runs_alone(request.settings) else batch_key(request.settings)
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

    @abstractmethod
    def _generate_group(self, requests: Sequence[GenerationRequest], all_ids: list[list[int]]) -> list[str]:
        """Texts for requests that share their settings (one ``generate`` call)."""

    def _batch_inputs(self, requests: Sequence[GenerationRequest], all_ids: list[list[int]]):
        """``(input_ids, attention_mask, inputs_embeds)``, padded on ``padding_side``, on the device.

        Call under ``torch.inference_mode()``.
        """
        torch = self._torch
        width = max(len(ids) for ids in all_ids)
        input_ids = torch.full((len(all_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(all_ids), width), dtype=torch.long)
        for row, ids in enumerate(all_ids):
            columns = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids)
            attention_mask[row, columns] = 1
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        inputs_embeds = self.model.get_input_embeddings()(input_ids)
        query = torch.from_numpy(np.stack([np.asarray(r.query_embeds) for r in requests]))
        query = query.to(self.device, inputs_embeds.dtype)
        image_mask = (input_ids == self.settings.image_token_id).unsqueeze(-1)
        inputs_embeds = inputs_embeds.masked_scatter(image_mask, query)
        return input_ids, attention_mask, inputs_embeds

    @staticmethod
    def _stopping(requests: Sequence[GenerationRequest]) -> dict:
        """``generate`` keyword arguments that end the call once all ``requests`` are cancelled."""
        checks = [r.cancelled for r in requests if r.cancelled is not None]
        return stop_when_cancelled(checks) if len(checks) == len(requests) else {}

    def _seed(self, settings: GenerationSettings) -> None:
        """Seed torch the way the reference does, for a seeded sampling request (which runs alone)."""
        if settings.sampling and settings.random_seed is not None:
            self._torch.manual_seed(settings.random_seed)


def _first(*values):
    for value in values:
        if value is not None:
            return value[0] if isinstance(value, list) else value
    return None


def context_length(config, settings: LlmSettings) -> int:
    """Tokens a decoder-only model takes at most (its position table); 0 for encoder-decoders."""
    if settings.family == "t5":
        return 0
    return int(getattr(config, "max_position_embeddings", 0) or 0)


AUTO_MODEL_CLASSES = {"opt": "AutoModelForCausalLM", "t5": "AutoModelForSeq2SeqLM"}


def load_language_model(folder: str | Path, device: str = "cpu"):
    """``(model, tokenizer, settings)`` an export wrote into ``folder``: the language model in the
    recorded dtype on ``device`` (quantized when the export asked for it), and its tokenizer."""
    import torch
    import transformers

    folder = Path(folder)
    settings = LlmSettings.load(folder)
    dtype = getattr(torch, TORCH_DTYPES[settings.dtype])
    auto_model = getattr(transformers, AUTO_MODEL_CLASSES[settings.family])
    model = auto_model.from_pretrained(folder / "language_model", dtype=dtype).to(device).eval()
    model = quantize_language_model(model, settings.quantize)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer")
    return model, tokenizer, settings
