"""The blocking client: :class:`Blip2Client`.

>>> with Blip2Client("localhost:8001") as client:
...     client.caption("samples/sky_circle.jpg")
...     client.ask("samples/sky_circle.jpg", "what colour is the sky?", max_tokens=10)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import numpy as np

from . import calls
from .chat import ChatSession
from .client_base import ClientBase
from .errors import Blip2ClientError
from .fan_out import fan_out
from .images import ImageLike, image_bytes
from .prompts import FAMILY_MODELS, llm_family_from_config, names_family, vqa_prompt
from .settings import GenerationSettings, resolve_settings
from .transport import Call, Transport

__all__ = ["Blip2Client"]

X = TypeVar("X")
T = TypeVar("T")


class Blip2Client(ClientBase):
    """A blocking client of a blip2-triton server (the ``blip2`` ensemble).

    ``url`` is ``host:port`` (default ``localhost:8001`` for gRPC, ``localhost:8000`` for HTTP);
    ``https://`` or ``grpcs://`` in front of it turns TLS on. ``tls``, ``ca_file`` (the CA bundle
    to trust), ``cert_file`` and ``key_file`` (a client certificate), ``insecure`` (HTTP only: no
    certificate check) and ``headers`` (sent with every call; gRPC: metadata) are for real networks.
    Each of these left as None takes its ``BLIP2_TRITON_*`` environment variable (README: Client
    SDK), and ``protocol`` then defaults to ``"grpc"``.
    ``inference_timeout_s`` bounds each request; ``init_timeout_s`` bounds the metadata calls
    (readiness, model config) and is the default wait of :meth:`wait_until_ready`.
    ``max_concurrency`` caps the requests in flight in :meth:`caption_batch`. The client never
    waits for the server on its own: a server that cannot be reached raises
    :class:`ServerUnavailableError` at once.

    Every error is a :class:`Blip2ClientError`. Over gRPC one client may be shared between
    threads; over HTTP (gevent) use one client per thread.
    """

    _transport_class = Transport
    _lock_class = threading.Lock
    _transport: Transport

    def llm_family(self) -> str:
        """The server's language-model family (``"opt"`` or ``"t5"``), read once from its config."""
        with self._family_lock:
            if self._family is None:
                config = self._transport.model_config(FAMILY_MODELS[0])
                if not names_family(config):
                    # a current server whose engine model names no family: the default
                    with contextlib.suppress(Blip2ClientError):
                        config = self._transport.model_config(FAMILY_MODELS[1])
                self._family = llm_family_from_config(config)
            return self._family

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection; later calls raise :class:`Blip2ClientError`. Safe to call twice."""
        self._transport.close()

    def __enter__(self) -> Blip2Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- readiness ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the server is up and the model is ready; False when not (never raises)."""
        return self._transport.is_ready()

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Block until :meth:`is_ready`; ServerUnavailableError after ``timeout_s``.

        ``timeout_s`` defaults to ``init_timeout_s``.
        """
        self._transport.wait_until_ready(timeout_s)

    # -- generation --------------------------------------------------------------------------
    def caption(
        self,
        image: ImageLike,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """The text the model generates for ``image`` (after ``prompt``, when given).

        ``generation`` takes :class:`GenerationSettings` fields (``max_tokens=20``, ...) and
        overrides ``settings``.
        """
        resolved = resolve_settings(settings, generation)
        return self._transport.infer(self._generation_call(image_bytes(image), prompt, resolved))

    def ask(
        self,
        image: ImageLike,
        question: str,
        settings: GenerationSettings | None = None,
        **generation: Any,
    ) -> str:
        """The answer to ``question`` about ``image`` (the VQA prompt of the server's family)."""
        resolved = resolve_settings(settings, generation)
        data = image_bytes(image)
        prompt = vqa_prompt(self.llm_family(), question)
        return self._transport.infer(self._generation_call(data, prompt, resolved))

    def stream_caption(
        self,
        image: ImageLike,
        prompt: str | None = None,
        settings: GenerationSettings | None = None,
        *,
        timeout_s: float | None = None,
        **generation: Any,
    ) -> Generator[str, None, None]:
        """:meth:`caption`'s text piece by piece as the server generates it (gRPC, ``blip2_stream``).

        The pieces joined equal :meth:`caption`'s text. Leaving the loop early (``break``,
        ``close()``) cancels the request on the server. ``timeout_s`` (default: the client's
        ``inference_timeout_s``) bounds the whole stream. Over HTTP: StreamingNotSupportedError.
        """
        resolved = resolve_settings(settings, generation)
        call = self._stream_call(image_bytes(image), prompt, resolved)
        return self._transport.stream(call, timeout_s)

    def stream_ask(
        self,
        image: ImageLike,
        question: str,
        settings: GenerationSettings | None = None,
        *,
        timeout_s: float | None = None,
        **generation: Any,
    ) -> Generator[str, None, None]:
        """:meth:`ask`'s answer piece by piece as the server generates it (see :meth:`stream_caption`)."""
        resolved = resolve_settings(settings, generation)
        prompt = vqa_prompt(self.llm_family(), question)
        return self.stream_caption(image, prompt, resolved, timeout_s=timeout_s)

    def chat(self, image: ImageLike) -> ChatSession:
        """A conversation about ``image``: each question sees the earlier questions and answers."""
        self._transport.check_open()
        return ChatSession(self, image_bytes(image))

    def caption_batch(
        self,
        images: Sequence[ImageLike],
        prompt: str | Sequence[str | None] | None = None,
        settings: GenerationSettings | None = None,
        progress: bool | None = None,
        **generation: Any,
    ) -> list[str]:
        """Captions of many images, in input order, sent concurrently so the server batches them.

        ``prompt`` is one prompt for all images or a list with one per image. At most
        ``max_concurrency`` requests are in flight. A progress bar (stderr) shows when the list
        is longer than 8 or ``progress`` is True. The first failure is raised, with ``.index``
        set to the position of its image.
        """
        self._transport.check_open()
        items = self._captions_to_make(images, prompt)
        resolved = resolve_settings(settings, generation)

        def make(item: tuple[ImageLike, str | None]) -> Call[str]:
            return self._generation_call(image_bytes(item[0]), item[1], resolved)

        return self._fan_out(items, make, progress, "caption")

    # -- image-text retrieval (servers exported from Blip2ForImageTextRetrieval) ----------------
    def embed_images(self, images: Sequence[ImageLike], progress: bool | None = None) -> np.ndarray:
        """L2-normalised query embeddings of each image, float32 ``[N, num_query_tokens, D]``.

        Sent to ``blip2_image_embed`` concurrently (at most ``max_concurrency`` in flight); a progress
        bar shows as in :meth:`caption_batch`. The first failure is raised with ``.index`` set.
        """

        def make(image: ImageLike) -> Call[np.ndarray]:
            return calls.image_embed_call(self.protocol, image_bytes(image))

        return calls.stack_rows(self._fan_out(list(images), make, progress, "embed images"), (0, 0, 0))

    def embed_texts(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """L2-normalised text embeddings, float32 ``[N, D]`` (``blip2_text_embed``); empty texts are refused."""

        def make(text: str) -> Call[np.ndarray]:
            return calls.text_embed_call(self.protocol, text)

        return calls.stack_rows(self._fan_out(calls.text_list(texts), make, progress, "embed texts"), (0, 0))

    def match(self, image: ImageLike, text: str) -> tuple[float, float]:
        """``(itm, itc)`` for one pair: ITM match probability, max-over-queries cosine similarity."""
        return self._transport.infer(calls.match_call(self.protocol, image_bytes(image), text))

    def match_batch(
        self, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
    ) -> list[tuple[float, float]]:
        """:meth:`match` for many ``(image, text)`` pairs, sent concurrently, in input order."""

        def make(pair: tuple[ImageLike, str]) -> Call[tuple[float, float]]:
            return calls.match_call(self.protocol, image_bytes(pair[0]), pair[1])

        return self._fan_out(list(pairs), make, progress, "match")

    def _fan_out(
        self, items: Sequence[X], make: Callable[[X], Call[T]], progress: bool | None, desc: str
    ) -> list[T]:
        return fan_out(  # type: ignore[return-value]  # refused items are raised, not kept
            self._transport, items, make, max_concurrency=self.max_concurrency, progress=progress, desc=desc
        )
