"""Triton Python model `blip2_stream` (decoupled): the public streaming model and the one engine.

It holds the in-flight generation engine and answers every generation request itself: a client's
stream (one response per new piece of text, then a final flag) and what the unary front `blip2`
relays (input `stream` false: one response with the whole text; `cancel` true: cancel the relayed
request with the same id). The engine's answers go to the client's own response sender, sent from a
thread of their own (``SendThread``: the decode thread never waits for a send), and the engine polls
the client's cancel flag, so every cancel (gRPC cancel, closed stream, passed deadline) reaches it
without a second Triton request. The logic is in blip2_runtime.llm (front, engine, responder,
relayed); this file only adapts Triton's requests and responses.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import triton_python_backend_utils as pb_utils
from blip2_runtime.contract import CANCEL, PUBLIC_INPUTS, STREAM, TEXT_OUTPUT
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.llm.engine import EngineLimits, InflightEngine
from blip2_runtime.llm.front import Front
from blip2_runtime.llm.relayed import RelayedRequests
from blip2_runtime.llm.responder import RequestResponder, throttled
from blip2_runtime.llm.send_thread import SendThread
from blip2_runtime.triton.bls import BlsVision
from blip2_runtime.triton.loop import BackgroundLoop
from blip2_runtime.triton.metrics import EngineMetrics
from blip2_runtime.triton.responses import (
    FINAL,
    ModelLogger,
    error_response,
    input_array,
    model_parameter,
    output_response,
    text_array,
)
from blip2_runtime.vision.onnx_graph import CPU_ROWS_PER_RUN
from blip2_runtime.vision.preprocess import ImagePreprocessor

CANCEL_CHECK_S = 0.01  # how often a client's cancel flag is asked (each a round trip to the server)
RELAYED_CANCEL_CHECK_S = 0.5


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(f"{config['name']} must be decoupled")
        limits = EngineLimits(
            max_active=int(model_parameter(config, "max_active_sequences")),
            max_sequence_tokens=int(model_parameter(config, "max_sequence_tokens")),
            max_queued=int(model_parameter(config, "max_queued_requests")),
            prefix_cache_bytes=int(model_parameter(config, "prefix_cache_mb", "0")) * 2**20,
        )
        device = model_parameter(config, "device")
        here = Path(__file__).resolve().parent
        self.engine = InflightEngine.launch(here, device=device, limits=limits)  # loads on its own thread
        self.front = Front(
            ImagePreprocessor(here / "image_processor"),
            self.engine.checker,
            BlsVision(),
            self.engine,
            max_vision_batch=max(1, int(config.get("max_batch_size", 1))),
            # blip2_vision's response cache answers per request: with it on, each image goes alone.
            vision_per_image=model_parameter(config, "vision_cache") == "true",
            # On a CPU blip2_vision runs CPU_ROWS_PER_RUN rows at a time: the gate sends that many per
            # request, and images that arrive meanwhile join the batch (a GPU takes the batch whole).
            vision_chunk_rows=CPU_ROWS_PER_RUN if device == "cpu" else 0,
        )
        self.metrics = EngineMetrics(config["name"], self.engine)
        self.drain_timeout_s = float(model_parameter(config, "drain_timeout_s", "600"))
        self.relayed = RelayedRequests()
        # Every response to an accepted request is sent from here, never from the decode thread.
        self.responses = SendThread()
        # BLIP2_TRITON_TIMELINE=1 in the server's environment: one log line per request with the
        # end of each stage (benchmarks/bench_timeline.py reads them).
        self.log_timeline = os.environ.get("BLIP2_TRITON_TIMELINE", "") == "1"
        self.loop = BackgroundLoop(self.logger)
        self.logger.info(f"ready ({model_parameter(config, 'llm_family')} on {device}, {limits})")

    def execute(self, requests):
        for request in requests:
            self._accept(request)
        return None

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id() or ""
        relayed = self.relayed.is_relayed(request_id)
        if _flag(input_array(request, CANCEL), default=False):
            self.relayed.cancel(request_id)
            sender.send(flags=FINAL)
            return
        try:
            rows = self.front.parse({spec.name: input_array(request, spec.name) for spec in PUBLIC_INPUTS})
            stream = _flag(input_array(request, STREAM), default=True)
            if stream and len(rows) != 1:
                raise RequestValidationError(f"a streaming request holds one image, got {len(rows)}")
            self.engine.reserve(len(rows))  # refused here, at once, when the engine is full
        except Exception as exc:
            self.metrics.errored(exc)
            sender.send(error_response(exc, self.logger, tag=relayed), flags=FINAL)
            return
        holder: list[RequestResponder] = []
        responder = RequestResponder(
            len(rows),
            stream=stream,
            send=self._sender(sender, request_id, holder, relayed),
            # A relayed request's client is watched by the relay, which sends a cancel: its own
            # flag (a round trip to the server each time) is asked seldom, as a safety net only.
            client_cancelled=throttled(
                sender.is_cancelled, RELAYED_CANCEL_CHECK_S if relayed else CANCEL_CHECK_S
            ),
        )
        holder.append(responder)
        self.relayed.add(request_id, responder)
        self.metrics.submitted(responder)
        self.front.expect(rows)
        for index, row in enumerate(rows):
            self.loop.submit(self._generate(row, index, responder))

    async def _generate(self, row, index: int, responder: RequestResponder) -> None:
        """Encode one row's image and hand it to the engine; a failure is that request's answer."""
        try:
            query_embeds = await self.front.encode(row, responder.cancelled, responder.mark)
            cancelled = responder.cancelled()
        except Exception as exc:
            self.engine.unreserve()
            responder.fail(index, exc)  # the request's other rows see is_cancelled() and leave
            return
        try:
            if cancelled:
                self.engine.unreserve()
                responder.sink(index).on_cancelled()
            else:  # submit uses the reservation up, even when it raises
                self.engine.submit(row.request(query_embeds), responder.sink(index), reserved=True)
                self.metrics.admitted(len(row.prompt_ids))
        except Exception as exc:
            responder.fail(index, exc)

    def _sender(self, sender, request_id: str, holder: list, relayed: bool):
        def send(texts, error, final):
            if final:
                self.relayed.finished(request_id)
                self.metrics.finished(holder[0], cancelled=holder[0].cancelled_by_client)
            if error is not None:
                self.metrics.errored(error)
                sender.send(error_response(error, self.logger, tag=relayed), flags=FINAL)
            elif texts is not None:
                response = output_response({TEXT_OUTPUT.name: text_array(texts)})
                sender.send(response, flags=FINAL if final else 0)
            else:
                sender.send(flags=FINAL if final else 0)
            if final and self.log_timeline:
                holder[0].mark("sent")
                stages = " ".join(f"{name}={ms}" for name, ms in holder[0].timeline_ms().items())
                self.logger.info(f"timeline {stages}")

        return self.responses.wrap(send)

    def finalize(self):
        cut = self.engine.close(drain_timeout_s=self.drain_timeout_s)
        if cut:
            self.logger.error(f"shutdown cut off {cut} request(s) still generating")
        if not self.responses.close():
            self.logger.error("shutdown: responses still being sent after 30 s")
        self.metrics.close()
        self.loop.close()


def _flag(array, *, default: bool) -> bool:
    """A boolean control input: its first value, or ``default`` when the request left it out."""
    return default if array is None else bool(np.asarray(array).reshape(-1)[0])
