"""What ``make demo`` shows with the trained scene checkpoint: held-out scenes, captions, answers.

``run_scene_demo(client)`` sends a few held-out scenes (never seen in training) to a server that
serves the shipped ``scenes-opt`` checkpoint, prints each served caption and answer next to the
truth, and says how many were right ("12/12 answers correct").
"""

from __future__ import annotations

from collections.abc import Callable

from .checkpoints import captioner_checkpoint, image_size_of
from .heldout import heldout_questions
from .language import caption
from .metrics import exact_match
from .served_eval import heldout_scenes, png_bytes

DEMO_OFFSET = 9000  # held-out seeds HELDOUT_BASE + 9000 ...: not the evaluation's first scenes
DEMO_SCENES = 4
QUESTIONS_PER_SCENE = 3


def demo_model():
    """The checkpoint the demo exports: the shipped trained scene captioner."""
    return captioner_checkpoint()


def run_scene_demo(client, say: Callable[[str], None] = print, scenes: int = DEMO_SCENES) -> tuple[int, int]:
    """Caption and question ``scenes`` held-out scenes through ``client``; returns (right, total) answers."""
    size = image_size_of(captioner_checkpoint())
    chosen = heldout_scenes(scenes, offset=DEMO_OFFSET)
    images = [png_bytes(s, size) for s in chosen]
    captions = client.caption_batch(images, progress=False)
    right = total = captions_right = 0
    for scene, image, served_caption in zip(chosen, images, captions, strict=True):
        truth = caption(scene)
        captions_right += exact_match(served_caption, truth)
        say(f"   scene {scene.seed}: {served_caption!r} {_mark(served_caption, truth)}")
        for qa in heldout_questions(scene)[:QUESTIONS_PER_SCENE]:
            answer = client.ask(image, qa.question)
            right += exact_match(answer, qa.answer)
            total += 1
            say(f"      Q: {qa.question:34s} A: {answer!r} {_mark(answer, qa.answer)}")
    say(f"   captions: {captions_right}/{len(chosen)} exactly right; answers: {right}/{total} correct")
    return right, total


def _mark(served: str, truth: str) -> str:
    return "(right)" if exact_match(served, truth) else f"(WRONG: truth {truth!r})"
