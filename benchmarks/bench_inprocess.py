"""Systems A and B: ``Blip2Processor`` + ``Blip2ForConditionalGeneration.generate`` in this process.

A is the seed-style loop (open an image, process it, ``generate``, decode; one image at a time);
B is one batched ``generate`` over all the images. Both generate exactly ``tokens`` new tokens
(``min_new_tokens`` = ``max_new_tokens``; transformers suppresses end-of-sequence until the
minimum), which is checked on the returned ids. Time to first token is taken with a streamer.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_report import Row


class FirstTokenClock:
    """A ``generate`` streamer that notes when the first new token arrives.

    ``generate`` puts the prompt ids first, then each step's new tokens (the whole batch's).
    """

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


@dataclass
class InProcessResult:
    """Rows A and B, and A's texts (what the served pipeline should return for the same images)."""

    loop: Row
    batched: Row
    texts: list[str]


class InProcessModel:
    """The checkpoint loaded with transformers, as a user of the seed code runs it."""

    def __init__(self, checkpoint: Path, tokens: int) -> None:
        import torch
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self._torch = torch
        self.processor = Blip2Processor.from_pretrained(checkpoint)
        self.model = Blip2ForConditionalGeneration.from_pretrained(checkpoint).eval()
        self.tokens = tokens
        self.eos_token_id = self.model.config.text_config.eos_token_id

    def caption(self, paths: list[Path], *, clock: bool = True) -> tuple[list[str], float | None]:
        """Texts for ``paths`` (one ``generate`` call) and when the first new token came (``clock``:
        a streamer notes it; without, ``generate`` runs as a plain loop would and None comes back)."""
        from PIL import Image

        images = [Image.open(path).convert("RGB") for path in paths]
        inputs = self.processor(images=images, return_tensors="pt")
        streamer = FirstTokenClock() if clock else None
        with self._torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                min_new_tokens=self.tokens,
                max_new_tokens=self.tokens,
                streamer=streamer,
            )
        # Without a prompt, generate() starts from the image tokens + BOS and returns them too.
        prompt_length = sequences.shape[1] - self.tokens
        self._check_length(sequences[:, prompt_length:], prompt_length)
        new = sequences[:, prompt_length:]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return [t.strip() for t in texts], None if streamer is None else streamer.first_token_at

    def _check_length(self, new_tokens: Any, prompt_length: int) -> None:
        """Every row has exactly ``tokens`` new tokens and no end-of-sequence among them."""
        expected = self.model.config.num_query_tokens + 1  # image tokens + BOS
        if prompt_length != expected:
            raise RuntimeError(
                f"generate returned {new_tokens.shape[1] + prompt_length} ids, expected {expected} "
                f"prompt ids + {self.tokens} new tokens"
            )
        if self.eos_token_id is not None and bool((new_tokens == self.eos_token_id).any()):
            raise RuntimeError(
                "end-of-sequence generated before min_new_tokens: generation is not fixed-length"
            )

    def close(self) -> None:
        del self.model
        gc.collect()


def measure_in_process(checkpoint: Path, images: list[Path], tokens: int) -> InProcessResult:
    """Run A (one image at a time) then B (one batch), each after an untimed warm-up call."""
    model = InProcessModel(checkpoint, tokens)
    try:
        model.caption(images[:1])  # warm-up: first-call allocations stay out of the figures
        loop = Row("A transformers, one image at a time")
        texts: list[str] = []
        started = time.perf_counter()
        for path in images:  # the plain loop: no streamer
            t0 = time.perf_counter()
            (text,), _ = model.caption([path], clock=False)
            texts.append(text)
            loop.latencies_s.append(time.perf_counter() - t0)
        loop.seconds = time.perf_counter() - started
        loop.images, loop.tokens = len(images), len(images) * tokens
        for path in images:  # time to first token: a second pass, with a streamer
            t0 = time.perf_counter()
            _, first = model.caption([path])
            loop.ttfts_s.append((first or time.perf_counter()) - t0)

        model.caption(images)  # warm-up at the batch size measured
        batched = Row(f"B transformers, one batch of {len(images)}")
        t0 = time.perf_counter()
        _, first = model.caption(images)
        batched.seconds = time.perf_counter() - t0
        batched.images, batched.tokens = len(images), len(images) * tokens
        batched.latencies_s = [batched.seconds] * len(images)
        batched.ttfts_s = [(first or t0 + batched.seconds) - t0] * len(images)
        return InProcessResult(loop, batched, texts)
    finally:
        model.close()
