"""The public models ``blip2`` and ``blip2_stream``: image + prompt + settings -> text.

A front answers one public request: it checks everything it can before spending compute (the
image decodes, the settings are in range, the prompt fits the model: a model called through BLS
loses its error code in Python backend 2.51, so bad input must be refused here to be answered
INVALID_ARG), preprocesses the image itself, has ``blip2_vision`` encode it (through Triton, so its
dynamic batching and response cache apply), and hands the query embeddings to the one generation
engine in ``blip2_llm``. While it waits it watches the client: a cancelled request (gRPC cancel,
closed stream, passed deadline) is cancelled in the engine too, which frees its slot.

Free of Triton glue: the calls to the other models come in through ``FrontSteps``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .contract import GENERATION_INPUT_NAMES, GenerationSettings
from .errors import RequestCancelledError, RequestValidationError
from .generation import parse_prompt, parse_settings
from .images import image_from_input
from .preprocess import ImagePreprocessor
from .prompt_check import PromptChecker

CANCEL_POLL_S = 0.02


class FrontSteps(Protocol):
    """How a front reaches the other models (Triton BLS in production)."""

    async def encode(self, pixel_values: np.ndarray) -> np.ndarray:
        """``[1, 3, H, W]`` pixel values -> ``[1, Q, D]`` query embeddings."""

    def generate(
        self, query_embeds: np.ndarray, inputs: Mapping[str, np.ndarray], *, stream: bool, request_id: str
    ) -> AsyncIterator[str]:
        """The text pieces (one piece: the whole text when not streaming)."""

    async def cancel(self, request_id: str) -> None:
        """Stop the generation of ``request_id`` in the engine."""


@dataclass(frozen=True)
class FrontRow:
    """One row of a public request, checked: what the LLM stage gets, as tensors of one row."""

    image: bytes
    prompt: str
    settings: GenerationSettings
    llm_inputs: dict[str, np.ndarray]  # text_input and the settings that were sent, shape [1, 1]


class Front:
    """Checks, preprocesses and runs public requests through the vision and LLM stages."""

    def __init__(self, preprocessor: ImagePreprocessor, checker: PromptChecker, steps: FrontSteps) -> None:
        self.preprocessor = preprocessor
        self.checker = checker
        self.steps = steps

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
            raw_row = {name: (None if array is None else array[row]) for name, array in raw.items()}
            settings = parse_settings(raw_row)
            self.checker.check(prompt, settings)
            llm_inputs = {
                name: np.asarray(value).reshape(1, 1) for name, value in raw_row.items() if value is not None
            }
            llm_inputs["text_input"] = np.array([[prompt.encode("utf-8")]], dtype=np.object_)
            rows.append(FrontRow(image, prompt, settings, llm_inputs))
        return rows

    async def run(
        self,
        row: FrontRow,
        *,
        stream: bool,
        is_cancelled: Callable[[], bool],
        on_piece: Callable[[str], Awaitable[None]] | None = None,
    ) -> str:
        """Generate the text of one row; pieces go to ``on_piece`` as they come when streaming."""
        pixel_values = await asyncio.to_thread(self.preprocessor, row.image)
        if is_cancelled():
            raise RequestCancelledError()
        query_embeds = await self.steps.encode(pixel_values[None])
        request_id = uuid.uuid4().hex
        pieces: list[str] = []

        async def consume() -> None:
            async for piece in self.steps.generate(
                query_embeds, row.llm_inputs, stream=stream, request_id=request_id
            ):
                pieces.append(piece)
                if on_piece is not None and piece:
                    await on_piece(piece)

        task = asyncio.ensure_future(consume())
        try:
            while not task.done():
                await asyncio.wait([task], timeout=CANCEL_POLL_S)
                if not task.done() and is_cancelled():
                    await self.steps.cancel(request_id)
                    raise RequestCancelledError()
            task.result()
        finally:
            if not task.done():
                task.cancel()
        return "".join(pieces)
