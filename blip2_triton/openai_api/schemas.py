"""The request bodies the frontend takes, as pydantic models (OpenAI's names and shapes).

Fields that OpenAI clients send but BLIP-2 cannot honour are refused when they ask for something
(``tools``, ``logprobs``, penalties other than 0); unknown fields are ignored. The contract's other
generation settings (``beam_width``, ``min_tokens``, ``top_k``, ``repetition_penalty``,
``length_penalty``, ``no_repeat_ngram_size``) are extra top-level fields (``extra_body`` in the
``openai`` package).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Body):
    url: str
    detail: str | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class Message(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    """``POST /v1/chat/completions``."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # the contract's other settings (documented extensions)
    min_tokens: int | None = None
    beam_width: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    # asked of every OpenAI model; refused when they ask for what BLIP-2 has not
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``: texts, or images as ``data:image/...;base64,`` URLs (an extension)."""

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class ScoreRequest(_Body):
    """``POST /v1/score`` (an extension): one image against texts, ITM probability and ITC score."""

    model: str
    image: str
    texts: str | list[str]
