"""Image-text retrieval requests of the SDK: image and text embeddings, ITM and ITC scores.

The public methods are on :class:`~blip2_triton.client.Blip2Client` and
:class:`~blip2_triton.client.AsyncBlip2Client` (``embed_images``, ``embed_texts``, ``match``);
this module sends the requests: one per image or text, at most ``max_concurrency`` in flight, so
the server's dynamic batcher batches them. Results come back in input order; the first failure is
raised with ``.index`` set to the position of its item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
from .errors import InvalidImageError, InvalidRequestError, translated_errors
from .images import ImageLike, image_bytes

if TYPE_CHECKING:
    from .async_client import AsyncBlip2Client
    from .sync_client import Blip2Client

# A request: (model name, inputs builder (protocol -> InferInputs), output names).
Request = tuple[str, Callable[[str], list], tuple[str, ...]]


def image_embed_request(image: bytes) -> Request:
    return IMAGE_EMBED_MODEL, lambda p: _tensors.retrieval_inputs(p, image=image), (IMAGE_EMBEDS.name,)


def text_embed_request(text: str) -> Request:
    _check_text(text)
    return TEXT_EMBED_MODEL, lambda p: _tensors.retrieval_inputs(p, text=text), (TEXT_EMBEDS.name,)


def match_request(image: bytes, text: str) -> Request:
    _check_text(text)
    outputs = (ITM_SCORE.name, ITC_SCORE.name)
    return ITM_MODEL, lambda p: _tensors.retrieval_inputs(p, image=image, text=text), outputs


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")


def read_image_embeds(result: Any) -> np.ndarray:
    return _tensors.read_array(result, IMAGE_EMBEDS.name)


def read_text_embeds(result: Any) -> np.ndarray:
    return _tensors.read_array(result, TEXT_EMBEDS.name)


def read_match(result: Any) -> tuple[float, float]:
    itm = _tensors.read_array(result, ITM_SCORE.name)
    itc = _tensors.read_array(result, ITC_SCORE.name)
    return float(itm.reshape(-1)[0]), float(itc.reshape(-1)[0])


def stack(rows: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros(empty_shape, np.float32)


# -- blocking -------------------------------------------------------------------------------------


class _Pending:
    """One request in flight: gRPC ``async_infer`` (callback) or HTTP ``async_infer`` (greenlet)."""

    def __init__(self, client: Blip2Client, request: Request, index: int) -> None:
        model, build, outputs = request
        options, connection = client._options, client._client
        self._index = index
        with translated_errors(index):
            inputs = build(options.protocol)
            requested = _tensors.requested_arrays(options.protocol, outputs)
            if options.protocol == "grpc":
                self._future: concurrent.futures.Future = concurrent.futures.Future()
                self._call = connection.async_infer(
                    model,
                    inputs,
                    self._on_done,
                    outputs=requested,
                    client_timeout=options.inference_timeout_s,
                )
            else:
                self._call = connection.async_infer(model, inputs, outputs=requested)

    def _on_done(self, result: Any, error: Any) -> None:
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)

    def result(self) -> Any:
        with translated_errors(self._index):
            if hasattr(self, "_future"):
                return self._future.result()
            return self._call.get_result()

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._call.cancel()


def run_many(
    client: Blip2Client,
    items: Sequence[Any],
    make_request: Callable[[Any], Request],
    read: Callable[[Any], Any],
    *,
    progress: bool | None = None,
    desc: str = "embed",
    skip_invalid: bool = False,
) -> list:
    """``read(result)`` of one request per item, in order, at most ``max_concurrency`` in flight.

    ``skip_invalid``: an item the server or the client refuses (InvalidRequestError,
    InvalidImageError) gets its error in its slot instead of stopping the rest.
    """
    from .sync_client import progress_bar

    def collect(index: int, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (InvalidRequestError, InvalidImageError) as exc:
            if not skip_invalid:
                raise
            exc.index = index
            return exc

    client._check_open()
    results: list = [None] * len(items)
    in_flight: deque[tuple[int, _Pending]] = deque()
    with progress_bar(len(items), progress, desc) as bar:
        try:
            for index, item in enumerate(items):
                if len(in_flight) >= client.max_concurrency:
                    done, pending = in_flight.popleft()
                    results[done] = collect(done, lambda p=pending: read(p.result()))
                    bar.update()
                with translated_errors(index):
                    request = collect(index, lambda item=item: make_request(item))
                if isinstance(request, Exception):
                    results[index] = request
                    bar.update()
                    continue
                in_flight.append((index, _Pending(client, request, index)))
            while in_flight:
                done, pending = in_flight.popleft()
                results[done] = collect(done, lambda p=pending: read(p.result()))
                bar.update()
        finally:
            for _, pending in in_flight:
                pending.cancel()
    return results


def embed_images(client: Blip2Client, images: Sequence[ImageLike], progress: bool | None) -> np.ndarray:
    rows = run_many(
        client,
        list(images),
        lambda image: image_embed_request(image_bytes(image)),
        read_image_embeds,
        progress=progress,
        desc="embed images",
    )
    return stack(rows, (0, 0, 0))


def embed_texts(client: Blip2Client, texts: Sequence[str], progress: bool | None) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else list(texts)
    rows = run_many(
        client, texts, text_embed_request, read_text_embeds, progress=progress, desc="embed texts"
    )
    return stack(rows, (0, 0))


def match(client: Blip2Client, image: ImageLike, text: str) -> tuple[float, float]:
    (scores,) = run_many(
        client,
        [(image, text)],
        lambda pair: match_request(image_bytes(pair[0]), pair[1]),
        read_match,
        progress=False,
    )
    return scores


def match_many(
    client: Blip2Client, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
) -> list[tuple[float, float]]:
    """``(itm, itc)`` for each ``(image, text)`` pair, sent concurrently."""
    return run_many(
        client,
        list(pairs),
        lambda pair: match_request(image_bytes(pair[0]), pair[1]),
        read_match,
        progress=progress,
        desc="match",
    )


# -- asyncio --------------------------------------------------------------------------------------


async def _infer_async(client: AsyncBlip2Client, request: Request, index: int | None) -> Any:
    model, build, outputs = request
    connection = client._connection()
    protocol = client.protocol
    timeout = client._options.inference_timeout_s
    with translated_errors(index):
        inputs = build(protocol)
        requested = _tensors.requested_arrays(protocol, outputs)
        if protocol == "grpc":
            call = connection.infer(model, inputs, outputs=requested, client_timeout=timeout)
        else:
            call = connection.infer(model, inputs, outputs=requested)
        return await asyncio.wait_for(call, timeout + 1.0)


async def run_many_async(
    client: AsyncBlip2Client,
    items: Sequence[Any],
    make_request: Callable[[Any], Any],
    read: Callable[[Any], Any],
    *,
    progress: bool | None = None,
    desc: str = "embed",
) -> list:
    """As :func:`run_many`; ``make_request`` may be a coroutine function (file reads off the loop)."""
    from .sync_client import progress_bar

    client._connection()
    semaphore = asyncio.Semaphore(client.max_concurrency)
    with progress_bar(len(items), progress, desc) as bar:

        async def one(index: int, item: Any) -> Any:
            async with semaphore:
                with translated_errors(index):
                    request = make_request(item)
                    if asyncio.iscoroutine(request):
                        request = await request
                result = read(await _infer_async(client, request, index))
            bar.update()
            return result

        tasks = [asyncio.ensure_future(one(index, item)) for index, item in enumerate(items)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def _bytes(image: ImageLike) -> bytes:
    return image if isinstance(image, bytes) else await asyncio.to_thread(image_bytes, image)


async def embed_images_async(
    client: AsyncBlip2Client, images: Sequence[ImageLike], progress: bool | None
) -> np.ndarray:
    async def request(image: ImageLike) -> Request:
        return image_embed_request(await _bytes(image))

    rows = await run_many_async(
        client, list(images), request, read_image_embeds, progress=progress, desc="embed images"
    )
    return stack(rows, (0, 0, 0))


async def embed_texts_async(
    client: AsyncBlip2Client, texts: Sequence[str], progress: bool | None
) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else list(texts)
    rows = await run_many_async(
        client, texts, text_embed_request, read_text_embeds, progress=progress, desc="embed texts"
    )
    return stack(rows, (0, 0))


async def match_async(client: AsyncBlip2Client, image: ImageLike, text: str) -> tuple[float, float]:
    _check_text(text)
    return read_match(await _infer_async(client, match_request(await _bytes(image), text), None))


async def match_many_async(
    client: AsyncBlip2Client, pairs: Sequence[tuple[ImageLike, str]], progress: bool | None = None
) -> list[tuple[float, float]]:
    async def request(pair: tuple[ImageLike, str]) -> Request:
        return match_request(await _bytes(pair[0]), pair[1])

    return await run_many_async(client, list(pairs), request, read_match, progress=progress, desc="match")
