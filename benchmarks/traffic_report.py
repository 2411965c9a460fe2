"""``make bench-traffic``'s report: unloaded latencies, the load table, the per-kind table, the
headline (the highest rate each system sustains under the objective, and their ratio), and the
figure of latency against offered load."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench_report import QUIET_LOAD, Context, markdown, number
from traffic_plan import KINDS
from traffic_stats import (
    GOOD_SHARE,
    SLOWDOWN_LIMIT,
    Outcome,
    RateRun,
    RateSummary,
    percentile,
    slowdowns,
    summarize,
    sustained_rate,
)

TARGET_RATIO = 2.0


@dataclass
class SystemResult:
    """One system's unloaded requests, their reference latencies and its runs at every rate."""

    name: str
    description: str
    unloaded: list[Outcome]
    reference: dict[str, float]  # kind -> unloaded p50 latency
    runs: list[RateRun]

    def summaries(self) -> list[RateSummary]:
        return [summarize(run, self.reference) for run in self.runs]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else number(seconds * 1000)


def _rate(rate: float) -> str:
    return f"{rate:g}"


def unloaded_table(systems: list[SystemResult]) -> str:
    header = ("system", "kind", "requests", "mean tokens", "p50 ms (reference)", "TTFT p50 ms")
    cells = []
    for system in systems:
        for kind in KINDS:
            mine = [o for o in system.unloaded if o.arrival.kind == kind.name]
            tokens = sum(o.arrival.tokens for o in mine) / len(mine) if mine else 0.0
            cells.append(
                (
                    system.name,
                    kind.name,
                    str(len(mine)),
                    number(tokens),
                    _ms(system.reference.get(kind.name)),
                    _ms(percentile([o.ttft_s for o in mine if o.ttft_s is not None], 50)),
                )
            )
    return markdown(header, cells)


def _scheduled_rate(run: RateRun) -> float:
    """The rate the drawn schedule itself has: arrivals over the time between the first and the last."""
    last = max(o.arrival.at_s for o in run.outcomes)
    return (len(run.outcomes) - 1) / last if last > 0 else 0.0


def load_table(systems: list[SystemResult]) -> str:
    header = (
        "system",
        "offered req/s",
        "scheduled req/s",
        "requests",
        "failed",
        "achieved req/s",
        "goodput req/s",
        "good %",
        "p99 slowdown",
        "p50 ms",
        "p99 ms",
        f"p99 objective (<= {SLOWDOWN_LIMIT:g}x)",
    )
    cells = []
    for system in systems:
        for run, summary in zip(system.runs, system.summaries(), strict=True):
            latencies = [o.latency_s for o in run.outcomes if o.latency_s is not None]
            cells.append(
                (
                    system.name,
                    _rate(run.rate),
                    number(_scheduled_rate(run)),
                    str(summary.requests),
                    str(summary.requests - summary.completed),
                    number(summary.throughput),
                    number(summary.goodput),
                    f"{100 * summary.good_share:.0f}",
                    "inf" if math.isinf(summary.slowdown_p99) else f"{summary.slowdown_p99:.2f}x",
                    _ms(percentile(latencies, 50)),
                    _ms(percentile(latencies, 99)),
                    "met" if summary.meets_p99 else "not met",
                )
            )
    return markdown(header, cells)


def kind_table(systems: list[SystemResult]) -> str:
    header = (
        "system",
        "offered req/s",
        "kind",
        "requests",
        "p50 ms",
        "p99 ms",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "good %",
    )
    cells = []
    for system in systems:
        for run in system.runs:
            ratios = dict(zip(map(id, run.outcomes), slowdowns(run, system.reference), strict=True))
            for kind in KINDS:
                mine = [o for o in run.outcomes if o.arrival.kind == kind.name]
                latencies = [o.latency_s for o in mine if o.latency_s is not None]
                ttfts = [o.ttft_s for o in mine if o.ttft_s is not None]
                good = sum(ratios[id(o)] <= SLOWDOWN_LIMIT for o in mine)
                cells.append(
                    (
                        system.name,
                        _rate(run.rate),
                        kind.name,
                        str(len(mine)),
                        _ms(percentile(latencies, 50)),
                        _ms(percentile(latencies, 99)),
                        _ms(percentile(ttfts, 50)),
                        _ms(percentile(ttfts, 99)),
                        f"{100 * good / len(mine):.0f}" if mine else "-",
                    )
                )
    return markdown(header, cells)


def headline(served: SystemResult, baseline: SystemResult) -> list[str]:
    """The highest rate each system sustains (both criteria), and the served/S ratio against the target."""
    highest = max(run.rate for run in served.runs)
    lines = []
    for criterion, wording in (
        ("p99", f"p99 slowdown <= {SLOWDOWN_LIMIT:g}x"),
        ("share", f">= {GOOD_SHARE:.0%} of requests good"),
    ):
        rates = {s.name: sustained_rate(s.summaries(), criterion) for s in (served, baseline)}
        said = ", ".join(
            f"{name} {'none of the rates' if r is None else f'{r:g} req/s'}" for name, r in rates.items()
        )
        mine, theirs = rates[served.name], rates[baseline.name]
        if criterion == "p99":
            if theirs is None or mine is None:
                verdict = "not measured (a system meets the objective at none of the rates: add lower ones)"
            else:
                ratio = mine / theirs
                bound = (
                    " (a lower bound: the server met it at the highest rate tried)" if mine == highest else ""
                )
                met = "met" if ratio >= TARGET_RATIO else "not met"
                verdict = f"{ratio:.2f}x{bound} (target >= {TARGET_RATIO:g}x): **{met}**"
            lines.append(f"- Highest rate sustained with {wording}: {said}. Served / S: {verdict}")
        else:
            lines.append(f"- Highest rate sustained with {wording}: {said}.")
    capacity = {s.name: max(x.throughput for x in s.summaries()) for s in (served, baseline)}
    ratio = capacity[served.name] / capacity[baseline.name] if capacity[baseline.name] > 0 else math.inf
    lines.append(
        "- Most requests/s completed at any rate, whatever their latency: "
        + ", ".join(f"{name} {number(value)}" for name, value in capacity.items())
        + f"; served / S {ratio:.2f}x (context, not the target)."
    )
    return lines


def report(served: SystemResult, baseline: SystemResult, context: Context) -> str:
    systems = [served, baseline]
    load = " / ".join(f"{x:.2f}" for x in context.load_before)
    load_after = " / ".join(f"{x:.2f}" for x in context.load_after)
    lines = [
        f"**{context.date}**, {context.machine}, commit {context.commit}; load average (1/5/15 min) "
        f"{load} at the start, {load_after} at the end (this run's own work included).",
        "",
        f"Model: {context.model}. {context.generation}",
        "",
        *(f"- {s.name}: {s.description}" for s in systems),
        "",
        "Unloaded latency per kind (one request at a time; the objective's reference):",
        "",
        unloaded_table(systems),
        "",
        "Under open-loop Poisson load:",
        "",
        load_table(systems),
        "",
        "Per kind:",
        "",
        kind_table(systems),
        "",
        "Target (issue 16, part 5):",
        *headline(served, baseline),
    ]
    notes = list(context.notes)
    if context.load_before[0] > QUIET_LOAD:
        notes.insert(
            0,
            f"**Busy machine** (1-min load average {context.load_before[0]:.2f} at the start, quiet is below "
            f"{QUIET_LOAD}): other work shared the cores, so these figures are not comparable with a quiet run's.",
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def draw(systems: list[SystemResult], path: Path, title: str) -> None:
    """Latency (p50, p99, all kinds) and goodput against offered load, both systems, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, colour in zip(systems, ("tab:blue", "tab:red"), strict=False):
        rates = [run.rate for run in system.runs]
        for q, style in ((50, "-o"), (99, "--s")):
            values = [
                percentile([o.latency_s for o in run.outcomes if o.latency_s is not None], q)
                for run in system.runs
            ]
            points = [(r, v * 1000) for r, v in zip(rates, values, strict=True) if v is not None]
            if points:
                left.plot(*zip(*points, strict=True), style, color=colour, label=f"{system.name} p{q}")
        summaries = system.summaries()
        right.plot(
            rates, [s.throughput for s in summaries], "-o", color=colour, label=f"{system.name} achieved"
        )
        right.plot(rates, [s.goodput for s in summaries], "--s", color=colour, label=f"{system.name} goodput")
    left.set_yscale("log")
    left.set_xlabel("offered load (requests/s)")
    left.set_ylabel("latency, all kinds (ms)")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    top = max(run.rate for system in systems for run in system.runs)
    right.plot([0, top], [0, top], ":", color="gray", label="offered")
    right.set_xlabel("offered load (requests/s)")
    right.set_ylabel("requests/s")
    right.grid(True, alpha=0.3)
    right.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
