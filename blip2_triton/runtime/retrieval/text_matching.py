"""Image-text matching (retrieval checkpoints): text tokenisation and the ITC score.

What ``Blip2Processor`` + ``Blip2ForImageTextRetrieval`` do to a text, done here without torch:
the processor puts ``num_query_tokens`` image tokens before the tokenised text, and the model
drops them again when its config has an ``image_token_index`` (otherwise they reach the Q-Former
as text). ``RetrievalSettings.prefix_ids`` holds what is left of them: nothing, or the image tokens.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract import MAX_PROMPT_CHARS
from ..errors import RequestValidationError

SETTINGS_FILE = "retrieval.json"


@dataclass(frozen=True)
class RetrievalSettings:
    """What the Triton models need to know about the checkpoint, written by the export."""

    num_query_tokens: int
    embed_dim: int
    max_text_tokens: int  # tokens of one text, [CLS] and [SEP] included; longer texts are truncated
    pad_token_id: int = 0
    prefix_ids: tuple[int, ...] = field(default_factory=tuple)
    vocab_size: int = 0  # rows of the Q-Former's word embeddings; 0: not checked

    def save(self, folder: str | Path) -> None:
        data = asdict(self)
        data["prefix_ids"] = list(self.prefix_ids)
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> RetrievalSettings:
        data = json.loads((Path(folder) / SETTINGS_FILE).read_text())
        data["prefix_ids"] = tuple(data.get("prefix_ids", ()))
        return cls(**data)


def text_from_input(item: object) -> str:
    """One element of a ``text_input`` tensor as ``str``; bad ones are RequestValidationError."""
    if isinstance(item, bytes):
        try:
            text = item.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestValidationError("input 'text_input' is not valid UTF-8") from None
    elif isinstance(item, str):
        text = item
    else:
        raise RequestValidationError(f"input 'text_input' must be bytes, got {type(item).__name__}")
    if not text.strip():
        raise RequestValidationError("input 'text_input' is empty: send a non-empty text")
    if len(text) > MAX_PROMPT_CHARS:
        raise RequestValidationError(
            f"input 'text_input' has {len(text)} characters, over the limit of {MAX_PROMPT_CHARS}"
        )
    return text


class TextTokenizer:
    """The checkpoint's tokenizer, called as the processor calls it, then padded on the right.

    A text is tokenised alone (special tokens added, no padding), as ``Blip2Processor`` does for one
    text; longer than ``max_text_tokens`` it is truncated (the processor would hand the model more
    positions than it has). Right padding with a zero attention mask leaves the other texts of a
    batch unchanged (absolute positions start at 0 for each text).
    """

    def __init__(self, tokenizer_dir: str | Path, settings: RetrievalSettings) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.settings = settings

    def ids(self, text: str) -> list[int]:
        """The Q-Former input ids of one text (prefix included)."""
        encoded = self.tokenizer(
            text, truncation=True, max_length=self.settings.max_text_tokens, return_token_type_ids=False
        )["input_ids"]
        vocab_size = self.settings.vocab_size
        if vocab_size and any(i >= vocab_size for i in encoded):
            tokens = {self.tokenizer.convert_ids_to_tokens(i) for i in encoded if i >= vocab_size}
            raise RequestValidationError(
                f"input 'text_input' contains tokens the model has no embedding for: {sorted(tokens)}"
            )
        return [*self.settings.prefix_ids, *encoded]

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 ``[B, L]``, right-padded."""
        rows = [self.ids(text) for text in texts]
        length = max(len(row) for row in rows)
        input_ids = np.full((len(rows), length), self.settings.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask


def itc_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """Max over queries of the cosine similarity: ``[B, Q, D]`` x ``[B, D]`` -> ``[B]`` float32.

    Both are L2-normalised already, so the dot product is the cosine (transformers'
    ``logits_per_image`` with ``use_image_text_matching_head=False``: no temperature applied).
    """
    image = np.asarray(image_embeds, dtype=np.float32)
    text = np.asarray(text_embeds, dtype=np.float32)
    return np.einsum("bqd,bd->bq", image, text).max(axis=1).astype(np.float32)
