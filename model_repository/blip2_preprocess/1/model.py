"""Triton Python model `blip2_preprocess`: encoded image bytes -> pixel values."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.errors import RequestValidationError
from blip2_runtime.preprocess import ImagePreprocessor
from blip2_runtime.triton_adapter import ModelLogger, input_array, output_response, respond_each


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        self.preprocessor = ImagePreprocessor(Path(__file__).resolve().parent / "image_processor")
        self.logger.info("ready")

    def execute(self, requests):
        return respond_each(requests, self._handle, self.logger)

    def _handle(self, request):
        images = input_array(request, "image")
        if images is None:
            raise RequestValidationError("input 'image' is required")
        pixel_values = [self.preprocessor(_image_bytes(item)) for item in images.reshape(-1)]
        return output_response({"pixel_values": np.stack(pixel_values)})


def _image_bytes(item) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("latin-1")
    raise RequestValidationError(f"input 'image' must be bytes, got {type(item).__name__}")
