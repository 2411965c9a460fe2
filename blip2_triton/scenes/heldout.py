"""Which seeds train and which are held out, and the held-out questions asked of each scene.

Training uses seeds ``0 .. train_scenes - 1``, the tokenizer corpus negative seeds; held-out
scenes start at ``HELDOUT_BASE``, far from both, so no held-out scene was ever seen in training.
"""

from __future__ import annotations

import random

from .generator import Scene
from .language import QA, QUESTION_KINDS, questions

HELDOUT_BASE = 1_000_000


def heldout_seeds(count: int, offset: int = 0) -> list[int]:
    """``count`` held-out seeds (never used in training)."""
    return list(range(HELDOUT_BASE + offset, HELDOUT_BASE + offset + count))


def heldout_questions(scene: Scene) -> list[QA]:
    """One question of each kind the scene has (a fixed pick per scene), in ``QUESTION_KINDS`` order."""
    rng = random.Random(f"heldout-{scene.seed}")
    by_kind: dict[str, list[QA]] = {}
    for qa in questions(scene):
        by_kind.setdefault(qa.kind, []).append(qa)
    return [rng.choice(by_kind[kind]) for kind in QUESTION_KINDS if kind in by_kind]
