"""OpenAI's ``stop`` strings: the text ends before the first one, which is not returned.

The server generates on (it knows no stop strings); the frontend cuts the text. A stream holds back
the tail that could be the start of a stop string until the next piece says whether it is, and
ends (cancelling the request on the server) once a stop string is seen.
"""

from __future__ import annotations

from .errors import bad_request

MAX_STOPS = 4


def stop_list(stop: str | list[str] | None) -> tuple[str, ...]:
    """The stop strings of a request (at most 4, none empty), or a 400 ApiError."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} strings, got {len(stops)}", "stop")
    if any(not item for item in stops):
        raise bad_request("stop strings must not be empty", "stop")
    return tuple(stops)


def cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    ends = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


class StopScanner:
    """Pieces of a stream in, the text that may be sent out; ``stopped`` once a stop string came."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """The text that can be sent now (nothing after a stop string)."""
        if self.stopped:
            return ""
        text, self.stopped = cut(self._held + piece, self.stops)
        if self.stopped:
            self._held = ""
            return text
        keep = self._partial_stop(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What is held back, at the stream's end."""
        held, self._held = self._held, ""
        return held

    def _partial_stop(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a stop string."""
        for length in range(min(len(text), max((len(s) for s in self.stops), default=0) - 1), 0, -1):
            if any(stop.startswith(text[-length:]) for stop in self.stops):
                return length
        return 0
