"""Triton Python model `blip2_itm_head`: ITM probability (ONNX graph) and ITC score for image-text pairs."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import (
    ATTENTION_MASK,
    IMAGE_EMBEDS,
    INPUT_IDS,
    ITC_SCORE,
    ITM_SCORE,
    RETRIEVAL_TEXT,
    TEXT_EMBEDS,
    VISION_HIDDEN_STATES,
)
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.retrieval.text_matching import (
    RetrievalSettings,
    TextTokenizer,
    itc_scores,
    text_from_input,
)
from blip2_runtime.triton.responses import ModelLogger, input_array, model_parameter, respond_batched
from blip2_runtime.vision.onnx_graph import OnnxGraph

_INPUTS = (VISION_HIDDEN_STATES, IMAGE_EMBEDS.name, TEXT_EMBEDS.name, RETRIEVAL_TEXT.name)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        self.tokenizer = TextTokenizer(here / "tokenizer", RetrievalSettings.load(here))
        threads = int(model_parameter(config, "intra_op_threads", "0"))
        self.graph = OnnxGraph(here / model_parameter(config, "onnx_file"), threads=threads)
        self.logger.info("ready")

    def execute(self, requests):
        return respond_batched(requests, self._parse, self._run, self.logger)

    def _parse(self, request):
        arrays = [input_array(request, name) for name in _INPUTS]
        for name, array in zip(_INPUTS, arrays, strict=True):
            if array is None:
                raise RequestValidationError(f"input '{name}' is required")
        hidden, image_embeds, text_embeds, texts = arrays
        texts = [text_from_input(item) for item in texts.reshape(len(texts), -1)[:, 0]]
        for text in texts:
            self.tokenizer.ids(text)  # a text the model cannot embed fails its own request only
        return list(zip(hidden, image_embeds, text_embeds, texts, strict=True))

    def _run(self, items):
        hidden, image_embeds, text_embeds, texts = zip(*items, strict=True)
        input_ids, attention_mask = self.tokenizer.batch(list(texts))
        (itm,) = self.graph(
            [ITM_SCORE.name],
            **{VISION_HIDDEN_STATES: np.stack(hidden), INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask},
        )
        itc = itc_scores(np.stack(image_embeds), np.stack(text_embeds))
        return {ITM_SCORE.name: itm.reshape(-1, 1), ITC_SCORE.name: itc.reshape(-1, 1)}
