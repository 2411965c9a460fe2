"""What ``make bench-traffic`` sends: request kinds, Poisson arrival schedules and distinct images.

Every figure depends only on the seed: the same schedule (arrival times, kinds, lengths, images)
drives both systems. Each request's length is drawn once and fixed (``min_tokens`` =
``max_tokens``), so random weights change nothing about the work. Every image is distinct (its
own colours and noise, encoded as a JPEG), so no cache anywhere can answer from an earlier request.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = (320, 240)  # about the shipped samples' size; the processor resizes to the model's


@dataclass(frozen=True)
class Kind:
    """A kind of request: its share of the traffic and its range of new tokens (inclusive)."""

    name: str
    share: float
    min_tokens: int
    max_tokens: int

    def describe(self) -> str:
        return f"{self.share:.0%} {self.name} ({self.min_tokens}-{self.max_tokens} tokens)"


KINDS = (
    Kind("short answer", 0.6, 1, 10),
    Kind("caption", 0.3, 20, 40),
    Kind("long description", 0.1, 100, 200),
)


def shortened(kinds: tuple[Kind, ...], divisor: int) -> tuple[Kind, ...]:
    """The same kinds with their lengths divided by ``divisor`` (at least 1 token): for smoke tests."""
    return tuple(
        Kind(k.name, k.share, max(1, k.min_tokens // divisor), max(1, k.max_tokens // divisor)) for k in kinds
    )


@dataclass(frozen=True)
class Arrival:
    """One request of a schedule: when it is sent (seconds from the start), what it asks for."""

    at_s: float
    kind: str
    tokens: int
    image_seed: int


def _draw(rng: np.random.Generator, kinds: tuple[Kind, ...], count: int) -> list[tuple[str, int]]:
    """``count`` (kind, tokens) pairs: a kind by its share, then its length uniformly in its range."""
    shares = np.array([k.share for k in kinds], dtype=float)
    picks = rng.choice(len(kinds), size=count, p=shares / shares.sum())
    return [(kinds[i].name, int(rng.integers(kinds[i].min_tokens, kinds[i].max_tokens + 1))) for i in picks]


def poisson_schedule(
    rate: float, count: int, seed: int, first_image: int, kinds: tuple[Kind, ...] = KINDS
) -> list[Arrival]:
    """``count`` open-loop arrivals at ``rate`` requests/s (exponential gaps; the first at 0 s)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=count)
    gaps[0] = 0.0
    times = np.cumsum(gaps)
    return [
        Arrival(float(t), kind, tokens, first_image + i)
        for i, (t, (kind, tokens)) in enumerate(zip(times, _draw(rng, kinds, count), strict=True))
    ]


def unloaded_schedule(
    per_kind: int, seed: int, first_image: int, kinds: tuple[Kind, ...] = KINDS
) -> list[Arrival]:
    """``per_kind`` requests of every kind, lengths drawn as in the traffic, to be sent one at a time."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for kind in kinds:
        for _ in range(per_kind):
            tokens = int(rng.integers(kind.min_tokens, kind.max_tokens + 1))
            arrivals.append(Arrival(0.0, kind.name, tokens, first_image + len(arrivals)))
    return arrivals


def encoded_image(seed: int) -> bytes:
    """A JPEG no other seed gives: a random colour, a random rectangle and pixel noise."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    pixels = np.empty((height, width, 3), dtype=np.float32)
    pixels[:] = rng.integers(0, 256, size=3)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    pixels[y0 : y0 + height // 2, x0 : x0 + width // 2] = rng.integers(0, 256, size=3)
    pixels += rng.normal(0.0, 24.0, size=pixels.shape)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def mix_description(kinds: tuple[Kind, ...] = KINDS) -> str:
    return ", ".join(k.describe() for k in kinds)
