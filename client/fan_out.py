"""Send many calls concurrently so the server's dynamic batcher batches them: one fan-out per flavour.

Both keep at most ``max_concurrency`` calls in flight, return the answers in input order, show a
progress bar for long lists, and raise the first failure with ``.index`` set to its item's
position (the calls still in flight are cancelled). With ``keep_refused`` an item the client or
the server refuses (:class:`InvalidImageError`, :class:`InvalidRequestError`) gets its error in
its slot instead, and the rest go on. :class:`_Slots` holds what the two share.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from .errors import Blip2ClientError, InvalidImageError, InvalidRequestError, translated_errors
from .transport import AsyncTransport, Call, Pending, Transport

__all__ = ["PROGRESS_THRESHOLD", "fan_out", "fan_out_async", "progress_bar"]

T = TypeVar("T")
X = TypeVar("X")

# A batch longer than this shows a progress bar unless told otherwise.
PROGRESS_THRESHOLD = 8

_REFUSED = (InvalidRequestError, InvalidImageError)


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


class _Slots(Generic[T]):
    """The answers in input order, a progress bar, and what a refused item gets."""

    def __init__(self, count: int, bar: Any, keep_refused: bool) -> None:
        self.values: list[T | Blip2ClientError] = [None] * count  # type: ignore[list-item]
        self._bar = bar
        self._keep_refused = keep_refused

    def fill(self, index: int, value: T | Blip2ClientError) -> None:
        self.values[index] = value
        self._bar.update()

    def refuse(self, index: int, error: Blip2ClientError) -> None:
        """Keep ``error`` in its slot (``keep_refused``), or raise it."""
        if not self._keep_refused:
            raise error
        error.index = index
        self.fill(index, error)


def fan_out(
    transport: Transport,
    items: Sequence[X],
    make_call: Callable[[X], Call[T]],
    *,
    max_concurrency: int,
    progress: bool | None = None,
    desc: str = "caption",
    keep_refused: bool = False,
) -> list[T | Blip2ClientError]:
    """The answer to ``make_call(item)`` for every item, in order; a window of calls in flight."""
    transport.check_open()
    with progress_bar(len(items), progress, desc) as bar:
        slots: _Slots[T] = _Slots(len(items), bar, keep_refused)
        in_flight: deque[tuple[int, Pending[T]]] = deque()

        def settle_oldest() -> None:
            index, pending = in_flight.popleft()
            try:
                slots.fill(index, pending.result())
            except _REFUSED as exc:
                slots.refuse(index, exc)

        try:
            for index, item in enumerate(items):
                if len(in_flight) >= max_concurrency:
                    settle_oldest()
                try:
                    with translated_errors(index):
                        call = make_call(item)
                except _REFUSED as exc:
                    slots.refuse(index, exc)
                    continue
                in_flight.append((index, transport.submit(call, index)))
            while in_flight:
                settle_oldest()
        finally:
            for _, pending in in_flight:
                pending.cancel()
    return slots.values


async def fan_out_async(
    transport: AsyncTransport,
    items: Sequence[X],
    make_call: Callable[[X], Call[T] | Awaitable[Call[T]]],
    *,
    max_concurrency: int,
    progress: bool | None = None,
    desc: str = "caption",
    keep_refused: bool = False,
) -> list[T | Blip2ClientError]:
    """As :func:`fan_out`, with ``max_concurrency`` workers; ``make_call`` may be a coroutine function
    (to read files off the event loop)."""
    transport.check_open()
    queue = iter(enumerate(items))
    with progress_bar(len(items), progress, desc) as bar:
        slots: _Slots[T] = _Slots(len(items), bar, keep_refused)

        async def worker() -> None:
            for index, item in queue:  # shared: each item goes to one worker
                try:
                    with translated_errors(index):
                        call = make_call(item)
                        if inspect.isawaitable(call):
                            call = await call
                    answer: T = await transport.infer(call, index)
                    slots.fill(index, answer)
                except _REFUSED as exc:
                    slots.refuse(index, exc)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(max_concurrency, len(items)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
    return slots.values
