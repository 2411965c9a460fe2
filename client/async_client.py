"""The asyncio client: :class:`AsyncBlip2Client`.

Same constructor and method names as :class:`~blip2_triton.client.Blip2Client`, as coroutines,
over ``tritonclient.grpc.aio`` (or ``tritonclient.http.aio``). Image files are read off the event
loop.

>>> async with AsyncBlip2Client("localhost:8001") as client:
...     await client.caption("samples/sky_circle.jpg")
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from . import calls
from .chat import AsyncChatSession
from .client_base import ClientBase
from .errors import Blip2ClientError
from .fan_out import fan_out_async
from .images import ImageLike, image_bytes, image_bytes_async
from .prompts import FAMILY_MODELS, llm_family_from_config, names_family, vqa_prompt
from .settings import GenerationSettings, resolve_settings
from .transport import AsyncTransport, Call

__all__ = ["AsyncBlip2Client"]

X = TypeVar("X")
T = TypeVar("T")


class AsyncBlip2Client(ClientBase):
    """An asyncio client of a blip2-triton server; see :class:`~blip2_triton.client.Blip2Client`.

    The underlying tritonclient client is created on first use, inside the running event loop;
    use one client per event loop.
    """

    _transport_class = AsyncTransport
    _lock_class = asyncio.Lock
    _transport: AsyncTransport

    async def llm_family(self) -> str:
        """The server's language-model family (``"opt"`` or ``"t5"``), read once from its config."""
        async with self._family_lock:
            if self._family is None:
                config = await self._transport.model_config(FAMILY_MODELS[0])
                if not names_family(config):
                    # a current server whose engine model names no family: the default
                    with contextlib.suppress(Blip2ClientError):
                        config = await self._transport.model_config(FAMILY_MODELS[1])
                self._family = llm_family_from_config(config)
            return self._family

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the connection; later calls raise :class:`Blip2ClientError`. Safe to call twice."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncBlip2Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- readiness ---------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        """True when the server is up and the model is ready; False when not (never raises)."""
        return await self._transport.is_ready()

    async def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Wait until :meth:`is_ready`; ServerUnavailableError after ``timeout_s`` (default ``init_timeout_s``)."""
        await self._transport.wait_until_ready(timeout_s)

    # -- generation --------------------------------------------------------------------------
    async def caption(
        self,
        image: ImageLike,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """As :meth:`Blip2Client.caption <blip2_triton.client.Blip2Client.caption>`."""
        resolved = resolve_settings(settings, generation)
        data = await image_bytes_async(image)
        return await self._transport.infer(self._generation_call(data, prompt, resolved))

    async def ask(
        self,
        image: ImageLike,
        question: str,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """As :meth:`Blip2Client.ask <blip2_triton.client.Blip2Client.ask>`."""
        resolved = resolve_settings(settings, generation)
        data = await image_bytes_async(image)
        prompt = vqa_prompt(await self.llm_family(), question)
        return await self._transport.infer(self._generation_call(data, prompt, resolved))

    async def stream_caption(
        self,
        image: ImageLike,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        *,
        timeout_s: float | None = None,
        **generation: Any,
    ) -> AsyncGenerator[str, None]:
        """As :meth:`Blip2Client.stream_caption <blip2_triton.client.Blip2Client.stream_caption>`:
        ``async for piece in client.stream_caption(...)``; a cancelled task cancels the request too."""
        resolved = resolve_settings(settings, generation)
        call = self._stream_call(await image_bytes_async(image), prompt, resolved)
        async with contextlib.aclosing(self._transport.stream(call, timeout_s)) as pieces:
            async for piece in pieces:
                yield piece

    async def stream_ask(
        self,
        image: ImageLike,
        question: str,
        settings: GenerationSettings | None = None,
        *,
        timeout_s: float | None = None,
        **generation: Any,
    ) -> AsyncGenerator[str, None]:
        """As :meth:`Blip2Client.stream_ask <blip2_triton.client.Blip2Client.stream_ask>`."""
        resolved = resolve_settings(settings, generation)
        prompt = vqa_prompt(await self.llm_family(), question)
        async with contextlib.aclosing(
            self.stream_caption(image, prompt, resolved, timeout_s=timeout_s)
        ) as pieces:
            async for piece in pieces:
                yield piece

    def chat(self, image: ImageLike) -> AsyncChatSession:
        """A conversation about ``image`` (a plain method: it sends nothing; ``ask`` is awaited)."""
        self._transport.check_open()
        return AsyncChatSession(self, image_bytes(image))

    async def caption_batch(
        self,
        images: Sequence[ImageLike],
        prompt: str | Sequence[str | None] | None = None,
        settings: GenerationSettings | None = None,
        progress: bool | None = None,
        **generation: Any,
    ) -> list[str]:
        """As :meth:`Blip2Client.caption_batch <blip2_triton.client.Blip2Client.caption_batch>`.

        The first failure is raised (the other requests are cancelled), with ``.index`` set.
        """
        self._transport.check_open()
        items = self._captions_to_make(images, prompt)
        resolved = resolve_settings(settings, generation)

        async def make(item: tuple[ImageLike, str | None]) -> Call[str]:
            return self._generation_call(await image_bytes_async(item[0]), item[1], resolved)

        return await self._fan_out(items, make, progress, "caption")

    # -- image-text retrieval (servers exported from Blip2ForImageTextRetrieval) ----------------
    async def embed_images(self, images: Sequence[ImageLike], progress: bool | None = None) -> np.ndarray:
        """L2-normalised query embeddings of each image, float32 ``[N, num_query_tokens, D]``."""

        async def make(image: ImageLike) -> Call[np.ndarray]:
            return calls.image_embed_call(self.protocol, await image_bytes_async(image))

        rows = await self._fan_out(list(images), make, progress, "embed images")
        return calls.stack_rows(rows, (0, 0, 0))

    async def embed_texts(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """L2-normalised text embeddings, float32 ``[N, D]``; empty texts are refused."""

        def make(text: str) -> Call[np.ndarray]:
            return calls.text_embed_call(self.protocol, text)

        rows = await self._fan_out(calls.text_list(texts), make, progress, "embed texts")
        return calls.stack_rows(rows, (0, 0))

    async def match(self, image: ImageLike, text: str) -> tuple[float, float]:
        """``(itm, itc)`` for one pair: ITM match probability, max-over-queries cosine similarity."""
        call = calls.match_call(self.protocol, await image_bytes_async(image), text)
        return await self._transport.infer(call)

    async def match_batch(
        self, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
    ) -> list[tuple[float, float]]:
        """:meth:`match` for many ``(image, text)`` pairs, sent concurrently, in input order."""

        async def make(pair: tuple[ImageLike, str]) -> Call[tuple[float, float]]:
            return calls.match_call(self.protocol, await image_bytes_async(pair[0]), pair[1])

        return await self._fan_out(list(pairs), make, progress, "match")

    def _fan_out(
        self,
        items: Sequence[X],
        make: Callable[[X], Call[T] | Awaitable[Call[T]]],
        progress: bool | None,
        desc: str,
    ) -> Awaitable[list[T]]:
        return fan_out_async(  # type: ignore[return-value]  # refused items are raised, not kept
            self._transport, items, make, max_concurrency=self.max_concurrency, progress=progress, desc=desc
        )
