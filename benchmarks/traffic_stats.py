"""What one traffic run measured, and what it means under the latency objective.

A request is *good* when it succeeded within ``SLOWDOWN_LIMIT`` times its kind's unloaded latency
(the p50 of that system's requests of that kind sent one at a time). A system *meets the objective*
at an offered rate when the p99 of its requests' slowdowns (latency / unloaded latency of the
kind; a failed request counts as infinitely slow) is at most ``SLOWDOWN_LIMIT``: 99% of its
requests are good. The weaker criterion, at least ``GOOD_SHARE`` of the requests good, is reported
beside it. A system *sustains* the highest offered rate at which it and every lower rate meet it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from traffic_plan import KINDS, Arrival

SLOWDOWN_LIMIT = 5.0
GOOD_SHARE = 0.9


@dataclass(frozen=True)
class Outcome:
    """One request as its sender saw it, in seconds from its scheduled arrival."""

    arrival: Arrival
    latency_s: float | None  # to the last response; None: the request failed
    ttft_s: float | None  # to the first text piece (S: its batch's first token)
    error: str = ""


@dataclass
class RateRun:
    """Every request of one system at one offered rate."""

    system: str
    rate: float
    outcomes: list[Outcome]
    span_s: float  # from the first scheduled arrival to the last response
    notes: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.percentile(finite, q)) if finite else None


def unloaded_latency(outcomes: list[Outcome]) -> dict[str, float]:
    """Kind -> the p50 latency of its requests sent one at a time (the objective's reference)."""
    reference = {}
    for kind in KINDS:
        value = percentile([o.latency_s for o in outcomes if o.arrival.kind == kind.name and o.latency_s], 50)
        if value is None:
            raise ValueError(f"no unloaded {kind.name} request succeeded: the objective has no reference")
        reference[kind.name] = value
    return reference


@dataclass(frozen=True)
class RateSummary:
    """One row of the load table."""

    system: str
    rate: float
    requests: int
    completed: int
    good: int
    span_s: float
    slowdown_p99: float  # inf when more than 1% of the requests failed

    @property
    def throughput(self) -> float:
        return self.completed / self.span_s if self.span_s > 0 else 0.0

    @property
    def goodput(self) -> float:
        return self.good / self.span_s if self.span_s > 0 else 0.0

    @property
    def good_share(self) -> float:
        return self.good / self.requests if self.requests else 0.0

    @property
    def meets_p99(self) -> bool:
        return self.slowdown_p99 <= SLOWDOWN_LIMIT

    @property
    def meets_share(self) -> bool:
        return self.good_share >= GOOD_SHARE


def slowdowns(run: RateRun, reference: dict[str, float]) -> list[float]:
    """Each request's latency over its kind's unloaded latency (inf for a failed request)."""
    return [
        math.inf if o.latency_s is None else o.latency_s / reference[o.arrival.kind] for o in run.outcomes
    ]


def summarize(run: RateRun, reference: dict[str, float]) -> RateSummary:
    ratios = slowdowns(run, reference)
    ordered = np.sort(np.array(ratios))
    # numpy's percentile over inf gives nan; take the order statistic instead (linear like numpy's)
    position = 0.99 * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    p99 = math.inf if math.isinf(high) else float(low + (high - low) * (position - math.floor(position)))
    return RateSummary(
        run.system,
        run.rate,
        requests=len(ratios),
        completed=sum(o.latency_s is not None for o in run.outcomes),
        good=sum(r <= SLOWDOWN_LIMIT for r in ratios),
        span_s=run.span_s,
        slowdown_p99=p99,
    )


def sustained_rate(summaries: list[RateSummary], criterion: str = "p99") -> float | None:
    """The highest offered rate at which the system meets the objective at it and every lower rate."""
    best = None
    for summary in sorted(summaries, key=lambda s: s.rate):
        if not (summary.meets_p99 if criterion == "p99" else summary.meets_share):
            break
        best = summary.rate
    return best
