"""Scores for captions, answers and rankings (plain Python and numpy; no model needed)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def normalise(text: str) -> str:
    """Lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().strip().rstrip(".").split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of word precision and recall (bag of words, as in SQuAD)."""
    predicted, expected = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def recall_at_k(scores: np.ndarray, relevant: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of queries (rows of ``scores``) whose relevant item (column) ranks within the top k."""
    scores = np.asarray(scores, dtype=np.float64)
    target = scores[np.arange(len(relevant)), np.asarray(relevant)]
    rank = (scores > target[:, None]).sum(axis=1)  # ties count in the query's favour
    return {k: float((rank < k).mean()) for k in ks}


def rerank(scores: np.ndarray, rescore, top: int) -> np.ndarray:
    """Scores where each row's ``top`` best columns are ordered by ``rescore(row, columns)``.

    The re-scored columns are placed above all others (as a search that re-ranks its top hits
    returns them); ``rescore`` returns one score per column.
    """
    scores = np.asarray(scores, dtype=np.float64)
    result = np.full_like(scores, -np.inf)
    for row in range(scores.shape[0]):
        columns = np.argsort(-scores[row], kind="stable")[:top]
        fresh = np.asarray(rescore(row, columns), dtype=np.float64)
        result[row, columns] = 1e6 + fresh
        rest = np.setdiff1d(np.arange(scores.shape[1]), columns)
        result[row, rest] = scores[row, rest]
    return result


class Tally:
    """Right answers per kind."""

    def __init__(self) -> None:
        self.right: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def add(self, kind: str, correct: bool) -> None:
        self.total[kind] += 1
        self.right[kind] += int(correct)

    def accuracy(self, kind: str | None = None) -> float:
        if kind is None:
            total = sum(self.total.values())
            return sum(self.right.values()) / total if total else 0.0
        return self.right[kind] / self.total[kind] if self.total[kind] else 0.0

    def as_dict(self) -> dict[str, dict[str, float]]:
        kinds = {
            k: {"right": self.right[k], "total": self.total[k], "accuracy": self.accuracy(k)}
            for k in self.total
        }
        total = sum(self.total.values())
        kinds["all"] = {"right": sum(self.right.values()), "total": total, "accuracy": self.accuracy()}
        return kinds
