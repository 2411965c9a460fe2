"""Logic written once for either client: a generator of steps, run blocking or awaited.

A plan is a generator that yields *steps*, zero-argument callables that talk to the client
(``lambda: client.embed_texts([text])``), and gets each step's value back. :func:`run` runs a plan
for the client it is given: with a :class:`~.Blip2Client` it calls each step and returns the
plan's value; with an :class:`~.AsyncBlip2Client` each step returns an awaitable, and :func:`run`
returns a coroutine that awaits them. A step wrapped in :class:`Blocking` (file I/O) is called
as is with the blocking client and in a worker thread with the asyncio one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["Blocking", "Plan", "is_async_client", "run"]

T = TypeVar("T")

Plan = Generator[Callable[[], Any], Any, T]


class Blocking:
    """A step that blocks (reads or writes files): a worker thread runs it for an asyncio client."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function

    def __call__(self) -> Any:
        return self.function()


def is_async_client(client: Any) -> bool:
    """True for a client whose requests are coroutines (``AsyncBlip2Client`` and look-alikes)."""
    return inspect.iscoroutinefunction(getattr(client, "embed_texts", None))


def run(plan: Plan[T], client: Any) -> T:
    """The plan's value (blocking client), or a coroutine of it (asyncio client)."""
    return _run_async(plan) if is_async_client(client) else _run_blocking(plan)  # type: ignore[return-value]


def _run_blocking(plan: Plan[T]) -> T:
    value: Any = None
    with contextlib.closing(plan):  # a failed step closes the plan: its with-blocks exit
        while True:
            try:
                step = plan.send(value)
            except StopIteration as done:
                return done.value
            value = step()


async def _run_async(plan: Plan[T]) -> T:
    value: Any = None
    with contextlib.closing(plan):
        while True:
            try:
                step = plan.send(value)
            except StopIteration as done:
                return done.value
            value = await (asyncio.to_thread(step.function) if isinstance(step, Blocking) else step())
