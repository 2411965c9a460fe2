"""Triton Python model `blip2_itm` (BLS): image + text -> ITM probability and ITC score.

The flow is blip2_runtime.retrieval.itm_front; this file adapts Triton's requests and responses.
The requests of a dynamic batch are handled concurrently, so the called models batch them in turn.
"""

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime import contract as C
from blip2_runtime.retrieval.itm_front import ItmFront
from blip2_runtime.retrieval.text_matching import RetrievalSettings, TextTokenizer
from blip2_runtime.triton.bls import BlsSteps
from blip2_runtime.triton.responses import ModelLogger, error_response, input_array, output_response
from blip2_runtime.vision.preprocess import ImagePreprocessor


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        tokenizer = TextTokenizer(here / "tokenizer", RetrievalSettings.load(here))
        self.front = ItmFront(ImagePreprocessor(here / "image_processor"), tokenizer, BlsSteps())
        self.logger.info("ready")

    async def execute(self, requests):
        return list(await asyncio.gather(*(self._answer(request) for request in requests)))

    async def _answer(self, request):
        try:
            inputs = {name: input_array(request, name) for name in (C.IMAGE.name, C.RETRIEVAL_TEXT.name)}
            return output_response(await self.front.scores(inputs))
        except Exception as exc:
            return error_response(exc, self.logger)
