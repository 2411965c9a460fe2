"""Hard negative captions: the caption of a scene with one thing changed.

Retrieval must tell "two red circles and a blue square" from "three red circles and a blue square";
training the ITC and ITM heads against such near misses is what makes them fine-grained.
"""

from __future__ import annotations

import random

from blip2_triton.scenes.generator import BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, Scene
from blip2_triton.scenes.language import caption, caption_of, scene_groups

CHANGES = ("colour", "shape", "count", "background", "drop", "add")


def altered_caption(scene: Scene, rng: random.Random) -> str:
    """The caption of ``scene`` with one change (a colour, shape, count, the background, a group)."""
    groups = scene_groups(scene)
    background = scene.background
    original = caption(scene)
    for _ in range(20):
        change = rng.choice(CHANGES)
        new = list(groups)
        g = rng.randrange(len(new))
        shape, colour, count = new[g]
        used = {s for s, _, _ in new}
        total = sum(n for _, _, n in new)
        if change == "colour":
            new[g] = (shape, rng.choice([c for c in sorted(COLOURS) if c != colour]), count)
        elif change == "shape":
            new[g] = (rng.choice([s for s in SHAPES if s not in used]), colour, count)
        elif change == "count":
            options = [
                n for n in range(1, MAX_OBJECTS + 1) if n != count and total - count + n <= MAX_OBJECTS
            ]
            if not options:
                continue
            new[g] = (shape, colour, rng.choice(options))
        elif change == "background":
            background = rng.choice([b for b in sorted(BACKGROUNDS) if b != background])
        elif change == "drop":
            if len(new) < 2:
                continue
            new.pop(g)
        elif change == "add":
            if len(new) > 1 or total >= MAX_OBJECTS:
                continue
            free = [s for s in SHAPES if s not in used]
            new.append((rng.choice(free), rng.choice(sorted(COLOURS)), rng.randint(1, MAX_OBJECTS - total)))
        text = caption_of(new, background)
        if text != original:
            return text
        background = scene.background
    raise RuntimeError(f"no altered caption found for {original!r}")
