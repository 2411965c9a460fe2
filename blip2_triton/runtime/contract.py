"""The public contract of a blip2-triton model repository: model names, tensors, limits.

Pure data, shared by the export (config rendering), the Triton models (validation) and the client
SDK (request building). Changing a name here changes the public API.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any

# Model names.
PUBLIC_MODEL = "blip2"  # the public unary model
STREAM_MODEL = "blip2_stream"  # the public streaming model (decoupled): one response per new piece
PREPROCESS_MODEL = "blip2_preprocess"
VISION_MODEL = "blip2_vision"
# The model that holds the one in-flight generation engine: the public streaming model itself, so a
# stream's responses go from the engine straight to its client (no decoupled BLS stream between).
ENGINE_MODEL = STREAM_MODEL
# What older exports called the engine's model (a client asks it for llm_family when the engine
# model has no such parameter).
LEGACY_LLM_MODEL = "blip2_llm"

# Internal wires between the steps.
PIXEL_VALUES = "pixel_values"
QUERY_EMBEDS = "query_embeds"
# Optional inputs of the engine model, for the unary front ``blip2`` that relays to it: ``stream``
# false = one response with the whole text (default true: one response per piece); ``cancel`` true =
# a control message that cancels the relayed request with the same request id (ids that start with
# RELAY_ID_PREFIX only, so no client can cancel another's stream).
STREAM = "stream"
CANCEL = "cancel"
RELAY_ID_PREFIX = "blip2-relay-"

# Limits (documented in the README).
DEFAULT_MAX_TOKENS = 30
MAX_TOKENS_CAP = 512
MAX_BEAM_WIDTH = 8
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 200.0
MAX_PROMPT_CHARS = 16_384
ALLOWED_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model (dims exclude the batch dimension).

    A dim that is a string names a size of the checkpoint (``"image_height"``, ``"embed_dim"``):
    the export writes the checkpoint's number in its place.
    """

    name: str
    triton_type: str
    dims: tuple[int | str, ...]
    optional: bool = False
    doc: str = ""

    @property
    def numpy_dtype(self) -> str:
        return _NUMPY_DTYPES[self.triton_type]


_NUMPY_DTYPES = {
    "TYPE_STRING": "object",
    "TYPE_BOOL": "bool",
    "TYPE_INT32": "int32",
    "TYPE_UINT64": "uint64",
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_BF16": "float32",
}

IMAGE = TensorSpec("image", "TYPE_STRING", (1,), doc="encoded image file bytes")
TEXT_INPUT = TensorSpec("text_input", "TYPE_STRING", (1,), optional=True, doc="prompt; empty = caption")
TEXT_OUTPUT = TensorSpec("text_output", "TYPE_STRING", (1,), doc="generated text, prompt excluded")

_UINT64_MAX = 2**64 - 1


def _setting(triton_type: str, doc: str) -> Any:
    """A generation setting: optional, ``None`` = the server's (checkpoint's) default."""
    return field(default=None, metadata={"triton_type": triton_type, "doc": doc})


@dataclass(frozen=True)
class GenerationSettings:
    """How one request generates; each field is the optional input tensor of the same name.

    The one list of generation settings: the configs, the Triton models, the client SDK and the
    CLI all take them from here. ``None`` means "not sent": the server then applies the
    checkpoint's own default (``max_tokens``: ``DEFAULT_MAX_TOKENS``). Types are checked here;
    ranges are checked by the server (``runtime.settings.parse_settings``).
    """

    max_tokens: int | None = _setting("TYPE_INT32", f"new tokens at most (default {DEFAULT_MAX_TOKENS})")
    min_tokens: int | None = _setting("TYPE_INT32", "new tokens at least")
    beam_width: int | None = _setting("TYPE_INT32", "beams (default 1)")
    temperature: float | None = _setting("TYPE_FP32", "> 0 turns sampling on")
    top_p: float | None = _setting("TYPE_FP32", "nucleus sampling")
    top_k: int | None = _setting("TYPE_INT32", "top-k sampling")
    repetition_penalty: float | None = _setting("TYPE_FP32", "as in transformers")
    length_penalty: float | None = _setting("TYPE_FP32", "beam length penalty")
    no_repeat_ngram_size: int | None = _setting("TYPE_INT32", "as in transformers")
    random_seed: int | None = _setting("TYPE_UINT64", "same seed, same request, same text")

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            if value is None:
                continue
            if setting.metadata["triton_type"] == "TYPE_FP32":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                expected = "a number"
            else:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                expected = "an integer"
            if not ok:
                raise TypeError(f"{setting.name} must be {expected}, got {type(value).__name__} {value!r}")
        if self.random_seed is not None and not 0 <= self.random_seed <= _UINT64_MAX:
            raise ValueError(f"random_seed must fit in an unsigned 64-bit integer, got {self.random_seed}")

    @property
    def sampling(self) -> bool:
        """A temperature above 0 turns sampling on."""
        return self.temperature is not None and self.temperature > 0

    def to_dict(self) -> dict[str, int | float]:
        """The fields that are set, by tensor name."""
        return {s.name: getattr(self, s.name) for s in fields(self) if getattr(self, s.name) is not None}

    def merged(self, **changes: Any) -> GenerationSettings:
        """A copy with ``changes`` applied; a change to None leaves the field as it is."""
        unknown = sorted(set(changes) - set(GENERATION_INPUT_NAMES))
        if unknown:
            raise TypeError(
                f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(GENERATION_INPUT_NAMES)}"
            )
        set_changes = {name: value for name, value in changes.items() if value is not None}
        return replace(self, **set_changes) if set_changes else self


GENERATION_INPUTS: tuple[TensorSpec, ...] = tuple(
    TensorSpec(s.name, s.metadata["triton_type"], (1,), True, s.metadata["doc"])
    for s in fields(GenerationSettings)
)
GENERATION_INPUT_NAMES: tuple[str, ...] = tuple(spec.name for spec in GENERATION_INPUTS)

PUBLIC_INPUTS: tuple[TensorSpec, ...] = (IMAGE, TEXT_INPUT, *GENERATION_INPUTS)
PUBLIC_OUTPUTS: tuple[TensorSpec, ...] = (TEXT_OUTPUT,)
# Image-text retrieval (Blip2ForImageTextRetrieval checkpoints): public models.
IMAGE_EMBED_MODEL = "blip2_image_embed"
TEXT_EMBED_MODEL = "blip2_text_embed"
ITM_MODEL = "blip2_itm"
# Internal models of a retrieval repository (called by blip2_image_embed and blip2_itm).
IMAGE_ENCODER_MODEL = "blip2_image_encoder"
ITM_HEAD_MODEL = "blip2_itm_head"
# Internal wire: the vision encoder's last hidden state (CLS + patches), the ITM head's keys/values.
VISION_HIDDEN_STATES = "vision_hidden_states"
# Inputs of the exported text graphs (the Q-Former's tokens), set at export.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"

RETRIEVAL_TEXT = TensorSpec("text_input", "TYPE_STRING", (1,), doc="text; empty is refused")
IMAGE_EMBEDS = TensorSpec(
    "image_embeds", "TYPE_FP32", ("num_query_tokens", "embed_dim"), doc="L2-normalised query features [Q, D]"
)
TEXT_EMBEDS = TensorSpec("text_embeds", "TYPE_FP32", ("embed_dim",), doc="L2-normalised text feature [D]")
ITM_SCORE = TensorSpec("itm_score", "TYPE_FP32", (1,), doc="match probability of the ITM head")
ITC_SCORE = TensorSpec("itc_score", "TYPE_FP32", (1,), doc="max over queries of the cosine similarity")

# The internal wires and control flags as tensors (their names above).
PIXEL_VALUES_TENSOR = TensorSpec(
    PIXEL_VALUES, "TYPE_FP32", (3, "image_height", "image_width"), doc="preprocessed image"
)
QUERY_EMBEDS_TENSOR = TensorSpec(
    QUERY_EMBEDS, "TYPE_FP32", ("num_query_tokens", "llm_hidden"), doc="query tokens in the LLM's space"
)
VISION_HIDDEN_STATES_TENSOR = TensorSpec(
    VISION_HIDDEN_STATES, "TYPE_FP32", ("vision_tokens", "vision_hidden"), doc="vision encoder output"
)
STREAM_FLAG = TensorSpec(STREAM, "TYPE_BOOL", (1,), optional=True, doc="false = one response")
CANCEL_FLAG = TensorSpec(CANCEL, "TYPE_BOOL", (1,), optional=True, doc="cancel a relayed request")


@dataclass(frozen=True)
class ModelTensors:
    """The inputs and outputs of one model, as its ``config.pbtxt`` declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


# Every model an export writes, by name: the one source of the configs' tensor lines.
MODEL_TENSORS: dict[str, ModelTensors] = {
    PUBLIC_MODEL: ModelTensors(PUBLIC_INPUTS, PUBLIC_OUTPUTS),
    STREAM_MODEL: ModelTensors((*PUBLIC_INPUTS, STREAM_FLAG, CANCEL_FLAG), PUBLIC_OUTPUTS),
    PREPROCESS_MODEL: ModelTensors((IMAGE,), (PIXEL_VALUES_TENSOR,)),
    VISION_MODEL: ModelTensors((PIXEL_VALUES_TENSOR,), (QUERY_EMBEDS_TENSOR,)),
    IMAGE_ENCODER_MODEL: ModelTensors((PIXEL_VALUES_TENSOR,), (IMAGE_EMBEDS, VISION_HIDDEN_STATES_TENSOR)),
    IMAGE_EMBED_MODEL: ModelTensors((IMAGE,), (IMAGE_EMBEDS,)),
    TEXT_EMBED_MODEL: ModelTensors((RETRIEVAL_TEXT,), (TEXT_EMBEDS,)),
    ITM_HEAD_MODEL: ModelTensors(
        (VISION_HIDDEN_STATES_TENSOR, IMAGE_EMBEDS, TEXT_EMBEDS, RETRIEVAL_TEXT), (ITM_SCORE, ITC_SCORE)
    ),
    ITM_MODEL: ModelTensors((IMAGE, RETRIEVAL_TEXT), (ITM_SCORE, ITC_SCORE)),
}
