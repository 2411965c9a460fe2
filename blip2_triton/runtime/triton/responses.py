"""Triton Python-backend glue for answering requests: inputs, responses, errors, parameters.

Imported by the repository's ``model.py`` files and the rest of ``runtime/triton/`` only; everything
outside ``runtime/triton/`` imports without Triton.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from ..errors import RequestValidationError, code_of, one_line, tagged

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class ModelLogger:
    """``pb_utils.Logger`` with the model's name as prefix."""

    def __init__(self, model_name: str) -> None:
        self.prefix = f"[{model_name}] "

    def info(self, message: str) -> None:
        pb_utils.Logger.log_info(self.prefix + message)

    def error(self, message: str) -> None:
        pb_utils.Logger.log_error(self.prefix + message)


def triton_error(exc: BaseException, logger: ModelLogger, *, tag: bool = False):
    """The one-line ``TritonError`` for an exception: bad input INVALID_ARG, a full engine
    UNAVAILABLE, a cancellation CANCELLED, anything else INTERNAL (with the traceback logged).
    ``tag``: the code also leads the message, for a relay to read back."""
    code = code_of(exc)
    if code == "INTERNAL":
        logger.error("".join(traceback.format_exception(exc)))
        return pb_utils.TritonError(
            one_line(f"internal error: {type(exc).__name__}: {exc}"), pb_utils.TritonError.INTERNAL
        )
    message = one_line(exc)
    return pb_utils.TritonError(
        tagged(message, code) if tag else message, getattr(pb_utils.TritonError, code)
    )


def error_response(exc: BaseException, logger: ModelLogger, *, tag: bool = False):
    """A response carrying the one-line error for ``exc`` (see ``triton_error``)."""
    return pb_utils.InferenceResponse(error=triton_error(exc, logger, tag=tag))


def input_array(request, name: str) -> np.ndarray | None:
    """The named input of a request as a numpy array, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def required_rows(request, name: str) -> list[np.ndarray]:
    """The rows of a required input (one item per row of the request's batch)."""
    array = input_array(request, name)
    if array is None:
        raise RequestValidationError(f"input '{name}' is required")
    return list(array)


def output_response(outputs: dict[str, np.ndarray]):
    """A response with the given output tensors."""
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in outputs.items()])


def respond_each(requests: Sequence[Any], handle: Callable[[Any], Any], logger: ModelLogger) -> list:
    """Answer every request with ``handle(request)`` or its own error; never drop one."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as exc:
            responses.append(error_response(exc, logger))
    return responses


def model_parameter(model_config: dict, key: str, default: str | None = None) -> str:
    """A ``parameters`` entry of the model config; a missing one without default fails the load."""
    entry = model_config.get("parameters", {}).get(key)
    if entry is None:
        if default is None:
            raise pb_utils.TritonModelException(f"model config lacks parameter '{key}'")
        return default
    return entry["string_value"]


def respond_batched(
    requests: Sequence[Any],
    parse: Callable[[Any], list],
    run: Callable[[list], dict[str, np.ndarray]],
    logger: ModelLogger,
) -> list:
    """Parse each request on its own, run the good ones as one batch, answer every request.

    ``parse(request)`` returns the request's items (one per row of its batch) or raises (that request
    alone gets the error); ``run(items)`` returns output arrays with one row per item, split back
    to the requests in order. A failure of ``run`` is every batched request's error.
    """
    responses: list = [None] * len(requests)
    items: list = []
    owners: list[tuple[int, int, int]] = []
    for index, request in enumerate(requests):
        try:
            parsed = parse(request)
        except Exception as exc:
            responses[index] = error_response(exc, logger)
            continue
        owners.append((index, len(items), len(parsed)))
        items.extend(parsed)
    if owners:
        try:
            outputs = run(items)
        except Exception as exc:
            for index, _, _ in owners:
                responses[index] = error_response(exc, logger)
        else:
            for index, start, count in owners:
                responses[index] = output_response({k: v[start : start + count] for k, v in outputs.items()})
    return responses


def text_array(texts: Sequence[str]) -> np.ndarray:
    """``[N, 1]`` TYPE_STRING tensor of UTF-8 texts."""
    return np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
