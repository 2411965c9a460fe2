"""Raw tritonclient requests for tests that must control exactly what goes over the wire."""

from __future__ import annotations

import queue
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from blip2_triton.runtime.contract import PUBLIC_INPUTS, PUBLIC_MODEL

_SPECS = {spec.name: spec for spec in PUBLIC_INPUTS}
_WIRE_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32", "TYPE_UINT64": "UINT64"}


@dataclass
class Outcome:
    text: str | None = None
    status: str | None = None
    message: str | None = None


def build_inputs(image: bytes, prompt: str | None = None, **generation) -> list[grpcclient.InferInput]:
    values: dict[str, object] = {"image": image, **generation}
    if prompt is not None:
        values["text_input"] = prompt.encode("utf-8")
    inputs = []
    for name, value in values.items():
        spec = _SPECS[name]
        array = np.array(
            [[value]], dtype=np.object_ if spec.triton_type == "TYPE_STRING" else spec.numpy_dtype
        )
        tensor = grpcclient.InferInput(name, list(array.shape), _WIRE_TYPES[spec.triton_type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer_concurrently(url: str, requests: Sequence[dict], timeout_s: float = 300.0) -> list[Outcome]:
    """Send every request at once with ``async_infer`` (so the server can batch them)."""
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    try:
        for index, request in enumerate(requests):
            client.async_infer(
                PUBLIC_MODEL,
                build_inputs(**request),
                callback=lambda result, error, index=index: answers.put((index, result, error)),
                outputs=[grpcclient.InferRequestedOutput("text_output")],
            )
        outcomes: list[Outcome | None] = [None] * len(requests)
        for _ in requests:
            index, result, error = answers.get(timeout=timeout_s)
            if error is not None:
                outcomes[index] = Outcome(status=error.status(), message=error.message())
            else:
                outcomes[index] = Outcome(text=result.as_numpy("text_output")[0][0].decode("utf-8"))
        return outcomes  # type: ignore[return-value]
    finally:
        client.close()


def batch_statistics(url: str, model: str, *, at_least: int = 0, timeout_s: float = 10.0) -> tuple[int, int]:
    """(inference_count, execution_count) of a model: more inferences than executions = batching.

    Triton counts an inference just after it sends the response, so a caller that has all its
    answers passes ``at_least`` (the count it expects) and this waits, briefly, for the counters.
    """
    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            stats = client.get_inference_statistics(model).model_stats[0]
            if stats.inference_count >= at_least or time.monotonic() > deadline:
                return stats.inference_count, stats.execution_count
            time.sleep(0.05)
    finally:
        client.close()


def assert_rejected(outcome: Outcome, fragment: str) -> None:
    """The request got INVALID_ARG with a one-line message containing ``fragment``."""
    assert outcome.status == "StatusCode.INVALID_ARGUMENT", outcome
    assert fragment in outcome.message, outcome.message
    assert "\n" not in outcome.message and "Traceback" not in outcome.message


def engine_counters(metrics_url: str, model: str = "blip2_stream") -> tuple[float, float]:
    """(decode steps, decoded rows) of the LLM engine, from Triton's metrics port: rows above
    steps = sequences shared decode steps (the engine publishes them every 0.25 s)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if (
            line.startswith(("blip2_decode_steps_total", "blip2_decoded_rows_total"))
            and f'model="{model}"' in line
        ):
            values[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return values.get("blip2_decode_steps_total", 0.0), values.get("blip2_decoded_rows_total", 0.0)


def settled_engine_counters(metrics_url: str) -> tuple[float, float]:
    """``engine_counters`` once they stop moving (the engine publishes every 0.25 s)."""
    previous = engine_counters(metrics_url)
    while True:
        time.sleep(0.6)
        current = engine_counters(metrics_url)
        if current == previous:
            return current
        previous = current


def scrape_metrics(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page (Triton's metrics port), ``name{labels}`` -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
