"""What the engine model does with a public request before the engine: check it, see the image.

The engine model (``blip2_stream``, which ``blip2`` relays to) answers public requests itself. A
``Front`` checks everything it can before spending compute (the image decodes, the settings are in
range, the prompt fits the model), preprocesses the image with the checkpoint's image processor and
has ``blip2_vision`` encode it (through Triton, so its dynamic batching and response cache apply),
in step with the engine through a ``VisionGate`` (images that arrive together are encoded together
while the engine waits, then start in one prefill). The query embeddings go to the in-flight engine
in the same process, which answers the client's own response sender: no decoupled BLS stream stands
between a client and the engine.

Free of Triton glue: the call to the vision model comes in through ``FrontSteps``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..contract import GENERATION_INPUT_NAMES, GenerationSettings
from ..errors import ClientGoneError, RequestValidationError
from ..images import image_from_input
from ..settings import parse_prompt, parse_settings
from ..vision.preprocess import ImagePreprocessor
from .checkpoint import GenerationRequest
from .prompt_check import PromptChecker
from .vision_gate import HeldEngine, VisionGate


class FrontSteps(Protocol):
    """How a front reaches the vision model (Triton BLS in production)."""

    async def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """``[N, 3, H, W]`` pixel values -> ``[N, Q, D]`` query embeddings."""


@dataclass(frozen=True)
class FrontRow:
    """One row of a public request, checked: its prompt already tokenized (``prompt_ids``)."""

    image: bytes
    prompt: str
    settings: GenerationSettings
    prompt_ids: tuple[int, ...]

    def request(self, query_embeds: np.ndarray) -> GenerationRequest:
        """What the engine takes for this row, once its image is encoded."""
        return GenerationRequest(query_embeds, self.prompt, self.settings, prompt_ids=self.prompt_ids)


class Front:
    """Checks public requests and turns their images into query embeddings."""

    def __init__(
        self,
        preprocessor: ImagePreprocessor,
        checker: PromptChecker,
        steps: FrontSteps,
        engine: HeldEngine,
        *,
        max_vision_batch: int,
        vision_per_image: bool = False,
        vision_chunk_rows: int = 0,
    ) -> None:
        """``vision_per_image``: one vision request per image (the vision model's response cache
        then answers each image it knows); else one request per batch, or per ``vision_chunk_rows``
        rows of it, with images that arrive meanwhile joining (``VisionGate``'s ``chunk_rows``)."""
        self.preprocessor = preprocessor
        self.checker = checker
        self.gate = VisionGate(
            steps.encode,
            engine,
            max_batch=max_vision_batch,
            per_image=vision_per_image,
            chunk_rows=vision_chunk_rows,
        )

    def parse(self, inputs: Mapping[str, np.ndarray | None]) -> list[FrontRow]:
        """The rows of one request, every one checked; the first bad one raises."""
        images = inputs.get("image")
        if images is None:
            raise RequestValidationError("input 'image' is required")
        rows = []
        prompts = inputs.get("text_input")
        for row in range(len(images)):
            image = image_from_input(images.reshape(len(images), -1)[row, 0])
            prompt = parse_prompt(None if prompts is None else prompts[row])
            raw = {name: inputs.get(name) for name in GENERATION_INPUT_NAMES}
            settings = parse_settings({name: (None if a is None else a[row]) for name, a in raw.items()})
            ids = self.checker.check(prompt, settings)
            rows.append(FrontRow(image, prompt, settings, tuple(ids)))
        return rows

    def expect(self, rows: list[FrontRow]) -> None:
        """An accepted request's rows are coming to ``encode``: the vision gate waits for them."""
        self.gate.expect(len(rows))

    async def encode(
        self,
        row: FrontRow,
        is_cancelled: Callable[[], bool],
        mark: Callable[[str], None] = lambda stage: None,
    ) -> np.ndarray:
        """The ``[Q, D]`` query embeddings of a row's image; a cancelled request stops before vision.
        ``mark(stage)`` is told when "preprocessed" and "encoded" end."""
        try:  # the gate expected this image since the request was accepted (``expect``)
            pixel_values = await asyncio.to_thread(self.preprocessor, row.image)
        finally:
            self.gate.prepared()
        mark("preprocessed")
        if is_cancelled():
            raise ClientGoneError()
        query_embeds = await self.gate.encode(pixel_values, is_cancelled)
        mark("encoded")
        return query_embeds
