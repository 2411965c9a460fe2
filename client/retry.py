"""Retrying requests the server refused for now (UNAVAILABLE), with jittered exponential backoff.

A server answers UNAVAILABLE when a queue is full, a queue timeout passed, it is draining, or a model
is being reloaded; the same request may succeed a moment later, or on another replica behind the
same address. Triton 2.51 answers NOT_FOUND "... has no available versions" for a model that is
unloading (a draining or recovering server): that is retried too. Nothing else is: a bad request
stays bad, and a timeout may mean the work was done.

Streams are never retried (pieces may already have been delivered).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .errors import Blip2ClientError, ServerUnavailableError

__all__ = ["RetryPolicy", "is_retryable"]

_UNLOADING = "has no available versions"


def is_retryable(error: BaseException) -> bool:
    """An UNAVAILABLE answer, a refused connection, or a model that is being unloaded or reloaded."""
    if isinstance(error, ServerUnavailableError):
        return True
    return isinstance(error, Blip2ClientError) and _UNLOADING in str(error)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: ``attempts`` tries in all within ``deadline_s`` seconds.

    The n-th wait is uniform in ``[0, min(max_backoff_s, initial_backoff_s * 2**n)]`` ("full
    jitter"), so that clients refused together do not come back together. ``RetryPolicy.off()``
    never retries.
    """

    attempts: int = 4
    deadline_s: float = 10.0
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be a positive int, got {self.attempts!r}")
        for name in ("deadline_s", "initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < float("inf")
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")

    @classmethod
    def off(cls) -> RetryPolicy:
        return cls(attempts=1)

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * (2**retry))
        return (rng or random).uniform(0.0, ceiling)

    def next_wait(self, error: BaseException, tries: int, started: float) -> float | None:
        """Seconds to wait before trying again after ``tries`` failed tries, or None: give up."""
        if tries >= self.attempts or not is_retryable(error):
            return None
        wait = self.backoff_s(tries - 1)
        if time.monotonic() + wait - started > self.deadline_s:
            return None
        return wait
