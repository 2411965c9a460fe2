"""Responses off the decode thread: sends run on a thread of their own, in the order they came.

Each response a Python-backend model sends is a round trip to tritonserver that the sending thread
waits for. Sent from the engine's decode thread, a stream's response per token made every decode
step wait for one round trip per streaming sequence (about 2 ms per token for a lone stream on a
2-core machine). ``SendThread`` takes the sends instead: the engine hands a send over and goes on
with its step; one thread makes them, first in first out, so a request's responses keep their
order and its final response stays its last (vllm_backend keeps its ``sender.send`` on a response
loop for the same reason).

Free of Triton glue: a send is any callable.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any

_STOP = object()


class SendThread:
    """Runs handed-over sends one at a time on its own thread, in the order they were handed over."""

    def __init__(self, name: str = "blip2-responses") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, send: Callable[..., Any], *args: Any) -> None:
        """Queue ``send(*args)``; returns at once. Any thread."""
        self._queue.put((send, args))

    def wrap(self, send: Callable[..., Any]) -> Callable[..., None]:
        """``send`` made to run on this thread: calling the result queues the call."""
        return lambda *args: self.put(send, *args)

    def close(self, timeout_s: float = 30.0) -> bool:
        """Make every send queued so far, then stop. True when all were made in ``timeout_s``."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            send, args = item
            try:
                send(*args)
            except Exception:  # one request's failed send must not stop everyone's responses
                traceback.print_exc()
