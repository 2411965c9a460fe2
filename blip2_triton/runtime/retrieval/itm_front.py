"""The public model ``blip2_itm``: image + text -> ITM probability and ITC score, free of Triton glue.

Per request, the image is decoded and preprocessed and the text checked first, so that a bad input
is answered INVALID_ARG with its own message before any model is called (BLS in Python backend
2.51 reports every error of a called model as INTERNAL). Then the text and image encoders run side
by side, and the ITM head after them. The calls to the other models come in through ``ItmSteps``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .. import contract as C
from ..errors import RequestValidationError
from ..images import image_from_input
from ..vision.preprocess import ImagePreprocessor
from .text_matching import TextTokenizer, text_from_input


class ItmSteps(Protocol):
    """How the ITM front reaches the other models (Triton BLS in production)."""

    async def call(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; the named outputs."""


class ItmFront:
    """Checks an ITM request and runs it through the text encoder, the image encoder and the head."""

    def __init__(self, preprocessor: ImagePreprocessor, tokenizer: TextTokenizer, steps: ItmSteps) -> None:
        self.preprocessor = preprocessor
        self.tokenizer = tokenizer
        self.steps = steps

    async def scores(self, inputs: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """``itm_score`` and ``itc_score`` of each row (image, text) of one request."""
        image, text = _required(inputs, C.IMAGE.name), _required(inputs, C.RETRIEVAL_TEXT.name)
        for item in text.reshape(-1):
            self.tokenizer.ids(text_from_input(item))
        pixel_values = await asyncio.to_thread(self._pixels, image)
        texts, encoded = await asyncio.gather(
            self.steps.call(C.TEXT_EMBED_MODEL, {C.RETRIEVAL_TEXT.name: text}, [C.TEXT_EMBEDS.name]),
            self.steps.call(
                C.IMAGE_ENCODER_MODEL,
                {C.PIXEL_VALUES: pixel_values},
                [C.IMAGE_EMBEDS.name, C.VISION_HIDDEN_STATES],
            ),
        )
        return await self.steps.call(
            C.ITM_HEAD_MODEL,
            {**encoded, **texts, C.RETRIEVAL_TEXT.name: text},
            [C.ITM_SCORE.name, C.ITC_SCORE.name],
        )

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.preprocessor(image_from_input(item)) for item in images.reshape(-1)])


def _required(inputs: Mapping[str, np.ndarray | None], name: str) -> np.ndarray:
    array = inputs.get(name)
    if array is None:
        raise RequestValidationError(f"input '{name}' is required")
    return array
