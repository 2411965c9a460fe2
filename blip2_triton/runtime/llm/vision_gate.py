"""Aligned stages: images reach the vision model together, and the engine waits for them.

Left alone, a burst of requests reaches the vision model as it trickles out of preprocessing, in
batches of two or three; each batch's embeddings then join the engine on their own, and from then on
the requests finish at different steps, so most decode steps run far fewer rows than there are
slots, while vision batches compete with the decode steps for the same cores.

A ``VisionGate`` holds each preprocessed image until the batch is as large as the free generation
slots, or the first image has waited ``max_wait_s``, or the engine is idle and nothing more is on
its way (no image being preprocessed, none arrived for a little while), then sends the whole batch
at once and holds the engine while it runs: the vision model gets the cores and one large batch,
and what it returns joins the engine in one prefill. Images still being preprocessed are waited for
(up to ``max_prepare_wait_s``; while the engine decodes, ``busy_prepare_wait_s``): a burst of
requests then starts as one cohort instead of splitting into groups that decode apart from then on.
The vision model runs only once the engine has stopped between two steps (``paused``): on a CPU the
two would otherwise share the cores, each far slower. One batch at a time, sent as one request of
many rows, or (``per_image``, when the vision model has a response cache) as one request per image
that its dynamic batcher runs together, so that its cache answers per image. A lone request goes
through at once.

With ``chunk_rows`` (on a CPU: the rows the vision model runs at a time), a batch is encoded that many
rows per request. While the engine is idle, a batch starts as soon as a full chunk is ready, and
images that arrive meanwhile join it, up to the room it was sent with: a burst whose last requests
reach the server while the vision model already runs (on a CPU the vision batch itself slows their
arrival) still starts as one cohort, in one prefill. While the engine decodes, a batch does not
grow: its running sequences stay paused as long as the vision model runs, and under open-loop
traffic (``make bench-traffic``, 3 req/s) a growing batch raised short answers' p99 time to first
token from 0.29 to 0.70 s.

Free of Triton glue: the vision call and the engine come in as callables.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ClientGoneError


class HeldEngine(Protocol):
    """What the gate needs of the engine."""

    def free_slots(self) -> int: ...
    def idle(self) -> bool: ...
    def hold(self, max_s: float) -> None: ...
    def paused(self) -> bool: ...
    def release(self) -> None: ...


Encode = Callable[[np.ndarray], Awaitable[np.ndarray]]  # [N, 3, H, W] -> [N, Q, D]


@dataclass
class _Waiting:
    pixel_values: np.ndarray
    result: asyncio.Future
    is_cancelled: Callable[[], bool]
    since: float = field(default_factory=time.monotonic)

    def gone(self) -> bool:
        """The caller stopped waiting, or its client left (it gets ``ClientGoneError``)."""
        if not self.result.done() and self.is_cancelled():
            self.result.set_exception(ClientGoneError())
        return self.result.done()


class VisionGate:
    """Batches images for the vision model in step with the engine; see the module docstring."""

    def __init__(
        self,
        encode: Encode,
        engine: HeldEngine,
        *,
        max_batch: int,
        max_wait_s: float = 0.05,
        max_prepare_wait_s: float = 0.5,
        busy_prepare_wait_s: float = 0.15,
        linger_s: float = 0.004,
        per_image: bool = False,
        chunk_rows: int = 0,
        poll_s: float = 0.001,
        max_hold_s: float = 10.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode = encode
        self._engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_prepare_wait_s = max_prepare_wait_s
        self.busy_prepare_wait_s = busy_prepare_wait_s
        self.linger_s = linger_s
        self.per_image = per_image
        self.chunk_rows = chunk_rows
        self.poll_s = poll_s
        self.max_hold_s = max_hold_s
        self._count_lock = threading.Lock()
        self._preparing = 0  # images being decoded and preprocessed: they will come soon
        self._waiting: list[_Waiting] = []
        self._unsubmitted = 0  # encoded by the last batch, not yet counted by ``free_slots``
        self._runner: asyncio.Task | None = None
        self.batches = 0  # figures for tests and benchmarks
        self.images = 0
        self.late_joiners = 0

    def expect(self, images: int = 1) -> None:
        """``images`` are on their way (accepted, not preprocessed yet): the gate waits for them.
        Each one is later ``prepared()``, whether it reaches ``encode`` or fails. Any thread."""
        with self._count_lock:
            self._preparing += images

    def prepared(self) -> None:
        """One expected image is preprocessed (or will never come)."""
        with self._count_lock:
            self._preparing = max(0, self._preparing - 1)

    async def encode(
        self, pixel_values: np.ndarray, is_cancelled: Callable[[], bool] = lambda: False
    ) -> np.ndarray:
        """``[Q, D]`` query embeddings of one ``[3, H, W]`` image, encoded in the gate's next batch;
        ``ClientGoneError`` once ``is_cancelled()`` while it waits (it then gives its place up)."""
        waiting = _Waiting(pixel_values, asyncio.get_running_loop().create_future(), is_cancelled)
        self._waiting.append(waiting)
        self._wake()
        return await waiting.result

    def _wake(self) -> None:
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Send batches until nothing waits; one batch in flight at a time. Should this loop ever
        fail, every waiting caller gets the error (none waits for a batch that never comes)."""
        try:
            while self._waiting:
                batch = await self._next_batch()
                if batch:
                    await self._send(batch)
                    await asyncio.sleep(0)  # the batch's callers submit, then ``_release``: then count
        except BaseException as exc:
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                if not w.result.done():
                    w.result.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError("vision gate stopped")
                    )
            raise

    async def _next_batch(self) -> list[_Waiting]:
        while True:
            self._drop_gone()
            if not self._waiting:
                return []
            room = self._room()
            if room > 0 and self._ready(room):
                batch, self._waiting = self._waiting[:room], self._waiting[room:]
                return batch
            await asyncio.sleep(self.poll_s)

    def _drop_gone(self) -> None:
        """Forget the waiting images whose callers left (each got its answer already)."""
        self._waiting = [w for w in self._waiting if not w.gone()]

    def _room(self) -> int:
        return min(self.max_batch, self._engine.free_slots() - self._unsubmitted)

    def _ready(self, room: int) -> bool:
        """Whether the waiting images go now: they fill the room; or no image that would fit is
        being preprocessed (waited for at most ``max_prepare_wait_s``, ``busy_prepare_wait_s``
        while the engine decodes, since their own wait then delays the waiting ones) and either
        the first has waited ``max_wait_s`` or the engine is idle and none came for a while: at
        least ``linger_s``, twice the longest gap between the waiting images' arrivals."""
        now = time.monotonic()
        if len(self._waiting) >= room:
            return True
        waited = now - self._waiting[0].since
        idle = self._engine.idle()
        if self.chunk_rows and idle and len(self._waiting) >= self.chunk_rows:
            return True  # a full chunk to encode; the rest of the burst joins the batch as it comes
        bound = self.max_prepare_wait_s if idle else self.busy_prepare_wait_s
        if self._preparing and len(self._waiting) + self._preparing <= room and waited < bound:
            return False  # more of the burst is being preprocessed: it starts with these
        if waited >= self.max_wait_s:
            return True
        arrivals = [w.since for w in self._waiting]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        linger = max(self.linger_s, 2 * max(gaps, default=0.0))
        return not self._preparing and now - arrivals[-1] >= linger and idle

    async def _send(self, batch: list[_Waiting]) -> None:
        # Late joiners only while the engine is idle (a closed-loop cohort's start): while it decodes,
        # growing the batch would keep its running sequences paused and its first images waiting.
        joining = self.chunk_rows and self._engine.idle()
        limit = max(len(batch), self._room()) if joining else len(batch)  # before _unsubmitted
        self._engine.hold(self.max_hold_s)
        self._unsubmitted = len(batch)
        try:
            deadline = time.monotonic() + self.max_hold_s
            while not self._engine.paused() and time.monotonic() < deadline:
                await asyncio.sleep(self.poll_s)  # the step under way ends first
            done = 0
            while done < len(batch):
                part = batch[done : done + (self.chunk_rows or len(batch))]
                self._answer(part, await self._encode_batch([w.pixel_values for w in part]))
                done += len(part)
                if joining:
                    self._take_late_joiners(batch, limit)
            self.batches += 1
            self.images += len(batch)
        except BaseException as exc:  # none of this batch waits for an answer that never comes
            self._answer(
                batch,
                [exc if isinstance(exc, Exception) else RuntimeError("vision gate stopped")] * len(batch),
            )
            raise
        finally:
            # After the callers' own continuations (scheduled by set_result above) have handed
            # their requests to the engine: they then start in one prefill.
            asyncio.get_running_loop().call_soon(self._release)

    @staticmethod
    def _answer(part: list[_Waiting], results: list[np.ndarray | BaseException]) -> None:
        for waiting, result in zip(part, results, strict=True):
            if waiting.result.done():
                continue
            if isinstance(result, BaseException):
                waiting.result.set_exception(result)
            else:
                waiting.result.set_result(result)

    def _take_late_joiners(self, batch: list[_Waiting], limit: int) -> None:
        """Images that arrived while ``batch`` was being encoded join it, up to ``limit`` in all."""
        self._drop_gone()
        late, self._waiting = self._waiting[: limit - len(batch)], self._waiting[limit - len(batch) :]
        batch.extend(late)
        self._unsubmitted = len(batch)
        self.late_joiners += len(late)

    async def _encode_batch(self, images: list[np.ndarray]) -> list[np.ndarray | BaseException]:
        """Each image's ``[Q, D]`` embeddings, or the error of its request to the vision model."""
        if self.per_image:
            answers = await asyncio.gather(
                *(self._encode(image[None]) for image in images), return_exceptions=True
            )
            return [a if isinstance(a, BaseException) else a[0] for a in answers]
        try:
            joined = await self._encode(np.stack(images))
        except Exception as exc:  # the one request failed: every image of it fails
            return [exc] * len(images)
        return list(joined)

    def _release(self) -> None:
        self._unsubmitted = 0
        self._engine.release()
