"""The only module of the SDK that builds tritonclient tensors and reads them back.

One request of the public ``blip2`` ensemble: ``image`` (encoded bytes), optional ``text_input``
and the generation settings that are set, each shaped ``[1, 1]`` (batch of one, dims ``[1]``);
``text_output`` is read back as ``str``. Works for both flavours: the gRPC and HTTP
``InferInput`` classes (their asyncio clients use the same classes).
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


def request_arrays(image: bytes, prompt: str | None, settings: GenerationSettings) -> dict[str, np.ndarray]:
    """The input arrays of one request, by tensor name, each of shape ``[1, 1]``."""
    if not isinstance(image, bytes):
        raise TypeError(f"image must be encoded bytes here, got {type(image).__name__}")
    arrays = {IMAGE.name: np.array([[image]], dtype=object)}
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        arrays[TEXT_INPUT.name] = np.array([[prompt.encode("utf-8")]], dtype=object)
    for name, value in settings.to_dict().items():
        arrays[name] = np.array([[value]], dtype=np.dtype(_SPECS[name].numpy_dtype))
    return arrays


def build_inputs(protocol: str, image: bytes, prompt: str | None, settings: GenerationSettings) -> list[Any]:
    """tritonclient ``InferInput`` objects for one request (``protocol``: ``"grpc"`` or ``"http"``)."""
    module = _module(protocol)
    inputs = []
    for name, array in request_arrays(image, prompt, settings).items():
        tensor = module.InferInput(name, list(array.shape), triton_datatype(_SPECS[name]))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def requested_outputs(protocol: str) -> list[Any]:
    """The outputs to ask for: ``text_output`` (binary over HTTP)."""
    module = _module(protocol)
    if protocol == "http":
        return [module.InferRequestedOutput(TEXT_OUTPUT.name, binary_data=True)]
    return [module.InferRequestedOutput(TEXT_OUTPUT.name)]


def read_text(result: Any) -> str:
    """``text_output`` of an ``InferResult`` (either flavour) as ``str``."""
    array = result.as_numpy(TEXT_OUTPUT.name)
    if array is None or array.size != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"expected one '{TEXT_OUTPUT.name}' value in the response, got shape {shape}")
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# -- image-text retrieval: blip2_image_embed, blip2_text_embed, blip2_itm ----------------------------


def _bytes_input(module: Any, name: str, value: bytes) -> Any:
    array = np.array([[value]], dtype=object)
    tensor = module.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def _text_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text.encode("utf-8")


def retrieval_inputs(protocol: str, image: bytes | None = None, text: str | None = None) -> list[Any]:
    """Inputs of one retrieval request: ``image`` (encoded bytes) and/or ``text_input``, each ``[1, 1]``."""
    module = _module(protocol)
    inputs = []
    if image is not None:
        if not isinstance(image, bytes):
            raise TypeError(f"image must be encoded bytes here, got {type(image).__name__}")
        inputs.append(_bytes_input(module, IMAGE.name, image))
    if text is not None:
        inputs.append(_bytes_input(module, RETRIEVAL_TEXT.name, _text_bytes(text)))
    return inputs


def requested_arrays(protocol: str, names: tuple[str, ...]) -> list[Any]:
    """Outputs to ask for by name (binary over HTTP)."""
    module = _module(protocol)
    if protocol == "http":
        return [module.InferRequestedOutput(name, binary_data=True) for name in names]
    return [module.InferRequestedOutput(name) for name in names]


def read_array(result: Any, name: str) -> np.ndarray:
    """Output ``name`` of a one-request ``InferResult`` as float32, without the batch dimension."""
    array = result.as_numpy(name)
    if array is None or array.ndim < 1 or array.shape[0] != 1:
        shape = None if array is None else list(array.shape)
        raise ValueError(f"expected one '{name}' row in the response, got shape {shape}")
    return np.asarray(array[0], dtype=np.float32)
