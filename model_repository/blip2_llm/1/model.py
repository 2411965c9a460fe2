"""Triton Python model `blip2_llm`: query embeddings + prompt + settings -> generated text."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import GENERATION_INPUT_NAMES, QUERY_EMBEDS, TEXT_INPUT, TEXT_OUTPUT
from blip2_runtime.engine import GenerationRequest
from blip2_runtime.engine_factory import load_engine
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.generation import parse_prompt, parse_settings
from blip2_runtime.triton_adapter import (
    ModelLogger,
    error_response,
    input_array,
    model_parameter,
    output_response,
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        device = model_parameter(config, "device")
        self.engine = load_engine(Path(__file__).resolve().parent, device=device)
        self.logger.info(f"ready ({model_parameter(config, 'llm_family')} on {device})")

    def execute(self, requests):
        """Parse every request (bad ones get their own error), generate the rest in one engine call."""
        parsed: list[list[GenerationRequest] | Exception] = []
        for request in requests:
            try:
                parsed.append(_parse_request(request))
            except Exception as exc:
                parsed.append(exc)
        flat = [item for rows in parsed if not isinstance(rows, Exception) for item in rows]
        try:
            results = iter(self.engine.generate(flat))
        except Exception as exc:
            return [error_response(exc, self.logger) for _ in requests]
        responses = []
        for rows in parsed:
            if isinstance(rows, Exception):
                responses.append(error_response(rows, self.logger))
                continue
            texts = [next(results) for _ in rows]
            failed = next((t for t in texts if isinstance(t, Exception)), None)
            if failed is not None:
                responses.append(error_response(failed, self.logger))
            else:
                encoded = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
                responses.append(output_response({TEXT_OUTPUT.name: encoded}))
        return responses

    def finalize(self):
        self.engine.close()


def _parse_request(request) -> list[GenerationRequest]:
    query_embeds = input_array(request, QUERY_EMBEDS)
    if query_embeds is None:
        raise RequestValidationError(f"input '{QUERY_EMBEDS}' is required")
    prompts = input_array(request, TEXT_INPUT.name)
    settings_inputs = {name: input_array(request, name) for name in GENERATION_INPUT_NAMES}
    rows = []
    for row in range(query_embeds.shape[0]):
        prompt = parse_prompt(None if prompts is None else prompts[row])
        settings = parse_settings({n: (None if a is None else a[row]) for n, a in settings_inputs.items()})
        rows.append(GenerationRequest(query_embeds[row], prompt, settings))
    return rows
