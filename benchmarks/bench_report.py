"""The benchmark's rows, its one table and its targets (plain text for the terminal, Markdown for the README)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One measured system: what it did, how long it took, per-request latencies and first tokens."""

    system: str
    concurrency: int | None = None
    images: int = 0
    seconds: float = 0.0
    tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)  # empty: not a streaming measurement
    missing: str = ""  # why the row has no figures

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def latency(self, percentile: float) -> float:
        return float(np.percentile(self.latencies_s, percentile)) if self.latencies_s else 0.0

    def ttft(self, percentile: float) -> float | None:
        return float(np.percentile(self.ttfts_s, percentile)) if self.ttfts_s else None


@dataclass
class Context:
    """What the figures depend on besides the code: when, where, which commit, how busy."""

    model: str
    generation: str
    date: str = ""
    machine: str = ""
    commit: str = ""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    def header(self) -> str:
        """Date, machine, commit and load averages: the first line of every report."""
        return (
            f"**{self.date}**, {self.machine}, commit {self.commit}; "
            f"load average (1/5/15 min) {_load(self.load_before)} at the start, "
            f"{_load(self.load_after)} at the end (this run's own work included)."
        )

    @classmethod
    def now(cls, model: str, generation: str) -> Context:
        return cls(model, generation, utc_now(), machine_description(), commit_description(), os.getloadavg())


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def machine_description() -> str:
    """CPU model, core count and architecture, e.g. ``2-core x86_64 (Intel Xeon ...)``."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    return f"{cores}-core {platform.machine()} CPU" + (f" ({name})" if name else "")


def commit_description() -> str:
    """``git describe``-like: the short commit, and whether tracked files differ from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (+ uncommitted changes)" if dirty else "")


# --------------------------------------------------------------------------------------------------
# The table


def number(value: float) -> str:
    """Three significant figures or more: 1234, 123, 12.3, 1.23, 0.12."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else number(seconds * 1000)


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if value > 0 and reference > 0 else "-"


HEADER = (
    "system",
    "conc.",
    "images/s",
    "output tok/s",
    "p50 ms",
    "p99 ms",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "images/s vs A",
    "images/s vs B",
    "p50 vs A",
    "p50 vs B",
)


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    """The cells of every row; ratios against rows A (first) and B (second)."""
    a, b = rows[0], rows[1]
    cells = []
    for row in rows:
        conc = "-" if row.concurrency is None else str(row.concurrency)
        if row.missing:
            cells.append((row.system, conc, *(["n/a"] * (len(HEADER) - 2))))
            continue
        p50 = row.latency(50)
        cells.append(
            (
                row.system,
                conc,
                number(row.images_per_s),
                number(row.tokens_per_s),
                _ms(p50),
                _ms(row.latency(99)),
                _ms(row.ttft(50)),
                _ms(row.ttft(99)),
                _ratio(row.images_per_s, a.images_per_s),
                _ratio(row.images_per_s, b.images_per_s),
                _ratio(p50, a.latency(50)),
                _ratio(p50, b.latency(50)),
            )
        )
    return cells


def markdown_table(rows: list[Row]) -> str:
    """The benchmark's table."""
    return markdown(HEADER, table_rows(rows))


def markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table, padded so that it also reads in a terminal."""
    body = [tuple(header), *(tuple(row) for row in cells)]
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(body[0]), rule, *(line(r) for r in body[1:])])


# --------------------------------------------------------------------------------------------------
# Targets (issue 16): reported, never asserted


@dataclass(frozen=True)
class Target:
    description: str
    value: float | None  # measured ratio; None: not measurable in this run
    limit: float
    at_most: bool = False  # True: met when value <= limit

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def line(self) -> str:
        if self.value is None:
            return f"- {self.description}: not measured"
        verdict = "met" if self.met else "not met"
        sign = "<=" if self.at_most else ">="
        return f"- {self.description}: {self.value:.2f}x (target {sign} {self.limit:g}x): **{verdict}**"


def targets(rows: list[Row], served: str) -> list[Target]:
    """Issue 16's targets for the served rows named ``served`` (the unary model)."""
    a, b = rows[0], rows[1]

    def level(concurrency: int) -> Row | None:
        return next(
            (r for r in rows if r.system == served and r.concurrency == concurrency and not r.missing), None
        )

    c1, c16, c64 = level(1), level(16), level(64)
    return [
        Target(
            f"{served} at concurrency 1, p50 latency vs A's per-image p50",
            c1.latency(50) / a.latency(50) if c1 and a.latency(50) else None,
            1.10,
            at_most=True,
        ),
        Target(
            f"{served} at concurrency 16 vs B's images/s",
            c16.images_per_s / b.images_per_s if c16 and b.images_per_s else None,
            0.95,
        ),
        Target(
            f"{served} at concurrency 64 (64 slots) vs B's images/s",
            c64.images_per_s / b.images_per_s if c64 and b.images_per_s else None,
            1.25,
        ),
    ]


QUIET_LOAD = 0.5  # 1-min load average below which a run counts as quiet
BUSY_NOTE = (
    "**Busy machine** (1-min load average {load:.2f} at the start, quiet is below {quiet}): other processes "
    "shared the cores, so these figures are not comparable with a quiet run's. In-process torch (A, "
    "B) is hit hardest: its threads wait for each other when the cores are taken, which can make it "
    "several times slower, and the ratios against A and B then flatter the served pipeline."
)


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def report(rows: list[Row], context: Context, served: str) -> str:
    """The whole report: context, the table, the targets, the notes (Markdown)."""
    lines = [
        context.header(),
        "",
        f"Model: {context.model}. {context.generation}",
        "",
        markdown_table(rows),
        "",
        "Targets (issue 16):",
        *(t.line() for t in targets(rows, served)),
    ]
    missing = {f"{r.system}: n/a, {r.missing}.": None for r in rows if r.missing}
    notes = [*missing, *context.notes]
    if context.load_before[0] > QUIET_LOAD:  # at the end, the load counts this run's own work
        notes.insert(0, BUSY_NOTE.format(load=context.load_before[0], quiet=QUIET_LOAD))
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
