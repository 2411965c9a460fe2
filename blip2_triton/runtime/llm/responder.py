"""From engine callbacks to the responses of one Triton request, free of Triton glue.

A Triton request to the LLM stage holds one or more rows (a client may send a batch); the engine
generates each row on its own. ``RequestResponder`` gathers the rows' callbacks (they arrive on the
engine thread) and says, through an injected ``send``, what the request is answered:

- unary (``stream=False``): one response with every row's text, flagged final, once all rows are
  done;
- streaming (``stream=True``, one row): one response per new piece of text, then a final flag;
- an error or a cancellation of any row: that one error, flagged final; the other rows are then
  reported cancelled to the engine, which frees their slots at its next step.

Exactly one final send happens per request, whatever the order of the callbacks, and nothing is
sent after it: every send happens under one lock, after a check that the request is not answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import ClientGoneError

# send(outputs or None, error or None, final)
Send = Callable[[list[str] | None, BaseException | None, bool], None]


class RequestResponder:
    """Answers one Triton request of ``rows`` rows; ``sink(row)`` is what the engine calls."""

    def __init__(self, rows: int, *, stream: bool, send: Send, client_cancelled: Callable[[], bool]) -> None:
        if stream and rows != 1:
            raise ValueError("a streaming request has exactly one row")
        self.rows = rows
        self.stream = stream
        self._send = send
        self._client_cancelled = client_cancelled
        self._texts: list[str | None] = [None] * rows
        self._done = 0
        self._answered = False
        self._cancel_requested = False
        self._lock = threading.Lock()
        # Timings for the metrics (time.monotonic()): first piece of text, final answer.
        self.submitted_at: float | None = None
        self.first_text_at: float | None = None
        self.finished_at: float | None = None
        self.tokens = 0  # generated tokens (the engine calls text() once per token)
        self.cancelled_by_client = False
        # The request's timeline (time.perf_counter() by stage name), for BLIP2_TRITON_TIMELINE logs.
        self.marks: dict[str, float] = {"accepted": time.perf_counter()}

    def mark(self, stage: str) -> None:
        """Note when ``stage`` ended (the first time only)."""
        self.marks.setdefault(stage, time.perf_counter())

    def timeline_ms(self) -> dict[str, float]:
        """Each stage's end in ms after the request was accepted, in order."""
        start = self.marks["accepted"]
        return {
            name: round((at - start) * 1000, 2) for name, at in sorted(self.marks.items(), key=lambda m: m[1])
        }

    def sink(self, row: int) -> RowSink:
        return RowSink(self, row)

    def cancel(self) -> None:
        """Cancel the request from outside the engine (a control message, a shutdown)."""
        self._cancel_requested = True

    def cancelled(self) -> bool:
        """Whether the engine should drop the request's rows now.

        The client's flag is read under the send lock, so it is never asked after the final
        response went out (Triton 2.51 crashes on ``is_cancelled`` of a finished request)."""
        if self._answered or self._cancel_requested:
            return True
        with self._lock:
            return self._answered or self._client_cancelled()

    # -- callbacks (engine thread) -------------------------------------------------------------------

    def text(self, row: int, piece: str) -> None:
        self.tokens += 1
        if self.first_text_at is None:
            self.first_text_at = time.monotonic()
            self.mark("first_token")
        if self.stream and piece:
            with self._lock:
                if not self._answered:
                    self._send([piece], None, False)

    def finish(self, row: int, text: str) -> None:
        with self._lock:
            if self._answered or self._texts[row] is not None:
                return
            self._texts[row] = text
            self._done += 1
            if self._done < self.rows:
                return
            self._answered = True
            self.finished_at = time.monotonic()
            self.mark("generated")
            if self.stream:
                self._send(None, None, True)
            else:
                self._send([t or "" for t in self._texts], None, True)

    def fail(self, row: int, error: BaseException) -> None:
        with self._lock:
            if self._answered:
                return
            self._answered = True
            self.finished_at = time.monotonic()
            self.cancelled_by_client = isinstance(error, ClientGoneError)
            self._send(None, error, True)


class RowSink:
    """The engine's view of one row: the ``RequestSink`` protocol of ``llm.engine``."""

    def __init__(self, responder: RequestResponder, row: int) -> None:
        self._responder = responder
        self._row = row
        self.wants_pieces = responder.stream  # a unary request needs the final text only

    def on_text(self, piece: str) -> None:
        self._responder.text(self._row, piece)

    def on_finish(self, text: str) -> None:
        self._responder.finish(self._row, text)

    def on_error(self, exc: BaseException) -> None:
        self._responder.fail(self._row, exc)

    def on_cancelled(self) -> None:
        self._responder.fail(self._row, ClientGoneError())

    def is_cancelled(self) -> bool:
        return self._responder.cancelled()


def throttled(check: Callable[[], bool], interval_s: float = 0.01) -> Callable[[], bool]:
    """``check()`` at most every ``interval_s``, sticky once true (each call of Triton's
    ``is_cancelled`` is a round trip from the stub to the server)."""
    asked_at = 0.0
    cancelled = False

    def checked() -> bool:
        nonlocal asked_at, cancelled
        now = time.monotonic()
        if not cancelled and now - asked_at >= interval_s:
            asked_at, cancelled = now, bool(check())
        return cancelled

    return checked
