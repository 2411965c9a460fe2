"""Triton Python models `blip2` and `blip2_stream` (BLS fronts): image + prompt + settings -> text.

One file for both: `blip2` (unary) answers once with the whole text; `blip2_stream` (decoupled)
sends each new piece of text as it comes, then a final flag. The work is in blip2_runtime.front.
"""

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_python_backend_utils as pb_utils
from blip2_runtime.contract import PUBLIC_INPUTS, TEXT_OUTPUT
from blip2_runtime.engine import LlmSettings
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.front import Front
from blip2_runtime.preprocess import ImagePreprocessor
from blip2_runtime.prompt_check import PromptChecker
from blip2_runtime.triton_adapter import (
    FINAL,
    BackgroundLoop,
    BlsFrontSteps,
    ModelLogger,
    error_response,
    input_array,
    output_response,
    text_array,
)


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        self.streaming = pb_utils.using_decoupled_model_transaction_policy(config)
        here = Path(__file__).resolve().parent
        settings = LlmSettings.load(here)
        tokenizer = AutoTokenizer.from_pretrained(here / "tokenizer")
        checker = PromptChecker(
            tokenizer,
            settings,
            context_length=settings.context_length,
            max_sequence_tokens=settings.max_sequence_tokens,
        )
        self.front = Front(ImagePreprocessor(here / "image_processor"), checker, BlsFrontSteps())
        self.loop = BackgroundLoop(self.logger)
        self.logger.info("ready (streaming)" if self.streaming else "ready")

    def execute(self, requests):
        for request in requests:
            self.loop.submit(self._stream(request) if self.streaming else self._answer(request))
        return None

    async def _answer(self, request):
        sender = request.get_response_sender()
        try:
            rows = self.front.parse({spec.name: input_array(request, spec.name) for spec in PUBLIC_INPUTS})
            runs = [self.front.run(row, stream=False, is_cancelled=request.is_cancelled) for row in rows]
            texts = await asyncio.gather(*runs)
            response = output_response({TEXT_OUTPUT.name: text_array(texts)})
        except Exception as exc:
            response = error_response(exc, self.logger)
        sender.send(response, flags=FINAL)

    async def _stream(self, request):
        sender = request.get_response_sender()

        async def send_piece(piece: str) -> None:
            sender.send(output_response({TEXT_OUTPUT.name: text_array([piece])}))

        try:
            rows = self.front.parse({spec.name: input_array(request, spec.name) for spec in PUBLIC_INPUTS})
            if len(rows) != 1:
                raise RequestValidationError(f"blip2_stream takes one image per request, got {len(rows)}")
            await self.front.run(rows[0], stream=True, is_cancelled=sender.is_cancelled, on_piece=send_piece)
        except Exception as exc:
            sender.send(error_response(exc, self.logger), flags=FINAL)
            return
        sender.send(flags=FINAL)

    def finalize(self):
        self.loop.close()
