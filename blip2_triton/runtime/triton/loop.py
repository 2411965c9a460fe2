"""An asyncio loop on its own thread, for Python models that answer after ``execute`` returns."""

from __future__ import annotations

import asyncio
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol


class ErrorLog(Protocol):
    def error(self, message: str) -> None: ...


class BackgroundLoop:
    """An asyncio loop on its own thread: ``execute()`` hands requests to it and returns at once.

    A Python model whose ``execute`` awaits its requests (even ``async def execute``) gets no new
    batch until they are all answered: one long generation would hold every later request. Answered
    from this loop instead (a non-decoupled model may answer after ``execute`` returns), requests
    overlap freely.
    """

    # Each request in flight holds one worker thread while it waits for its next BLS response
    # (python backend 2.51 hands back a blocking iterator): asyncio's default pool (cores + 4
    # threads) would cap the requests in flight at a handful and starve preprocessing.
    WAIT_THREADS = 256

    def __init__(self, logger: ErrorLog) -> None:
        self.logger = logger
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            ThreadPoolExecutor(self.WAIT_THREADS, thread_name_prefix="blip2-front")
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="blip2-front-loop", daemon=True)
        self.thread.start()

    def submit(self, coroutine) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        future.add_done_callback(self._report)

    def _report(self, future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.logger.error("".join(traceback.format_exception(future.exception())))

    def close(self, timeout_s: float = 5.0) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout_s)
