"""Python client SDK for a blip2-triton server.

>>> from blip2_triton.client import Blip2Client
>>> with Blip2Client("localhost:8001") as client:
...     client.caption("blip2_triton/fixtures/samples/sky_circle.jpg")
...     client.ask("blip2_triton/fixtures/samples/sky_circle.jpg", "what is in the sky?", max_tokens=10)

:class:`Blip2Client` blocks; :class:`AsyncBlip2Client` has the same constructor and method names,
as coroutines. Every error raised on purpose is a :class:`Blip2ClientError`.

Layout, bottom up: ``_tensors`` (tritonclient tensors), ``calls`` (one request of each kind),
``streaming`` (a stream's pieces, errors and limits), ``transport`` (sends calls and streams:
blocking and asyncio), ``fan_out`` (many calls at once, per flavour), ``client_base`` +
``sync_client`` / ``async_client`` (the public methods), ``chat`` (sessions), ``index`` (image
search, either client), ``command`` / ``index_command`` (the CLI).
"""

from .async_client import AsyncBlip2Client
from .chat import AsyncChatSession, ChatSession
from .errors import (
    Blip2ClientError,
    InferenceTimeoutError,
    InvalidImageError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    ServerUnavailableError,
    StreamingNotSupportedError,
    map_triton_error,
)
from .images import ImageLike, image_bytes
from .index import ImageHit, ImageIndex, TextHit
from .prompts import chat_prompt, vqa_prompt
from .retry import RetryPolicy
from .settings import GenerationSettings
from .sync_client import Blip2Client

__all__ = [
    "AsyncBlip2Client",
    "AsyncChatSession",
    "Blip2Client",
    "Blip2ClientError",
    "ChatSession",
    "GenerationSettings",
    "ImageHit",
    "ImageIndex",
    "ImageLike",
    "InferenceTimeoutError",
    "InvalidImageError",
    "InvalidRequestError",
    "RequestCancelledError",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailableError",
    "StreamingNotSupportedError",
    "TextHit",
    "chat_prompt",
    "image_bytes",
    "map_triton_error",
    "vqa_prompt",
]
