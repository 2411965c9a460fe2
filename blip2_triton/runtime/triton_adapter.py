"""The only runtime module that speaks Triton's Python backend: responses and errors.

Imported by the repository's ``model.py`` files only; everything else in this package imports
without Triton.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from .errors import InvalidRequestError


class ModelLogger:
    """``pb_utils.Logger`` with the model's name as prefix."""

    def __init__(self, model_name: str) -> None:
        self.prefix = f"[{model_name}] "

    def info(self, message: str) -> None:
        pb_utils.Logger.log_info(self.prefix + message)

    def error(self, message: str) -> None:
        pb_utils.Logger.log_error(self.prefix + message)


def error_response(exc: BaseException, logger: ModelLogger):
    """A response carrying a one-line error: INVALID_ARG for bad input, INTERNAL (logged) otherwise."""
    if isinstance(exc, InvalidRequestError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        )
    logger.error("".join(traceback.format_exception(exc)))
    message = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def input_array(request, name: str) -> np.ndarray | None:
    """The named input of a request as a numpy array, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


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
