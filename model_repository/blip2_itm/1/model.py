"""Triton Python model `blip2_itm` (BLS): image + text -> ITM probability and ITC score.

Per request, the image is decoded and preprocessed and the text checked here, so that a bad input
is answered INVALID_ARG with its own message before any model is called (BLS in Python backend
2.51 reports every error of a called model as INTERNAL). Then blip2_text_embed and
blip2_image_encoder (once per image) run side by side, and blip2_itm_head. The requests of a
dynamic batch are handled concurrently, so the called models batch them in turn.
"""

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime import contract as C
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.images import image_from_input
from blip2_runtime.retrieval.text_matching import RetrievalSettings, TextTokenizer, text_from_input
from blip2_runtime.triton.bls import call_model
from blip2_runtime.triton.responses import ModelLogger, error_response, input_array, output_response
from blip2_runtime.vision.preprocess import ImagePreprocessor


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        self.preprocessor = ImagePreprocessor(here / "image_processor")
        self.tokenizer = TextTokenizer(here / "tokenizer", RetrievalSettings.load(here))
        self.logger.info("ready")

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._answer(request) for request in requests)))

    async def _answer(self, request):
        try:
            return output_response(await self._scores(request))
        except Exception as exc:
            return error_response(exc, self.logger)

    async def _scores(self, request):
        image = input_array(request, C.IMAGE.name)
        text = input_array(request, C.RETRIEVAL_TEXT.name)
        for name, array in ((C.IMAGE.name, image), (C.RETRIEVAL_TEXT.name, text)):
            if array is None:
                raise RequestValidationError(f"input '{name}' is required")
        for item in text.reshape(-1):
            self.tokenizer.ids(text_from_input(item))
        pixel_values = await asyncio.to_thread(self._pixels, image)
        texts, encoded = await asyncio.gather(
            call_model(C.TEXT_EMBED_MODEL, {C.RETRIEVAL_TEXT.name: text}, [C.TEXT_EMBEDS.name]),
            call_model(
                C.IMAGE_ENCODER_MODEL,
                {C.PIXEL_VALUES: pixel_values},
                [C.IMAGE_EMBEDS.name, C.VISION_HIDDEN_STATES],
            ),
        )
        return await call_model(
            C.ITM_HEAD_MODEL,
            {**encoded, **texts, C.RETRIEVAL_TEXT.name: text},
            [C.ITM_SCORE.name, C.ITC_SCORE.name],
        )

    def _pixels(self, images):
        return np.stack([self.preprocessor(image_from_input(item)) for item in images.reshape(-1)])
