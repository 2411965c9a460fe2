"""What Hugging Face transformers returns for a checkpoint: the ground truth of every parity test."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from blip2_triton.runtime.contract import GenerationSettings
from blip2_triton.runtime.images import decode_image
from blip2_triton.runtime.settings import generate_kwargs, parse_settings


@dataclass
class GenerationReference:
    """``Blip2Processor`` + ``Blip2ForConditionalGeneration.generate``, one request at a time."""

    checkpoint: Path
    margins: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.processor = Blip2Processor.from_pretrained(self.checkpoint)
        self.model = Blip2ForConditionalGeneration.from_pretrained(self.checkpoint).eval()

    def generate(self, image: bytes, prompt: str | None = None, **generation) -> str:
        """The text transformers generates (new tokens, special tokens skipped, stripped)."""
        settings: GenerationSettings = parse_settings(generation)
        pil = decode_image(image)
        inputs = self.processor(images=pil, text=prompt or None, return_tensors="pt")
        kwargs = generate_kwargs(settings)
        if settings.sampling and settings.random_seed is not None:
            torch.manual_seed(settings.random_seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs, output_scores=True, return_dict_in_generate=True)
        if not settings.sampling and (not settings.beam_width or settings.beam_width == 1):
            for scores in out.scores:
                top2 = scores[0].topk(2).values
                self.margins.append(float(top2[0] - top2[1]))
        if self.model.config.use_decoder_only_language_model:
            prompt_length = self._default_prompt_length
            if "input_ids" in inputs:
                prompt_length = inputs["input_ids"].shape[1]
            new_tokens = out.sequences[0, prompt_length:]
        else:  # encoder-decoder (T5): the sequences are decoder tokens only, all of them new
            new_tokens = out.sequences[0]
        return self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    @property
    def _default_prompt_length(self) -> int:
        return int(self.model.config.num_query_tokens) + 1


def image_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
