"""Triton Python model `blip2_preprocess`: encoded image bytes -> pixel values."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import IMAGE, PIXEL_VALUES
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.images import image_from_input
from blip2_runtime.triton.responses import ModelLogger, input_array, output_response, respond_each
from blip2_runtime.vision.preprocess import ImagePreprocessor


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        self.preprocessor = ImagePreprocessor(Path(__file__).resolve().parent / "image_processor")
        self.logger.info("ready")

    def execute(self, requests):
        return respond_each(requests, self._handle, self.logger)

    def _handle(self, request):
        images = input_array(request, IMAGE.name)
        if images is None:
            raise RequestValidationError(f"input '{IMAGE.name}' is required")
        pixel_values = [self.preprocessor(image_from_input(item)) for item in images.reshape(-1)]
        return output_response({PIXEL_VALUES: np.stack(pixel_values)})
