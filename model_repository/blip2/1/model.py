"""Triton Python model `blip2`: the public unary model, a relay to the engine model `blip2_stream`.

Each request goes over as it came (with `stream` false); the engine model checks it, encodes its
images and generates, and answers once with every row's text (or the one-line error, whose code the
relay keeps). When the client cancels or its deadline passes, the relay cancels the request in the
engine and answers CANCELLED at once. The work is in blip2_runtime.triton.relay.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from blip2_runtime.contract import PUBLIC_INPUTS, TEXT_OUTPUT
from blip2_runtime.triton.loop import BackgroundLoop
from blip2_runtime.triton.relay import Relay
from blip2_runtime.triton.responses import FINAL, ModelLogger, error_response, input_array, output_response


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        self.relay = Relay()
        self.loop = BackgroundLoop(self.logger)
        self.logger.info("ready")

    def execute(self, requests):
        for request in requests:
            self.loop.submit(self._answer(request))
        return None

    async def _answer(self, request):
        sender = request.get_response_sender()
        try:
            inputs = {spec.name: input_array(request, spec.name) for spec in PUBLIC_INPUTS}
            present = {name: array for name, array in inputs.items() if array is not None}
            texts = await self.relay.run(present, request.is_cancelled)
            response = output_response({TEXT_OUTPUT.name: texts})
        except Exception as exc:
            response = error_response(exc, self.logger)
        sender.send(response, flags=FINAL)

    def finalize(self):
        self.loop.close()
