"""Procedural scenes of coloured shapes, and what serving, the demo and ``eval`` do with the small
BLIP-2 trained on them (the training itself is ``blip2_triton_train``, not in this package).

``generator`` samples a scene from a seed, ``render`` draws it with Pillow, ``language`` gives its
caption and question/answer pairs. Everything is deterministic given the seed.
"""

from __future__ import annotations

from .generator import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, Scene, SceneObject, generate_scene
from .language import QA, QUESTION_KINDS, caption, questions
from .render import render_scene

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "POSITIONS",
    "QA",
    "QUESTION_KINDS",
    "SHAPES",
    "Scene",
    "SceneObject",
    "caption",
    "generate_scene",
    "questions",
    "render_scene",
]
