"""The scene generator: deterministic from its seed, and its words agree with its pixels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from blip2_triton.scenes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    QUESTION_KINDS,
    SHAPES,
    caption,
    generate_scene,
    questions,
    render_scene,
)
from blip2_triton.scenes.language import NUMBERS, POSITION_PHRASES, with_article

SEEDS = range(60)
PALETTE = {**COLOURS, **BACKGROUNDS}


def colour_labels(image) -> np.ndarray:
    """Each pixel's nearest palette colour name."""
    names = list(PALETTE)
    pixels = np.asarray(image, dtype=np.float32)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float32)
    distance = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    return np.array(names, dtype=object)[distance.argmin(-1)]


def components(mask: np.ndarray, min_area: int) -> list[list[tuple[int, int]]]:
    """4-connected components of ``mask`` with at least ``min_area`` pixels."""
    seen = np.zeros_like(mask, dtype=bool)
    found = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        stack, pixels = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(pixels) >= min_area:
            found.append(pixels)
    return found


def test_the_same_seed_gives_the_same_scene_image_and_words() -> None:
    for seed in (0, 7, 123456):
        a, b = generate_scene(seed), generate_scene(seed)
        assert a == b
        assert render_scene(a).tobytes() == render_scene(b).tobytes()
        assert caption(a) == caption(b)
        assert questions(a) == questions(b)


def test_different_seeds_give_different_scenes() -> None:
    images = {render_scene(generate_scene(s)).tobytes() for s in SEEDS}
    captions = {caption(generate_scene(s)) for s in SEEDS}
    assert len(images) == len(SEEDS)
    assert len(captions) > len(SEEDS) // 2


def test_scenes_cover_every_shape_colour_background_count_and_position() -> None:
    scenes = [generate_scene(s) for s in range(400)]
    assert {o.shape for sc in scenes for o in sc.objects} == set(SHAPES)
    assert {o.colour for sc in scenes for o in sc.objects} == set(COLOURS)
    assert {sc.background for sc in scenes} == set(BACKGROUNDS)
    assert {n for sc in scenes for n in sc.counts().values()} == {1, 2, 3, 4}
    assert {sc.position_of(s) for sc in scenes for s in sc.counts()} - {None} == set(POSITIONS)
    assert all(1 <= len(sc.objects) <= 4 and len(sc.counts()) in (1, 2) for sc in scenes)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_drawn_pixels_show_what_the_words_say(seed: int) -> None:
    scene = generate_scene(seed)
    size = 64
    labels = colour_labels(render_scene(scene, size))
    by_colour = Counter()
    for shape, count in scene.counts().items():
        by_colour[scene.colour_of(shape)] += count
    for colour, count in by_colour.items():  # one blob per object, in the group's colour
        assert len(components(labels == colour, min_area=12)) == count, (caption(scene), colour)
    pixels = np.asarray(render_scene(scene, size), dtype=np.float32)
    third = size // 3
    for col, row in {(c, r) for c in range(3) for r in range(3)} - {o.cell for o in scene.objects}:
        mean = pixels[row * third : (row + 1) * third, col * third : (col + 1) * third].mean((0, 1))
        nearest = min(BACKGROUNDS, key=lambda n: float(((mean - np.array(BACKGROUNDS[n])) ** 2).sum()))
        assert nearest == scene.background, (caption(scene), (col, row))
    for shape in scene.counts():
        position = scene.position_of(shape)
        if position is None:
            continue
        colour = scene.colour_of(shape)
        blobs = components(labels == colour, min_area=12)
        col, row = POSITIONS[position]
        in_cell = [
            b
            for b in blobs
            if int(np.mean([x for _, x in b]) * 3 // size) == col
            and int(np.mean([y for y, _ in b]) * 3 // size) == row
        ]
        assert len(in_cell) == 1, (caption(scene), shape, position)


@pytest.mark.parametrize("seed", SEEDS)
def test_caption_and_answers_agree_with_the_scene(seed: int) -> None:
    scene = generate_scene(seed)
    text = caption(scene)
    assert text.endswith(f"on a {scene.background} background")
    for shape, count in scene.counts().items():
        noun = shape if count == 1 else f"{shape}s"
        colour = scene.colour_of(shape)
        article = ("an" if colour == "orange" else "a") if count == 1 else NUMBERS[count]
        assert f"{article} {colour} {noun}" in text
    order = [s for s in SHAPES if s in text.split() or f"{s}s" in text.split()]
    assert order == list(scene.counts())
    qas = questions(scene)
    assert {qa.kind for qa in qas} <= set(QUESTION_KINDS)
    answers = {qa.question: qa.answer for qa in qas}
    assert answers["how many shapes are there?"] == NUMBERS[len(scene.objects)]
    assert answers["what colour is the background?"] == scene.background
    for shape, count in scene.counts().items():
        assert answers[f"how many {shape}s are there?"] == NUMBERS[count]
        assert answers[f"is there {with_article(f'{scene.colour_of(shape)} {shape}')}?"] == "yes"
        if count == 1:
            assert answers[f"where is the {shape}?"] == POSITION_PHRASES[scene.position_of(shape)]
    present = {(s, scene.colour_of(s)) for s in scene.counts()}
    for qa in qas:
        if qa.kind == "yes/no":
            _, _, _, colour, shape = qa.question.rstrip("?").split()
            assert qa.answer == ("yes" if (shape, colour) in present else "no")
    yes_no = Counter(qa.answer for qa in qas if qa.kind == "yes/no")
    assert yes_no["yes"] == yes_no["no"]
