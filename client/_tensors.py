"""The only module of the SDK that builds tritonclient tensors and reads them back.

One request of the public ``blip2`` ensemble: ``image`` (encoded bytes), optional ``text_input``
and the generation settings that are set, each shaped ``[1, 1]`` (batch of one, dims ``[1]``);
``text_output`` is read back as ``str``; the retrieval models' inputs and float outputs likewise.
Works for both flavours: the gRPC and HTTP ``InferInput`` classes (their asyncio clients use the
same classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blip2_triton.runtime.contract import (
    GENERATION_INPUTS,
    IMAGE,
    RETRIEVAL_TEXT,
    TEXT_INPUT,
    TEXT_OUTPUT,
    TensorSpec,
)

from .settings import GenerationSettings

PROTOCOLS = ("grpc", "http")

_SPECS: dict[str, TensorSpec] = {spec.name: spec for spec in (IMAGE, TEXT_INPUT, *GENERATION_INPUTS)}


def check_protocol(protocol: str) -> str:
    """``protocol`` lower-cased, or ValueError when it is neither grpc nor http."""
    normalised = str(protocol).lower()
    if normalised not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return normalised


def _module(protocol: str):
    if check_protocol(protocol) == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def triton_datatype(spec: TensorSpec) -> str:
    """The wire datatype of a contract tensor (``TYPE_STRING`` -> ``BYTES``, ``TYPE_INT32`` -> ``INT32``)."""
    name = spec.triton_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def image_array(image: bytes) -> np.ndarray:
    """The ``image`` input array (encoded bytes), shape ``[1, 1]``."""
    if not isinstance(image, bytes):
        raise TypeError(f"image must be encoded bytes here, got {type(image).__name__}")
    return np.array([[image]], dtype=object)


def prompt_arrays(prompt: str | None, settings: GenerationSettings) -> dict[str, np.ndarray]:
    """The ``text_input`` (when given) and set settings arrays, by tensor name, each ``[1, 1]``."""
    arrays = {}
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        arrays[TEXT_INPUT.name] = np.array([[prompt.encode("utf-8")]], dtype=object)
    for name, value in settings.to_dict().items():
        arrays[name] = np.array([[value]], dtype=np.dtype(_SPECS[name].numpy_dtype))
    return arrays


def request_arrays(image: bytes, prompt: str | None, settings: GenerationSettings) -> dict[str, np.ndarray]:
    """The input arrays of one request, by tensor name, each of shape ``[1, 1]``."""
    return {IMAGE.name: image_array(image), **prompt_arrays(prompt, settings)}


def _infer_input(module: Any, spec: TensorSpec, array: np.ndarray) -> Any:
    tensor = module.InferInput(spec.name, list(array.shape), triton_datatype(spec))
    tensor.set_data_from_numpy(array)
    return tensor


def image_input(protocol: str, image: bytes) -> Any:
    """The ``image`` ``InferInput``, serialised once: it may be sent with any number of requests."""
    return _infer_input(_module(protocol), IMAGE, image_array(image))


def prompt_inputs(protocol: str, prompt: str | None, settings: GenerationSettings) -> list[Any]:
    """The ``text_input`` and settings ``InferInput`` objects of one request."""
    module = _module(protocol)
    return [
        _infer_input(module, _SPECS[name], array) for name, array in prompt_arrays(prompt, settings).items()
    ]


def build_inputs(protocol: str, image: bytes, prompt: str | None, settings: GenerationSettings) -> list[Any]:
    """tritonclient ``InferInput`` objects for one request (``protocol``: ``"grpc"`` or ``"http"``)."""
    return [image_input(protocol, image), *prompt_inputs(protocol, prompt, settings)]


def requested_outputs(protocol: str, names: tuple[str, ...] = (TEXT_OUTPUT.name,)) -> list[Any]:
    """The outputs to ask for, by name (default ``text_output``); binary over HTTP."""
    module = _module(protocol)
    if protocol == "http":
        return [module.InferRequestedOutput(name, binary_data=True) for name in names]
    return [module.InferRequestedOutput(name) for name in names]


def read_text(result: Any) -> str:
    """``text_output`` of an ``InferResult`` (either flavour) as ``str``."""
    array = result.as_numpy(TEXT_OUTPUT.name)
    if array is None or array.size != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"expected one '{TEXT_OUTPUT.name}' value in the response, got shape {shape}")
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# -- image-text retrieval: blip2_image_embed, blip2_text_embed, blip2_itm ----------------------------


def retrieval_inputs(protocol: str, image: bytes | None = None, text: str | None = None) -> list[Any]:
    """Inputs of one retrieval request: ``image`` (encoded bytes) and/or ``text_input``, each ``[1, 1]``."""
    module = _module(protocol)
    inputs = []
    if image is not None:
        inputs.append(_infer_input(module, IMAGE, image_array(image)))
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        inputs.append(_infer_input(module, RETRIEVAL_TEXT, np.array([[text.encode("utf-8")]], dtype=object)))
    return inputs


def read_array(result: Any, name: str) -> np.ndarray:
    """Output ``name`` of a one-request ``InferResult`` as float32, without the batch dimension."""
    array = result.as_numpy(name)
    if array is None or array.ndim < 1 or array.shape[0] != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"expected one '{name}' row in the response, got shape {shape}")
    return np.asarray(array[0], dtype=np.float32)
