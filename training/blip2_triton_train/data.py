"""Training data: rendered scenes as one uint8 tensor, and token sequences built from their words.

Sequences are what the served pipeline feeds the language model: ``num_query_tokens`` image tokens,
then the tokenised prompt (``</s>`` first, as ``Blip2Processor`` gives it; a caption has no prompt,
so just ``</s>``, as ``generate`` builds it), then the target text and ``</s>``. Only the target
and the final ``</s>`` are scored.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blip2_triton.scenes.generator import POSITIONS, SHAPES, Scene, generate_scene
from blip2_triton.scenes.language import QA, caption, questions, vqa_prompt
from blip2_triton.scenes.render import render_scene

IGNORE = -100


@dataclass
class SceneSet:
    """Scenes and their images (uint8, [N, H, W, 3])."""

    scenes: list[Scene]
    images: np.ndarray

    @classmethod
    def render(cls, seeds: Sequence[int], size: int, cache: Path | None = None) -> SceneSet:
        """Render the scenes of ``seeds``; ``cache``: an .npy file to reuse (written when absent)."""
        scenes = [generate_scene(s) for s in seeds]
        if cache is not None and cache.exists():
            images = np.load(cache)
            if images.shape == (len(seeds), size, size, 3):
                return cls(scenes, images)
        images = np.stack([np.asarray(render_scene(s, size)) for s in scenes])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, images)
        return cls(scenes, images)


def pixel_values(images: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """What ``BlipImageProcessor`` gives for images already at its size: [N, 3, H, W] float32."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def pick_questions(
    scene: Scene, count: int, rng: random.Random, weights: dict[str, float] | None = None
) -> list[QA]:
    """``count`` questions about ``scene``: a kind first (by ``weights``, default 1, among those it
    has), then one question of that kind."""
    by_kind: dict[str, list[QA]] = {}
    for qa in questions(scene):
        by_kind.setdefault(qa.kind, []).append(qa)
    kinds = sorted(by_kind)
    chances = [(weights or {}).get(k, 1.0) for k in kinds]
    if all(c == 1.0 for c in chances):  # uniform: one rng.choice per pick, as before weights existed
        return [rng.choice(by_kind[rng.choice(kinds)]) for _ in range(count)]
    return [rng.choice(by_kind[rng.choices(kinds, chances)[0]]) for _ in range(count)]


def shape_positions(scenes: Sequence[Scene]):
    """[N, len(SHAPES)] long: the index in ``POSITIONS`` of each lone shape, IGNORE elsewhere."""
    import torch

    names = list(POSITIONS)
    targets = torch.full((len(scenes), len(SHAPES)), IGNORE, dtype=torch.long)
    for row, scene in enumerate(scenes):
        for column, shape in enumerate(SHAPES):
            position = scene.position_of(shape)
            if position is not None:
                targets[row, column] = names.index(position)
    return targets


class SequenceBuilder:
    """Token sequences (input ids, labels) for captions and questions, tokenised once each."""

    def __init__(self, tokenizer, num_query_tokens: int, image_token_id: int) -> None:
        self.tokenizer = tokenizer
        self.image_ids = [image_token_id] * num_query_tokens
        self._prompts: dict[str, list[int]] = {}
        self._targets: dict[str, list[int]] = {}

    def _prompt(self, prompt: str) -> list[int]:
        if prompt not in self._prompts:
            ids = self.tokenizer(prompt)["input_ids"] if prompt else [self.tokenizer.bos_token_id]
            self._prompts[prompt] = self.image_ids + list(ids)
        return self._prompts[prompt]

    def _target(self, text: str) -> list[int]:
        if text not in self._targets:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._targets[text] = [*ids, self.tokenizer.eos_token_id]
        return self._targets[text]

    def example(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """Input ids and labels of one sequence (labels are -100 over the image and the prompt)."""
        head, tail = self._prompt(prompt), self._target(target)
        return head + tail, [IGNORE] * len(head) + tail

    def batch(
        self,
        scenes: Sequence[Scene],
        questions_per_image: int,
        rng: random.Random,
        weights: dict[str, float] | None = None,
    ):
        """One caption and ``questions_per_image`` questions per scene, right-padded.

        Returns ``(input_ids, attention_mask, labels, image_index)``; ``image_index[i]`` is the
        scene (row of ``scenes``) that sequence ``i`` is about.
        """
        import torch

        rows, owners = [], []
        for index, scene in enumerate(scenes):
            rows.append(self.example("", caption(scene)))
            owners.append(index)
            for qa in pick_questions(scene, questions_per_image, rng, weights):
                rows.append(self.example(vqa_prompt(qa.question), qa.answer))
                owners.append(index)
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, target) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(target)
            attention[row, : len(ids)] = 1
        return input_ids, attention, labels, torch.tensor(owners)
