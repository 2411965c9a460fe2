"""The words of a scene: its caption and its question/answer pairs.

Captions name the groups in ``SHAPES`` order, then the background: "two red circles and a blue
square on a white background". Questions come in four kinds: count, colour, position and yes/no;
``vqa_prompt`` is how a question is put to the OPT model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .generator import COLOURS, SHAPES, Scene

NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_KINDS = ("count", "colour", "position", "yes/no")
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}


@dataclass(frozen=True)
class QA:
    """A question about a scene, its one right answer, and its kind (one of ``QUESTION_KINDS``)."""

    question: str
    answer: str
    kind: str


def vqa_prompt(question: str) -> str:
    """OPT's BLIP-2 question prompt, as the SDK sends it (``client/prompts.py``)."""
    return f"Question: {question} Answer:"


def plural(shape: str) -> str:
    return f"{shape}s"


def with_article(words: str) -> str:
    """'a red circle', 'an orange star'."""
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def group_phrase(shape: str, colour: str, count: int) -> str:
    """'a red circle', 'an orange star', 'three blue stars'."""
    if count == 1:
        return with_article(f"{colour} {shape}")
    return f"{NUMBERS[count]} {colour} {plural(shape)}"


def caption(scene: Scene) -> str:
    """The one right caption of ``scene``."""
    return caption_of(scene_groups(scene), scene.background)


def scene_groups(scene: Scene) -> list[tuple[str, str, int]]:
    """``(shape, colour, count)`` per group, in ``SHAPES`` order."""
    return [(s, scene.colour_of(s), n) for s, n in scene.counts().items()]


def caption_of(groups: list[tuple[str, str, int]], background: str) -> str:
    """The caption of groups ``(shape, colour, count)`` on ``background`` (groups put in ``SHAPES`` order)."""
    ordered = sorted(groups, key=lambda g: SHAPES.index(g[0]))
    return f"{' and '.join(group_phrase(*g) for g in ordered)} on a {background} background"


def questions(scene: Scene) -> list[QA]:
    """Every question this module asks about ``scene``, with its answer (deterministic order).

    Yes/no questions come in balanced pairs: each true statement about a group is followed by a
    false one with the colour or the shape changed.
    """
    rng = random.Random(f"questions-{scene.seed}")
    counts = scene.counts()
    found: list[QA] = [QA("how many shapes are there?", NUMBERS[sum(counts.values())], "count")]
    for shape, count in counts.items():
        colour = scene.colour_of(shape)
        found.append(QA(f"how many {plural(shape)} are there?", NUMBERS[count], "count"))
        verb = "is the" if count == 1 else "are the"
        name = shape if count == 1 else plural(shape)
        found.append(QA(f"what colour {verb} {name}?", colour, "colour"))
        position = scene.position_of(shape)
        if position is not None:
            found.append(QA(f"where is the {shape}?", POSITION_PHRASES[position], "position"))
        found.append(QA(f"is there {with_article(f'{colour} {shape}')}?", "yes", "yes/no"))
        found.append(_false_statement(scene, shape, colour, rng))
    found.append(QA("what colour is the background?", scene.background, "colour"))
    return found


def _false_statement(scene: Scene, shape: str, colour: str, rng: random.Random) -> QA:
    present = {(s, scene.colour_of(s)) for s in scene.counts()}
    if rng.random() < 0.5:
        options = [(shape, c) for c in sorted(COLOURS) if (shape, c) not in present]
    else:
        options = [(s, colour) for s in SHAPES if (s, colour) not in present]
    other_shape, other_colour = rng.choice(options)
    return QA(f"is there {with_article(f'{other_colour} {other_shape}')}?", "no", "yes/no")
