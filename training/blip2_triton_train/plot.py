"""A loss-curve PNG drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
WIDTH, HEIGHT, MARGIN = 900, 420, 60


def smooth(values: Sequence[float], window: int = 25) -> list[float]:
    """Trailing mean over ``window`` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(curves: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Each curve (loss per step, smoothed) on a log-scale y axis, one panel; written to ``path``."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    smoothed = {name: smooth(values) for name, values in curves.items() if values}
    low = min(min(v) for v in smoothed.values())
    high = max(max(v) for v in smoothed.values())
    lo, hi = math.floor(math.log10(max(low, 1e-4))), math.ceil(math.log10(high))
    steps = max(len(v) for v in smoothed.values())
    left, top, right, bottom = MARGIN + 10, 40, WIDTH - 20, HEIGHT - MARGIN

    def x_of(step: float) -> float:
        return left + (right - left) * step / max(1, steps - 1)

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * (math.log10(max(value, 1e-4)) - lo) / max(1e-9, hi - lo)

    draw.rectangle((left, top, right, bottom), outline="black")
    for decade in range(lo, hi + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**decade
            if 10.0**lo <= value <= 10.0**hi:
                y = y_of(value)
                draw.line((left, y, right, y), fill=(225, 225, 225))
                draw.text((8, y - 6), f"{value:g}", fill="black")
    for k in range(6):
        step = round((steps - 1) * k / 5)
        draw.text((x_of(step) - 12, bottom + 8), str(step), fill="black")
    draw.text((WIDTH // 2 - 20, HEIGHT - 28), "step", fill="black")
    draw.text((left, 12), title, fill="black")
    for index, (name, values) in enumerate(smoothed.items()):
        colour = COLOURS[index % len(COLOURS)]
        stride = max(1, len(values) // 1500)
        points = [(x_of(i), y_of(v)) for i, v in enumerate(values) if i % stride == 0]
        draw.line(points, fill=colour, width=2)
        draw.text((right - 260, top + 10 + 16 * index), f"{name} (last {values[-1]:.3f})", fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
