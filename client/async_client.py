"""The asyncio client: :class:`AsyncBlip2Client` and its :class:`AsyncChatSession`.

Same constructor and method names as :class:`~blip2_triton.client.Blip2Client`, as coroutines,
over ``tritonclient.grpc.aio`` (or ``tritonclient.http.aio``).

>>> async with AsyncBlip2Client("localhost:8001") as client:
...     await client.caption("samples/sky_circle.jpg")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from blip2_triton.runtime.contract import ENSEMBLE_MODEL, LLM_MODEL

from . import _tensors, retrieval
from .errors import Blip2ClientError, ServerUnavailableError, translated_errors
from .images import ImageLike, image_bytes
from .prompts import chat_prompt, vqa_prompt
from .settings import GenerationSettings, resolve_settings
from .sync_client import ClientOptions, batch_prompts, llm_family_from_config, progress_bar

__all__ = ["AsyncBlip2Client", "AsyncChatSession"]

_READY_POLL_S = 0.25


async def _image_bytes(image: ImageLike) -> bytes:
    """``image_bytes`` off the event loop for what needs reading or encoding."""
    if isinstance(image, bytes):
        return image
    return await asyncio.to_thread(image_bytes, image)


class AsyncBlip2Client:
    """An asyncio client of a blip2-triton server; see :class:`~blip2_triton.client.Blip2Client`.

    The underlying tritonclient client is created on first use, inside the running event loop;
    use one client per event loop.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "grpc",
        model_name: str = ENSEMBLE_MODEL,
        inference_timeout_s: float = 60.0,
        init_timeout_s: float = 30.0,
        max_concurrency: int = 16,
    ) -> None:
        self._options = ClientOptions.create(
            url, protocol, model_name, inference_timeout_s, init_timeout_s, max_concurrency
        )
        self._client: Any = None
        self._family: str | None = None
        self._family_lock = asyncio.Lock()
        self._closed = False

    def _connection(self) -> Any:
        if self._closed:
            raise Blip2ClientError("the client is closed")
        if self._client is None:
            options = self._options
            with translated_errors():
                if options.protocol == "grpc":
                    import tritonclient.grpc.aio as grpcclient

                    self._client = grpcclient.InferenceServerClient(options.url)
                else:
                    import tritonclient.http.aio as httpclient

                    self._client = httpclient.InferenceServerClient(
                        options.url,
                        conn_limit=options.max_concurrency,
                        conn_timeout=options.inference_timeout_s,
                    )
        return self._client

    # -- properties --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._options.url

    @property
    def protocol(self) -> str:
        return self._options.protocol

    @property
    def model_name(self) -> str:
        return self._options.model_name

    @property
    def max_concurrency(self) -> int:
        return self._options.max_concurrency

    async def llm_family(self) -> str:
        """The server's language-model family (``"opt"`` or ``"t5"``), read once from its config."""
        async with self._family_lock:
            if self._family is None:
                client = self._connection()
                timeout = self._options.init_timeout_s
                with translated_errors():
                    if self.protocol == "grpc":
                        call = client.get_model_config(LLM_MODEL, as_json=True, client_timeout=timeout)
                    else:
                        call = client.get_model_config(LLM_MODEL)
                    config = await asyncio.wait_for(call, timeout)
                self._family = llm_family_from_config(config)
            return self._family

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the connection; later calls raise :class:`Blip2ClientError`. Safe to call twice."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> AsyncBlip2Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncBlip2Client({self.url!r}, protocol={self.protocol!r}, model_name={self.model_name!r})"

    # -- readiness ---------------------------------------------------------------------------
    async def is_ready(self) -> bool:
        """True when the server is up and the model is ready; False when not (never raises)."""
        if self._closed:
            return False
        timeout = self._options.init_timeout_s
        extra = {"client_timeout": timeout} if self.protocol == "grpc" else {}
        try:
            client = self._connection()
            with translated_errors():
                if not await asyncio.wait_for(client.is_server_ready(**extra), timeout):
                    return False
                return bool(await asyncio.wait_for(client.is_model_ready(self.model_name, **extra), timeout))
        except Blip2ClientError:
            return False

    async def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Wait until :meth:`is_ready`; ServerUnavailableError after ``timeout_s``.

        ``timeout_s`` defaults to ``init_timeout_s``.
        """
        self._connection()
        timeout_s = self._options.init_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not await self.is_ready():
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    f"model '{self.model_name}' at {self.url} ({self.protocol}) "
                    f"not ready after {timeout_s:g} s"
                )
            await asyncio.sleep(_READY_POLL_S)

    # -- generation --------------------------------------------------------------------------
    async def caption(
        self,
        image: ImageLike,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """The text the model generates for ``image`` (after ``prompt``, when given)."""
        resolved = resolve_settings(settings, generation)
        return await self._generate(await _image_bytes(image), prompt, resolved)

    async def ask(
        self,
        image: ImageLike,
        question: str,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """The answer to ``question`` about ``image`` (the VQA prompt of the server's family)."""
        resolved = resolve_settings(settings, generation)
        data = await _image_bytes(image)
        return await self._generate(data, vqa_prompt(await self.llm_family(), question), resolved)

    def chat(self, image: ImageLike) -> AsyncChatSession:
        """A conversation about ``image`` (a plain method: it sends nothing; ``ask`` is awaited)."""
        if self._closed:
            raise Blip2ClientError("the client is closed")
        return AsyncChatSession(self, image_bytes(image))

    async def caption_batch(
        self,
        images: Sequence[ImageLike],
        prompt: str | Sequence[str | None] | None = None,
        settings: GenerationSettings | None = None,
        progress: bool | None = None,
        **generation: Any,
    ) -> list[str]:
        """Captions of many images, in input order, at most ``max_concurrency`` in flight.

        The first failure is raised (the other requests are cancelled), with ``.index`` set.
        """
        self._connection()
        images = list(images)
        prompts = batch_prompts(prompt, len(images))
        resolved = resolve_settings(settings, generation)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        with progress_bar(len(images), progress) as bar:

            async def one(index: int, image: ImageLike, text_prompt: str | None) -> str:
                async with semaphore:
                    with translated_errors(index):
                        data = await _image_bytes(image)
                        text = await self._generate(data, text_prompt, resolved, index=index)
                bar.update()
                return text

            tasks = [
                asyncio.ensure_future(one(index, image, text_prompt))
                for index, (image, text_prompt) in enumerate(zip(images, prompts, strict=True))
            ]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    # -- image-text retrieval (servers exported from Blip2ForImageTextRetrieval) ----------------
    async def embed_images(self, images: Sequence[ImageLike], progress: bool | None = None) -> np.ndarray:
        """L2-normalised query embeddings of each image, float32 ``[N, num_query_tokens, D]``."""
        return await retrieval.embed_images_async(self, images, progress)

    async def embed_texts(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """L2-normalised text embeddings, float32 ``[N, D]``; empty texts are refused."""
        return await retrieval.embed_texts_async(self, texts, progress)

    async def match(self, image: ImageLike, text: str) -> tuple[float, float]:
        """``(itm, itc)`` for one pair: ITM match probability, max-over-queries cosine similarity."""
        return await retrieval.match_async(self, image, text)

    async def match_batch(
        self, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
    ) -> list[tuple[float, float]]:
        """:meth:`match` for many ``(image, text)`` pairs, sent concurrently, in input order."""
        return await retrieval.match_many_async(self, pairs, progress)

    async def _generate(
        self, image: bytes, prompt: str | None, settings: GenerationSettings, index: int | None = None
    ) -> str:
        client = self._connection()
        inputs = _tensors.build_inputs(self.protocol, image, prompt, settings)
        outputs = _tensors.requested_outputs(self.protocol)
        timeout = self._options.inference_timeout_s
        with translated_errors(index):
            if self.protocol == "grpc":
                call = client.infer(self.model_name, inputs, outputs=outputs, client_timeout=timeout)
            else:
                call = client.infer(self.model_name, inputs, outputs=outputs)
            result = await asyncio.wait_for(call, timeout + 1.0)
            return _tensors.read_text(result)


class AsyncChatSession:
    """A conversation about one image; ``await session.ask(...)`` keeps earlier turns in the prompt."""

    def __init__(self, client: AsyncBlip2Client, image: bytes) -> None:
        self._client = client
        self._image = image
        self._history: list[tuple[str, str]] = []

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """The ``(question, answer)`` turns so far."""
        return tuple(self._history)

    async def prompt_for(self, question: str) -> str:
        """The prompt that :meth:`ask` would send for ``question`` now."""
        return chat_prompt(await self._client.llm_family(), self._history, question)

    async def ask(self, question: str, settings: GenerationSettings | None = None, **generation: Any) -> str:
        """The answer to ``question``, given the earlier turns; the turn is added to the history."""
        resolved = resolve_settings(settings, generation)
        answer = await self._client._generate(self._image, await self.prompt_for(question), resolved)
        self._history.append((question, answer))
        return answer

    def reset(self) -> None:
        """Forget the earlier turns (same image)."""
        self._history.clear()
