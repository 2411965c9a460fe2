"""The public contract of a blip2-triton model repository: model names, tensors, limits.

Pure data, shared by the export (config rendering), the Triton models (validation) and the client
SDK (request building). Changing a name here changes the public API.
"""

from __future__ import annotations

from dataclasses import dataclass

# Model names.
ENSEMBLE_MODEL = "blip2"
PREPROCESS_MODEL = "blip2_preprocess"
VISION_MODEL = "blip2_vision"
LLM_MODEL = "blip2_llm"

# Internal wires between the steps of the ensemble.
PIXEL_VALUES = "pixel_values"
QUERY_EMBEDS = "query_embeds"

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
    """One tensor of the public `blip2` ensemble (dims exclude the batch dimension)."""

    name: str
    triton_type: str
    dims: tuple[int, ...]
    optional: bool = False
    doc: str = ""

    @property
    def numpy_dtype(self) -> str:
        return _NUMPY_DTYPES[self.triton_type]


_NUMPY_DTYPES = {
    "TYPE_STRING": "object",
    "TYPE_INT32": "int32",
    "TYPE_UINT64": "uint64",
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_BF16": "float32",
}

IMAGE = TensorSpec("image", "TYPE_STRING", (1,), doc="encoded image file bytes")
TEXT_INPUT = TensorSpec("text_input", "TYPE_STRING", (1,), optional=True, doc="prompt; empty = caption")
TEXT_OUTPUT = TensorSpec("text_output", "TYPE_STRING", (1,), doc="generated text, prompt excluded")

GENERATION_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("max_tokens", "TYPE_INT32", (1,), True, f"new tokens at most (default {DEFAULT_MAX_TOKENS})"),
    TensorSpec("min_tokens", "TYPE_INT32", (1,), True, "new tokens at least"),
    TensorSpec("beam_width", "TYPE_INT32", (1,), True, "beams (default 1)"),
    TensorSpec("temperature", "TYPE_FP32", (1,), True, "> 0 turns sampling on"),
    TensorSpec("top_p", "TYPE_FP32", (1,), True, "nucleus sampling"),
    TensorSpec("top_k", "TYPE_INT32", (1,), True, "top-k sampling"),
    TensorSpec("repetition_penalty", "TYPE_FP32", (1,), True, "as in transformers"),
    TensorSpec("length_penalty", "TYPE_FP32", (1,), True, "beam length penalty"),
    TensorSpec("no_repeat_ngram_size", "TYPE_INT32", (1,), True, "as in transformers"),
    TensorSpec("random_seed", "TYPE_UINT64", (1,), True, "same seed, same request, same text"),
)

ENSEMBLE_INPUTS: tuple[TensorSpec, ...] = (IMAGE, TEXT_INPUT, *GENERATION_INPUTS)
ENSEMBLE_OUTPUTS: tuple[TensorSpec, ...] = (TEXT_OUTPUT,)
GENERATION_INPUT_NAMES: tuple[str, ...] = tuple(spec.name for spec in GENERATION_INPUTS)

# Image-text retrieval (Blip2ForImageTextRetrieval checkpoints): public models.
IMAGE_EMBED_MODEL = "blip2_image_embed"
TEXT_EMBED_MODEL = "blip2_text_embed"
ITM_MODEL = "blip2_itm"
# Internal models of a retrieval repository (called by blip2_image_embed and blip2_itm).
IMAGE_ENCODER_MODEL = "blip2_image_encoder"
ITM_HEAD_MODEL = "blip2_itm_head"
# Internal wire: the vision encoder's last hidden state (CLS + patches), the ITM head's keys/values.
VISION_HIDDEN_STATES = "vision_hidden_states"

RETRIEVAL_TEXT = TensorSpec("text_input", "TYPE_STRING", (1,), doc="text; empty is refused")
# dims of the embeddings depend on the checkpoint: -1 here, the exported configs carry the real ones.
IMAGE_EMBEDS = TensorSpec("image_embeds", "TYPE_FP32", (-1, -1), doc="L2-normalised query features [Q, D]")
TEXT_EMBEDS = TensorSpec("text_embeds", "TYPE_FP32", (-1,), doc="L2-normalised text feature [D]")
ITM_SCORE = TensorSpec("itm_score", "TYPE_FP32", (1,), doc="match probability of the ITM head")
ITC_SCORE = TensorSpec("itc_score", "TYPE_FP32", (1,), doc="max over queries of the cosine similarity")
