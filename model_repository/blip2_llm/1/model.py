"""Triton Python model `blip2_llm` (decoupled): the one in-flight generation engine.

`execute()` only parses, checks and hands requests to the engine, whose thread answers them: one
response with the whole text (input `stream` false or absent) or one response per new piece of
text then a final flag (`stream` true). A request carrying only `cancel` = true cancels the
in-flight request with the same request id (how a BLS front passes a client's cancel on).
"""

import json
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import triton_python_backend_utils as pb_utils
from blip2_runtime.contract import (
    CANCEL,
    GENERATION_INPUT_NAMES,
    QUERY_EMBEDS,
    STREAM,
    TEXT_INPUT,
    TEXT_OUTPUT,
)
from blip2_runtime.engine import GenerationRequest
from blip2_runtime.errors import RequestValidationError
from blip2_runtime.generation import parse_prompt, parse_settings
from blip2_runtime.inflight_engine import EngineLimits, InflightEngine
from blip2_runtime.request_responder import RequestResponder
from blip2_runtime.triton_adapter import (
    FINAL,
    ModelLogger,
    error_response,
    input_array,
    model_parameter,
    output_response,
    text_array,
)
from blip2_runtime.triton_metrics import EngineMetrics


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.logger = ModelLogger(config["name"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("blip2_llm must be decoupled (model_transaction_policy)")
        limits = EngineLimits(
            max_active=int(model_parameter(config, "max_active_sequences")),
            max_sequence_tokens=int(model_parameter(config, "max_sequence_tokens")),
            max_queued=int(model_parameter(config, "max_queued_requests")),
        )
        device = model_parameter(config, "device")
        self.engine = InflightEngine.from_folder(
            Path(__file__).resolve().parent, device=device, limits=limits
        )
        self.engine.start()
        self.metrics = EngineMetrics(config["name"], self.engine)
        self.drain_timeout_s = float(model_parameter(config, "drain_timeout_s", "600"))
        self.in_flight: dict[str, RequestResponder] = {}
        self.lock = threading.Lock()
        self.logger.info(f"ready ({model_parameter(config, 'llm_family')} on {device}, {limits})")

    def execute(self, requests):
        for request in requests:
            self._accept(request)
        return None

    def _accept(self, request) -> None:
        sender = request.get_response_sender()
        request_id = request.request_id()
        cancel = input_array(request, CANCEL)
        if cancel is not None and bool(np.asarray(cancel).reshape(-1)[0]):
            with self.lock:
                target = self.in_flight.get(request_id) if request_id else None
            if target is not None:
                target.cancel()
            sender.send(flags=FINAL)
            return
        try:
            rows, stream = _parse_request(request)
        except Exception as exc:
            sender.send(error_response(exc, self.logger), flags=FINAL)
            return
        holder: list[RequestResponder] = []  # the responder, for its own send callback
        responder = RequestResponder(
            len(rows),
            stream=stream,
            send=self._sender(sender, request_id, holder),
            client_cancelled=_throttled(sender.is_cancelled),
        )
        holder.append(responder)
        if request_id:
            with self.lock:
                self.in_flight[request_id] = responder
        for row, item in enumerate(rows):
            try:
                self.metrics.submitted(responder)
                self.engine.submit(item, responder.sink(row))
            except Exception as exc:
                responder.fail(row, exc)  # the rows already submitted see is_cancelled() and leave
                break

    def _sender(self, sender, request_id: str, holder: list):
        def send(texts, error, final):
            if final:
                if request_id:
                    with self.lock:
                        self.in_flight.pop(request_id, None)
                self.metrics.finished(holder[0], cancelled=holder[0].cancelled_by_client)
            if error is not None:
                sender.send(error_response(error, self.logger), flags=FINAL)
            elif texts is not None:
                response = output_response({TEXT_OUTPUT.name: text_array(texts)})
                sender.send(response, flags=FINAL if final else 0)
            else:
                sender.send(flags=FINAL if final else 0)

        return send

    def finalize(self):
        cut = self.engine.close(drain_timeout_s=self.drain_timeout_s)
        if cut:
            self.logger.error(f"shutdown cut off {cut} request(s) still generating")
        self.metrics.close()


def _parse_request(request) -> tuple[list[GenerationRequest], bool]:
    query_embeds = input_array(request, QUERY_EMBEDS)
    if query_embeds is None:
        raise RequestValidationError(f"input '{QUERY_EMBEDS}' is required")
    stream_input = input_array(request, STREAM)
    stream = stream_input is not None and bool(np.asarray(stream_input).reshape(-1)[0])
    if stream and query_embeds.shape[0] != 1:
        raise RequestValidationError(f"a streaming request holds one row, got {query_embeds.shape[0]}")
    prompts = input_array(request, TEXT_INPUT.name)
    settings_inputs = {name: input_array(request, name) for name in GENERATION_INPUT_NAMES}
    rows = []
    for row in range(query_embeds.shape[0]):
        prompt = parse_prompt(None if prompts is None else prompts[row])
        settings = parse_settings({n: (None if a is None else a[row]) for n, a in settings_inputs.items()})
        rows.append(GenerationRequest(query_embeds[row], prompt, settings))
    return rows, stream


def _throttled(check, interval_s: float = 0.01):
    """``check()`` at most every ``interval_s`` (each call is a round trip to the server)."""
    import time

    state = {"at": 0.0, "value": False}

    def throttled() -> bool:
        now = time.monotonic()
        if not state["value"] and now - state["at"] >= interval_s:
            state["at"], state["value"] = now, bool(check())
        return state["value"]

    return throttled
