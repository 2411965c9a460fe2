"""The requests the SDK sends, one builder per kind, each a :class:`~.transport.Call` for a protocol.

- generation (the ``blip2`` ensemble or any model with its contract): image, prompt, settings
  -> ``text_output`` as ``str``;
- image-text retrieval (servers exported from ``Blip2ForImageTextRetrieval``): an image ->
  ``image_embeds`` ``[Q, D]``, a text -> ``text_embeds`` ``[D]``, a pair -> ``(itm, itc)``.

Images are encoded bytes here (``images.image_bytes`` reads paths and encodes PIL images); the
clients decide where that happens (the asyncio one reads files off the event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from blip2_triton.runtime.contract import (
    IMAGE_EMBED_MODEL,
    IMAGE_EMBEDS,
    ITC_SCORE,
    ITM_MODEL,
    ITM_SCORE,
    TEXT_EMBED_MODEL,
    TEXT_EMBEDS,
)

from . import _tensors
from .settings import GenerationSettings
from .transport import Call

__all__ = [
    "batch_prompts",
    "generation_call",
    "image_embed_call",
    "match_call",
    "stack_rows",
    "text_embed_call",
    "text_list",
]


def generation_call(
    protocol: str, model: str, image_input: Any, prompt: str | None, settings: GenerationSettings
) -> Call[str]:
    """Generate text after ``prompt`` for an image (its ``_tensors.image_input``, reusable across calls)."""
    inputs = [image_input, *_tensors.prompt_inputs(protocol, prompt, settings)]
    return Call(model, inputs, _tensors.requested_outputs(protocol), _tensors.read_text)


def image_embed_call(protocol: str, image: bytes) -> Call[np.ndarray]:
    """L2-normalised query embeddings ``[Q, D]`` of one image."""
    inputs = _tensors.retrieval_inputs(protocol, image=image)
    return Call(IMAGE_EMBED_MODEL, inputs, _outputs(protocol, IMAGE_EMBEDS.name), _read_image_embeds)


def text_embed_call(protocol: str, text: str) -> Call[np.ndarray]:
    """The L2-normalised text embedding ``[D]`` of one text."""
    _check_text(text)
    inputs = _tensors.retrieval_inputs(protocol, text=text)
    return Call(TEXT_EMBED_MODEL, inputs, _outputs(protocol, TEXT_EMBEDS.name), _read_text_embeds)


def match_call(protocol: str, image: bytes, text: str) -> Call[tuple[float, float]]:
    """``(itm, itc)`` of one image-text pair."""
    _check_text(text)
    inputs = _tensors.retrieval_inputs(protocol, image=image, text=text)
    return Call(ITM_MODEL, inputs, _outputs(protocol, ITM_SCORE.name, ITC_SCORE.name), _read_match)


def _outputs(protocol: str, *names: str) -> list[Any]:
    return _tensors.requested_outputs(protocol, names)


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")


def _read_image_embeds(result: Any) -> np.ndarray:
    return _tensors.read_array(result, IMAGE_EMBEDS.name)


def _read_text_embeds(result: Any) -> np.ndarray:
    return _tensors.read_array(result, TEXT_EMBEDS.name)


def _read_match(result: Any) -> tuple[float, float]:
    itm = _tensors.read_array(result, ITM_SCORE.name)
    itc = _tensors.read_array(result, ITC_SCORE.name)
    return float(itm.reshape(-1)[0]), float(itc.reshape(-1)[0])


def stack_rows(rows: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    """The embeddings of a batch as one float32 array (``empty_shape`` when there are none)."""
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros(empty_shape, np.float32)


def text_list(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list; one ``str`` is one text."""
    return [texts] if isinstance(texts, str) else list(texts)


def batch_prompts(prompt: str | Sequence[str | None] | None, count: int) -> list[str | None]:
    """One prompt per image: the same one for all, or a list as long as the images."""
    if prompt is None or isinstance(prompt, str):
        return [prompt] * count
    prompts = list(prompt)
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} images")
    for item in prompts:
        if item is not None and not isinstance(item, str):
            raise TypeError(f"prompts must be str or None, got {type(item).__name__}")
    return prompts
