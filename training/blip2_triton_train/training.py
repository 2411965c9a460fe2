"""What both training loops share: the run's settings, the optimiser, the schedule, the log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does (every number that changes the result)."""

    seed: int = 0
    train_scenes: int = 30_000
    caption_steps: int = 8000
    batch_size: int = 64
    questions_per_image: int = 2
    position_weight: float = 1.0  # position questions (binding a shape to a place) are the slowest to learn
    sharpen_cross_attention: float = 1.0  # >1 scales the Q-Former's cross-attention query/key weights
    position_aux_weight: float = 1.0  # auxiliary loss: each lone shape's position from the mean image token
    position_aux_steps: int = 3000  # ... over the first steps only (then the LM loss alone)
    learning_rate: float = 2e-3
    warmup_steps: int = 150
    weight_decay: float = 0.05
    retrieval_steps: int = 3000
    retrieval_batch_size: int = 64
    retrieval_learning_rate: float = 1e-3
    retrieval_tunes_vision: bool = False  # True: the retriever trains its ViT copy too (not reproducible)
    threads: int = 2


def log(message: str) -> None:
    """A timestamped progress line on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def optimizer_for(model, learning_rate: float, weight_decay: float, extra=()):
    """AdamW over the trainable parameters (no decay for biases, norms and embeddings)."""
    import torch

    decay, no_decay = [], list(extra)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 and "embedding" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.98))


def warmup_cosine(optimizer, steps: int, warmup: int):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% at ``steps``."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BatchOrder:
    """Scene indices in shuffled epochs, a batch at a time (seeded)."""

    def __init__(self, size: int, rng) -> None:
        self.size, self.rng, self.queue = size, rng, []

    def next(self, batch: int) -> list[int]:
        while len(self.queue) < batch:
            self.queue += self.rng.sample(range(self.size), self.size)
        picked, self.queue = self.queue[:batch], self.queue[batch:]
        return picked
