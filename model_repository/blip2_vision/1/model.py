"""Triton Python model for an exported image graph: `pixel_values` -> the outputs its config names.

One file for `blip2_vision` (-> `query_embeds`) and the retrieval `blip2_image_encoder`
(-> `image_embeds`, `vision_hidden_states`): the export names the graph's outputs as the config's
outputs. One onnxruntime run for the whole dynamic batch, split back per request.
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import PIXEL_VALUES
from blip2_runtime.triton.responses import ModelLogger, model_parameter, required_rows, respond_batched
from blip2_runtime.vision.onnx_graph import OnnxGraph


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        threads = int(model_parameter(config, "intra_op_threads", "0"))
        self.graph = OnnxGraph(here / model_parameter(config, "onnx_file"), threads=threads)
        self.outputs = [output["name"] for output in config["output"]]
        self.logger.info("ready")

    def execute(self, requests):
        return respond_batched(requests, lambda r: required_rows(r, PIXEL_VALUES), self._run, self.logger)

    def _run(self, items):
        pixels = np.stack(items).astype(self.graph.input_dtype)
        return dict(zip(self.outputs, self.graph(self.outputs, **{PIXEL_VALUES: pixels}), strict=True))
