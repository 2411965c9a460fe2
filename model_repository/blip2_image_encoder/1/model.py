"""Triton Python model `blip2_image_encoder`: pixel values -> image embeddings + vision hidden states."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import IMAGE_EMBEDS, PIXEL_VALUES, VISION_HIDDEN_STATES
from blip2_runtime.triton.responses import ModelLogger, model_parameter, required_rows, respond_batched
from blip2_runtime.vision.onnx_graph import OnnxGraph


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        threads = int(model_parameter(config, "intra_op_threads", "0"))
        self.graph = OnnxGraph(here / model_parameter(config, "onnx_file"), threads=threads)
        self.logger.info("ready")

    def execute(self, requests):
        """One onnxruntime run for the whole dynamic batch, split back per request."""
        return respond_batched(requests, lambda r: required_rows(r, PIXEL_VALUES), self._run, self.logger)

    def _run(self, items):
        outputs = [IMAGE_EMBEDS.name, VISION_HIDDEN_STATES]
        image_embeds, hidden = self.graph(outputs, **{PIXEL_VALUES: np.stack(items).astype(np.float32)})
        return {IMAGE_EMBEDS.name: image_embeds, VISION_HIDDEN_STATES: hidden}
