"""The blocking client: :class:`Blip2Client` and its :class:`ChatSession`.

>>> with Blip2Client("localhost:8001") as client:
...     client.caption("samples/sky_circle.jpg")
...     client.ask("samples/sky_circle.jpg", "what colour is the sky?", max_tokens=10)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blip2_triton.runtime.contract import ENSEMBLE_MODEL, LLM_MODEL

from . import _tensors, retrieval
from .errors import Blip2ClientError, ServerError, ServerUnavailableError, translated_errors
from .images import ImageLike, image_bytes
from .prompts import LLM_FAMILY_PARAMETER, chat_prompt, family_from_model_config, vqa_prompt
from .settings import GenerationSettings, resolve_settings

__all__ = ["Blip2Client", "ChatSession"]

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}

# A batch longer than this shows a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 8

_READY_POLL_S = 0.25


@dataclass(frozen=True)
class ClientOptions:
    """The constructor options shared by the sync and asyncio clients, checked."""

    url: str
    protocol: str
    model_name: str
    inference_timeout_s: float
    init_timeout_s: float
    max_concurrency: int

    @classmethod
    def create(
        cls,
        url: str | None,
        protocol: str,
        model_name: str,
        inference_timeout_s: float,
        init_timeout_s: float,
        max_concurrency: int,
    ) -> ClientOptions:
        protocol = _tensors.check_protocol(protocol)
        if url is None:
            url = f"localhost:{DEFAULT_PORTS[protocol]}"
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"url must be 'host:port', got {url!r}")
        url = url.strip()
        for scheme in ("http://", "https://", "grpc://"):
            if url.startswith(scheme):
                if scheme == "https://":
                    raise ValueError("https is not supported by this client; pass 'host:port'")
                url = url[len(scheme) :]
        url = url.rstrip("/")
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        for name, value in (("inference_timeout_s", inference_timeout_s), ("init_timeout_s", init_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        return cls(
            url, protocol, model_name, float(inference_timeout_s), float(init_timeout_s), max_concurrency
        )


def llm_family_from_config(config: Mapping[str, Any]) -> str:
    """The family named by a ``blip2_llm`` config, as a client error when this client does not know it."""
    try:
        return family_from_model_config(config)
    except ValueError as exc:
        raise ServerError(f"the '{LLM_FAMILY_PARAMETER}' parameter of model '{LLM_MODEL}': {exc}") from None


def batch_prompts(prompt: str | Sequence[str] | None, count: int) -> list[str | None]:
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


@contextlib.contextmanager
def progress_bar(total: int, progress: bool | None, desc: str = "caption") -> Iterator[Any]:
    """A tqdm bar (on stderr) when ``progress`` is True, or None and ``total`` is long; else a no-op."""
    from tqdm.auto import tqdm

    show = total > PROGRESS_THRESHOLD if progress is None else bool(progress)
    bar = tqdm(total=total, desc=desc, unit="image", disable=not show, leave=False)
    try:
        yield bar
    finally:
        bar.close()


class _PendingGrpc:
    """One request sent with the gRPC ``async_infer``: the result arrives through a callback."""

    def __init__(self, client: Any, options: ClientOptions, inputs: list, index: int) -> None:
        self._future: concurrent.futures.Future = concurrent.futures.Future()
        self._index = index
        self._context = client.async_infer(
            options.model_name,
            inputs,
            self._on_done,
            outputs=_tensors.requested_outputs("grpc"),
            client_timeout=options.inference_timeout_s,
        )

    def _on_done(self, result: Any, error: Any) -> None:
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)

    def text(self) -> str:
        with translated_errors(self._index):
            return _tensors.read_text(self._future.result())

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._context.cancel()


class _PendingHttp:
    """One request sent from a greenlet of the HTTP (gevent) client; never raises in the greenlet."""

    def __init__(self, client: Any, options: ClientOptions, inputs: list, index: int) -> None:
        import gevent

        self._index = index
        self._greenlet = gevent.spawn(_http_infer, client, options.model_name, inputs)

    def text(self) -> str:
        with translated_errors(self._index):
            result, error = self._greenlet.get()
            if error is not None:
                raise error
            return _tensors.read_text(result)

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._greenlet.kill(block=False)


def _http_infer(client: Any, model_name: str, inputs: list) -> tuple[Any, BaseException | None]:
    # Errors are returned, not raised: gevent prints a traceback for a greenlet that raises.
    try:
        return client.infer(model_name, inputs, outputs=_tensors.requested_outputs("http")), None
    except Exception as exc:
        return None, exc


class Blip2Client:
    """A blocking client of a blip2-triton server (the ``blip2`` ensemble).

    ``url`` is ``host:port`` (default ``localhost:8001`` for gRPC, ``localhost:8000`` for HTTP).
    ``inference_timeout_s`` bounds each request; ``init_timeout_s`` bounds the metadata calls
    (readiness, model config) and is the default wait of :meth:`wait_until_ready`.
    ``max_concurrency`` caps the requests in flight in :meth:`caption_batch`. The client never
    waits for the server on its own: a server that cannot be reached raises
    :class:`ServerUnavailableError` at once.

    Every error is a :class:`Blip2ClientError`. Over gRPC one client may be shared between
    threads; over HTTP (gevent) use one client per thread.
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
        self._client = self._connect()
        self._family: str | None = None
        self._family_lock = threading.Lock()
        self._closed = False

    def _connect(self) -> Any:
        options = self._options
        with translated_errors():
            if options.protocol == "grpc":
                import tritonclient.grpc as grpcclient

                return grpcclient.InferenceServerClient(options.url)
            import tritonclient.http as httpclient

            return httpclient.InferenceServerClient(
                options.url,
                concurrency=options.max_concurrency,
                connection_timeout=options.init_timeout_s,
                network_timeout=options.inference_timeout_s,
            )

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

    @property
    def llm_family(self) -> str:
        """The server's language-model family (``"opt"`` or ``"t5"``), read once from its config."""
        with self._family_lock:
            if self._family is None:
                self._check_open()
                with translated_errors():
                    if self.protocol == "grpc":
                        config = self._client.get_model_config(
                            LLM_MODEL, as_json=True, client_timeout=self._options.init_timeout_s
                        )
                    else:
                        config = self._client.get_model_config(LLM_MODEL)
                self._family = llm_family_from_config(config)
            return self._family

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection; later calls raise :class:`Blip2ClientError`. Safe to call twice."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._client.close()

    def __enter__(self) -> Blip2Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Blip2Client({self.url!r}, protocol={self.protocol!r}, model_name={self.model_name!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise Blip2ClientError("the client is closed")

    # -- readiness ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        """True when the server is up and the model is ready; False when not (never raises)."""
        if self._closed:
            return False
        timeout = {"client_timeout": self._options.init_timeout_s} if self.protocol == "grpc" else {}
        try:
            with translated_errors():
                return bool(
                    self._client.is_server_ready(**timeout)
                    and self._client.is_model_ready(self.model_name, **timeout)
                )
        except Blip2ClientError:
            return False

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Block until :meth:`is_ready`; ServerUnavailableError after ``timeout_s``.

        ``timeout_s`` defaults to ``init_timeout_s``.
        """
        self._check_open()
        timeout_s = self._options.init_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    f"model '{self.model_name}' at {self.url} ({self.protocol}) "
                    f"not ready after {timeout_s:g} s"
                )
            time.sleep(_READY_POLL_S)

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
        return self._generate(image_bytes(image), prompt, resolved)

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
        return self._generate(data, vqa_prompt(self.llm_family, question), resolved)

    def chat(self, image: ImageLike) -> ChatSession:
        """A conversation about ``image``: each question sees the earlier questions and answers."""
        self._check_open()
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
        self._check_open()
        images = list(images)
        prompts = batch_prompts(prompt, len(images))
        resolved = resolve_settings(settings, generation)
        results: list[str] = [""] * len(images)
        in_flight: deque[tuple[int, _PendingGrpc | _PendingHttp]] = deque()
        pending_class = _PendingGrpc if self.protocol == "grpc" else _PendingHttp
        with progress_bar(len(images), progress) as bar:
            try:
                for index, (image, text_prompt) in enumerate(zip(images, prompts, strict=True)):
                    if len(in_flight) >= self.max_concurrency:
                        done_index, pending = in_flight.popleft()
                        results[done_index] = pending.text()
                        bar.update()
                    with translated_errors(index):
                        data = image_bytes(image)
                        inputs = _tensors.build_inputs(self.protocol, data, text_prompt, resolved)
                    in_flight.append((index, pending_class(self._client, self._options, inputs, index)))
                while in_flight:
                    done_index, pending = in_flight.popleft()
                    results[done_index] = pending.text()
                    bar.update()
            finally:
                for _, pending in in_flight:
                    pending.cancel()
        return results

    # -- image-text retrieval (servers exported from Blip2ForImageTextRetrieval) ----------------
    def embed_images(self, images: Sequence[ImageLike], progress: bool | None = None) -> np.ndarray:
        """L2-normalised query embeddings of each image, float32 ``[N, num_query_tokens, D]``.

        Sent to ``blip2_image_embed`` concurrently (at most ``max_concurrency`` in flight); a progress
        bar shows as in :meth:`caption_batch`. The first failure is raised with ``.index`` set.
        """
        return retrieval.embed_images(self, images, progress)

    def embed_texts(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """L2-normalised text embeddings, float32 ``[N, D]`` (``blip2_text_embed``); empty texts are refused."""
        return retrieval.embed_texts(self, texts, progress)

    def match(self, image: ImageLike, text: str) -> tuple[float, float]:
        """``(itm, itc)`` for one pair: ITM match probability, max-over-queries cosine similarity."""
        return retrieval.match(self, image, text)

    def match_batch(
        self, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
    ) -> list[tuple[float, float]]:
        """:meth:`match` for many ``(image, text)`` pairs, sent concurrently, in input order."""
        return retrieval.match_many(self, pairs, progress)

    def _generate(self, image: bytes, prompt: str | None, settings: GenerationSettings) -> str:
        self._check_open()
        inputs = _tensors.build_inputs(self.protocol, image, prompt, settings)
        outputs = _tensors.requested_outputs(self.protocol)
        with translated_errors():
            if self.protocol == "grpc":
                result = self._client.infer(
                    self.model_name, inputs, outputs=outputs, client_timeout=self._options.inference_timeout_s
                )
            else:
                result = self._client.infer(self.model_name, inputs, outputs=outputs)
            return _tensors.read_text(result)


class ChatSession:
    """A conversation about one image; :meth:`ask` keeps earlier turns in the prompt (LAVIS format)."""

    def __init__(self, client: Blip2Client, image: bytes) -> None:
        self._client = client
        self._image = image
        self._history: list[tuple[str, str]] = []

    @property
    def history(self) -> tuple[tuple[str, str], ...]:
        """The ``(question, answer)`` turns so far."""
        return tuple(self._history)

    def prompt_for(self, question: str) -> str:
        """The prompt that :meth:`ask` would send for ``question`` now."""
        return chat_prompt(self._client.llm_family, self._history, question)

    def ask(self, question: str, settings: GenerationSettings | None = None, **generation: Any) -> str:
        """The answer to ``question``, given the earlier turns; the turn is added to the history."""
        resolved = resolve_settings(settings, generation)
        answer = self._client._generate(self._image, self.prompt_for(question), resolved)
        self._history.append((question, answer))
        return answer

    def reset(self) -> None:
        """Forget the earlier turns (same image)."""
        self._history.clear()
