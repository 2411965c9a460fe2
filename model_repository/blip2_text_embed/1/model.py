"""Triton Python model `blip2_text_embed`: text -> L2-normalised text embedding, via onnxruntime."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import ATTENTION_MASK, INPUT_IDS, RETRIEVAL_TEXT, TEXT_EMBEDS
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.retrieval.text_matching import RetrievalSettings, TextTokenizer, text_from_input
from blip2_runtime.triton.responses import ModelLogger, input_array, model_parameter, respond_batched
from blip2_runtime.vision.onnx_graph import OnnxGraph


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        settings = RetrievalSettings.load(here)
        self.tokenizer = TextTokenizer(here / "tokenizer", settings)
        threads = int(model_parameter(config, "intra_op_threads", "0"))
        self.graph = OnnxGraph(here / model_parameter(config, "onnx_file"), threads=threads)
        self.logger.info(f"ready (texts truncated to {settings.max_text_tokens} tokens)")

    def execute(self, requests):
        return respond_batched(requests, self._parse, self._run, self.logger)

    def _parse(self, request):
        texts = input_array(request, RETRIEVAL_TEXT.name)
        if texts is None:
            raise RequestValidationError(f"input '{RETRIEVAL_TEXT.name}' is required")
        items = [text_from_input(item) for item in texts.reshape(-1)]
        for text in items:
            self.tokenizer.ids(text)  # a text the model cannot embed fails its own request only
        return items

    def _run(self, texts):
        input_ids, attention_mask = self.tokenizer.batch(texts)
        (text_embeds,) = self.graph(
            [TEXT_EMBEDS.name], **{INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        )
        return {TEXT_EMBEDS.name: text_embeds}
