"""The engine model's book of relayed requests: the unary front's requests, and cancels for them.

The relay ``blip2`` gives each request it passes on an id of its own (``RELAY_ID_PREFIX`` + a random
hex) and, when its client leaves, sends a cancel with the same id. ``RelayedRequests`` finds the
request a cancel names, and remembers a cancel that comes before its request (a bounded number of
them), so the request is cancelled on arrival. Ids that do not start with the prefix are never
entered: a client's own request id cannot be cancelled by another client.
"""

from __future__ import annotations

import collections
import threading
from typing import Protocol

from ..contract import RELAY_ID_PREFIX


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class RelayedRequests:
    """Relayed requests in flight by id; ``early_limit`` cancels kept for requests not yet seen."""

    def __init__(self, early_limit: int = 1024) -> None:
        self._requests: dict[str, Cancellable] = {}
        self._early: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._early_limit = early_limit
        self._lock = threading.Lock()

    @staticmethod
    def is_relayed(request_id: str) -> bool:
        return request_id.startswith(RELAY_ID_PREFIX)

    def add(self, request_id: str, request: Cancellable) -> None:
        """Enter a relayed request (cancelled at once when its cancel came first)."""
        if not self.is_relayed(request_id):
            return
        with self._lock:
            early = request_id in self._early
            if early:
                del self._early[request_id]
            else:
                self._requests[request_id] = request
        if early:
            request.cancel()

    def cancel(self, request_id: str) -> bool:
        """Cancel the relayed request ``request_id``; True when it was in flight."""
        if not self.is_relayed(request_id):
            return False
        with self._lock:
            request = self._requests.pop(request_id, None)
            if request is None:
                self._early[request_id] = None
                while len(self._early) > self._early_limit:
                    self._early.popitem(last=False)
        if request is None:
            return False
        request.cancel()
        return True

    def finished(self, request_id: str) -> None:
        """The request got its final response: forget it."""
        with self._lock:
            self._requests.pop(request_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)
