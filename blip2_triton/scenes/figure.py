"""A picture of held-out scenes with their served captions (for the README)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .generator import generate_scene
from .render import render_scene

TILE = 216
TEXT_HEIGHT = 54


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate) > width and line:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line]


def captioned_grid(items: Sequence[tuple[int, str, str]], columns: int = 4, size: int = 72) -> Image.Image:
    """Scenes ``(seed, truth, served caption)`` drawn at the model's ``size``, shown enlarged, captioned.

    A served caption equal to the truth is written in green, another in red with the truth below.
    """
    rows = -(-len(items) // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + TEXT_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (seed, truth, served) in enumerate(items):
        x, y = (index % columns) * TILE, (index // columns) * (TILE + TEXT_HEIGHT)
        tile = render_scene(generate_scene(seed), size).resize((TILE - 8, TILE - 8), Image.Resampling.NEAREST)
        sheet.paste(tile, (x + 4, y + 4))
        right = served.strip() == truth
        served_lines = _wrap(served, TILE - 10, draw)[: 2 if not right else 4]
        truth_lines = [] if right else _wrap(f"(truth: {truth})", TILE - 10, draw)
        colours = [(20, 120, 40) if right else (190, 30, 30)] * len(served_lines) + [(110, 110, 110)] * len(
            truth_lines
        )
        for k, (line, colour) in enumerate(list(zip(served_lines + truth_lines, colours, strict=True))[:4]):
            draw.text((x + 5, y + TILE + 2 + 12 * k), line, fill=colour)
    return sheet


def save_grid(items: Sequence[tuple[int, str, str]], path: str | Path, size: int = 72) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(items, size=size).quantize(colors=128).save(path, optimize=True)
    return path
