"""The one state of ``blip2-triton serve`` and the rules for changing it (pure; no server here).

Exactly one owner (the supervisor's main thread) changes the state; the stub watchdog and the
liveness probe only read it, so that a recovery, a restart and a drain can never run at once:

    starting ──► serving ──► recovering ──► serving        (a stub died: its model is reloaded)
                   │  ▲           │
                   │  └─ restarting ◄┘                      (tritonserver died, wedged, or a stub's
                   │        │                                requests are stuck: restart it)
                   └──► draining ──► stopped                 (SIGTERM/SIGINT, from any state)

A stop request is remembered (``stop_requested``) and taken at the next step boundary of a
recovery or restart; once draining, nothing goes back to serving, so nothing the drain unloaded is
ever loaded again.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable


class State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    RECOVERING = "recovering"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"


_ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.SERVING, State.DRAINING, State.STOPPED}),
    State.SERVING: frozenset({State.RECOVERING, State.RESTARTING, State.DRAINING, State.STOPPED}),
    State.RECOVERING: frozenset({State.SERVING, State.RESTARTING, State.DRAINING, State.STOPPED}),
    State.RESTARTING: frozenset({State.SERVING, State.DRAINING, State.STOPPED}),
    State.DRAINING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class TransitionError(RuntimeError):
    """A change of state the rules above do not allow."""


class Lifecycle:
    """The state, its changes (``to``), the stop request, and an epoch that counts changes.

    Readers that act on the state after a slow call (the liveness probe) compare ``epoch`` before
    and after it: a different epoch means the state changed meanwhile and the result is stale.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = State.STARTING
        self._epoch = 0
        self._stop = threading.Event()
        self.history: list[tuple[float, State]] = [(time.monotonic(), State.STARTING)]

    @property
    def state(self) -> State:
        return self._state

    @property
    def epoch(self) -> int:
        return self._epoch

    def to(self, new: State) -> None:
        """Change the state; raises ``TransitionError`` if the rules do not allow it."""
        with self._lock:
            if new not in _ALLOWED[self._state]:
                raise TransitionError(f"{self._state.value} -> {new.value} is not allowed")
            self._state = new
            self._epoch += 1
            self.history.append((time.monotonic(), new))

    def request_stop(self) -> None:
        """Ask for a drain (from a signal handler: only sets a flag)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, timeout_s: float) -> bool:
        """Sleep until a stop is requested or ``timeout_s`` passes; True if one was requested."""
        return self._stop.wait(timeout_s)


class Budget:
    """At most ``limit`` uses within any ``window_s`` seconds (restarts, stub recoveries)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 0 or window_s <= 0:
            raise ValueError("limit must be >= 0 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._used: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._used and now - self._used[0] >= self.window_s:
            self._used.popleft()

    def used(self) -> int:
        """Uses within the last ``window_s`` seconds."""
        self._expire(self._clock())
        return len(self._used)

    def spend(self) -> bool:
        """Use one if the budget allows (True), else change nothing and return False."""
        now = self._clock()
        self._expire(now)
        if len(self._used) >= self.limit:
            return False
        self._used.append(now)
        return True
