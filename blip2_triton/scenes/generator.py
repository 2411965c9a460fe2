"""Sample a scene of coloured shapes from a seed: what is drawn where, nothing drawn yet.

A scene has one or two groups of objects; a group is one shape in one colour, counted 1 to 4 (4 at
most in all), and no two groups share a shape, so "the square" always names one group. Objects sit
in distinct cells of a 3x3 grid with some jitter, at random sizes and small rotations. A group of one
object sits in one of the five named cells (left, right, top, bottom, centre), so "where is the
star?" always has one answer; larger groups take any free cells.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 210, 30),
    "purple": (140, 55, 185),
    "orange": (245, 135, 25),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (238, 238, 232),
    "black": (22, 22, 26),
    "grey": (128, 128, 128),
}
# Named positions and their cells (column, row) of the 3x3 grid.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (0, 1),
    "right": (2, 1),
    "top": (1, 0),
    "bottom": (1, 2),
    "centre": (1, 1),
}
TEXTURES: tuple[str, ...] = ("plain", "gradient", "stripes", "speckle")
MAX_OBJECTS = 4
GRID = 3


@dataclass(frozen=True)
class SceneObject:
    """One drawn object; coordinates are fractions of the image side."""

    shape: str
    colour: str
    cell: tuple[int, int]
    centre: tuple[float, float]
    radius: float
    rotation: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """A sampled scene: background, texture and objects (in drawing order)."""

    seed: int
    background: str
    texture: str
    texture_strength: float
    texture_angle: float
    noise: float
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def counts(self) -> dict[str, int]:
        """Objects per shape, for the shapes present, in ``SHAPES`` order."""
        found = Counter(o.shape for o in self.objects)
        return {s: found[s] for s in SHAPES if found[s]}

    def colour_of(self, shape: str) -> str:
        """The colour of the group of ``shape`` (a group has one colour)."""
        return next(o.colour for o in self.objects if o.shape == shape)

    def position_of(self, shape: str) -> str | None:
        """The named position of a lone ``shape``; None when there are several or none."""
        cells = [o.cell for o in self.objects if o.shape == shape]
        if len(cells) != 1:
            return None
        return next((name for name, cell in POSITIONS.items() if cell == cells[0]), None)


def _group_counts(rng: random.Random) -> list[int]:
    if rng.random() < 0.4:
        return [rng.randint(1, MAX_OBJECTS)]
    first = rng.randint(1, MAX_OBJECTS - 1)
    return [first, rng.randint(1, MAX_OBJECTS - first)]


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def generate_scene(seed: int) -> Scene:
    """The scene of ``seed`` (the same seed always gives the same scene)."""
    rng = random.Random(seed)
    background = rng.choice(sorted(BACKGROUNDS))
    counts = _group_counts(rng)
    shapes = rng.sample(SHAPES, len(counts))
    colours = [rng.choice(sorted(COLOURS)) for _ in counts]
    named = list(POSITIONS.values())
    rng.shuffle(named)
    free = [(c, r) for r in range(GRID) for c in range(GRID)]
    cells_by_group: list[list[tuple[int, int]]] = [[] for _ in counts]
    for g, count in enumerate(counts):  # lone objects first, into named cells
        if count == 1:
            cell = named.pop()
            cells_by_group[g].append(cell)
            free.remove(cell)
    for g, count in enumerate(counts):
        if count > 1:
            picked = rng.sample(free, count)
            for cell in picked:
                free.remove(cell)
            cells_by_group[g].extend(picked)
    objects = []
    cell_side = 1.0 / GRID
    for shape, colour, cells in zip(shapes, colours, cells_by_group, strict=True):
        for col, row in cells:
            radius = cell_side * rng.uniform(0.27, 0.42)
            slack = cell_side / 2 - radius
            centre = (
                (col + 0.5) * cell_side + rng.uniform(-slack, slack) * 0.7,
                (row + 0.5) * cell_side + rng.uniform(-slack, slack) * 0.7,
            )
            rotation = 0.0 if shape == "circle" else rng.uniform(-15.0, 15.0)
            rgb = _jitter(COLOURS[colour], rng, 18)
            objects.append(SceneObject(shape, colour, (col, row), centre, radius, rotation, rgb))
    rng.shuffle(objects)
    return Scene(
        seed=seed,
        background=background,
        texture=rng.choice(TEXTURES),
        texture_strength=rng.uniform(0.04, 0.12),
        texture_angle=rng.uniform(0.0, 180.0),
        noise=rng.uniform(0.0, 10.0),
        objects=tuple(objects),
    )
