"""Triton Python model `blip2_vision`: pixel values -> query embeddings, via onnxruntime."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.triton_adapter import (
    ModelLogger,
    error_response,
    input_array,
    model_parameter,
    output_response,
)
from blip2_runtime.vision import OnnxVisionEncoder


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        here = Path(__file__).resolve().parent
        threads = int(model_parameter(config, "intra_op_threads", "0"))
        self.encoder = OnnxVisionEncoder(here / model_parameter(config, "onnx_file"), threads=threads)
        self.logger.info("ready")

    def execute(self, requests):
        """One onnxruntime run for the whole dynamic batch, split back per request."""
        try:
            arrays = [input_array(request, "pixel_values") for request in requests]
            query_embeds = self.encoder(np.concatenate(arrays))
        except Exception as exc:
            return [error_response(exc, self.logger) for _ in requests]
        responses, start = [], 0
        for array in arrays:
            responses.append(output_response({"query_embeds": query_embeds[start : start + len(array)]}))
            start += len(array)
        return responses
