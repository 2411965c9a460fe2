"""Smoke tests of the benchmarks: they run end to end at a small size and print every figure.

No speed is asserted (the figures depend on the machine and on what else runs on it): only that
the table has every row, the figures are positive numbers, and the targets are reported.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
LEVELS = ("1", "4", "16")


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/<script>`` as users do (its folder on ``sys.path``)."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _table(markdown: str, key: str = "conc.") -> dict[tuple[str, str], dict[str, str]]:
    """The report's table: (system, ``key`` column) -> {column: cell}."""
    lines = list(
        itertools.takewhile(
            lambda ln: ln.startswith("|"),
            itertools.dropwhile(lambda ln: not ln.startswith("|"), markdown.splitlines()),
        )
    )  # the first table only
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        rows[(cells["system"], cells[key])] = cells
    return rows


def _positive(cell: str) -> bool:
    try:
        return float(cell.rstrip("x")) > 0
    except ValueError:
        return False


@pytest.mark.server
def test_bench_serving_quick_prints_every_row(tmp_path: Path) -> None:
    output = tmp_path / "bench.md"
    result = _run("bench_serving.py", "--quick", "--output", str(output), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = output.read_text()
    assert report.strip() in result.stdout  # printed and written alike
    rows = _table(report)

    figures = ("images/s", "output tok/s", "p50 ms", "p99 ms", "images/s vs A", "images/s vs B")
    in_process = [key for key in rows if key[0].startswith(("A ", "B "))]
    assert len(in_process) == 2
    for key in in_process:
        for column in (*figures, "TTFT p50 ms", "TTFT p99 ms"):
            assert _positive(rows[key][column]), (key, column, rows[key][column])

    unary = {conc: cells for (system, conc), cells in rows.items() if system == "C served blip2"}
    assert sorted(unary, key=int) == list(LEVELS)
    for conc, cells in unary.items():
        for column in figures:
            assert _positive(cells[column]), (conc, column, cells[column])

    stream = {
        conc: cells for (system, conc), cells in rows.items() if system.startswith("C served blip2_stream")
    }
    assert sorted(stream, key=int) == list(LEVELS)
    for conc, cells in stream.items():
        if cells["images/s"] == "n/a":  # a repository without the streaming model: said in a note
            assert "no blip2_stream model in this repository" in report
            continue
        for column in (*figures, "TTFT p50 ms", "TTFT p99 ms"):
            assert _positive(cells[column]), (conc, column, cells[column])

    targets = re.findall(
        r"^- C served blip2 at concurrency .*: (\*\*met\*\*|\*\*not met\*\*|not measured)$",
        report,
        re.MULTILINE,
    )
    assert len(targets) == 3 and targets.count("not measured") == 1  # --quick has no level 64
    assert re.search(r"load average \(1/5/15 min\) [\d.]+ / [\d.]+ / [\d.]+", report)
    assert re.search(r"commit [0-9a-f]{7,}", report)


def test_gpu_decode_small_on_cpu(tmp_path: Path) -> None:
    result = _run(
        "gpu_decode.py",
        "--small",
        "--device",
        "cpu",
        "--chat-turns-tokens",
        "3",
        "--work-dir",
        str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _table(result.stdout, key="active")
    for active in ("1", "8", "32", "64"):
        cells = rows[("engine", active)]
        assert _positive(cells["decode tok/s"]) and _positive(cells["step ms"]), cells
        cells = rows[("transformers generate", active)]
        assert _positive(cells["decode tok/s"]) and _positive(cells["step ms"]), cells
    assert "texts equal with and without the cache: True" in result.stdout  # the prefix-cache chat ran
    assert re.search(r"weight-bandwidth floor: [\d.]+ ms per step", result.stdout)


def test_chat_bench_small_on_cpu() -> None:
    result = _run("bench_chat.py", "--small", "--repeats", "1", "--tokens", "4", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "texts equal with and without the cache: True" in result.stdout
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    turns = [
        dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]
    ]
    assert len(turns) == 6
    for turn in turns[1:]:  # from the second turn on, the conversation so far comes from the cache
        assert int(turn["computed (on)"]) < int(turn["computed (off)"]) == int(turn["prompt positions"])


@pytest.mark.server
def test_bench_traffic_quick_reports_every_rate_and_kind(tmp_path: Path) -> None:
    output = tmp_path / "traffic.md"
    result = _run("bench_traffic.py", "--quick", "--output", str(output), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = output.read_text()
    assert report.strip() in result.stdout  # printed and written alike
    assert (tmp_path / "traffic.png").stat().st_size > 10_000
    tables = report.split("\n\n")
    unloaded, load, per_kind = (t for t in tables if t.startswith("| system"))
    kinds = ("short answer", "caption", "long description")
    systems, rates = ("served", "S"), ("2", "8")

    rows = _table(unloaded, key="kind")
    assert sorted(rows) == sorted((s, k) for s in systems for k in kinds)
    for cells in rows.values():
        assert _positive(cells["p50 ms (reference)"]) and _positive(cells["TTFT p50 ms"]), cells

    rows = _table(load, key="offered req/s")
    assert sorted(rows) == sorted((s, r) for s in systems for r in rates)
    for cells in rows.values():
        assert cells["requests"] == "8" and cells["failed"] == "0", cells
        for column in ("achieved req/s", "p50 ms", "p99 ms", "p99 slowdown"):
            assert _positive(cells[column]), cells
        assert cells["p99 objective (<= 5x)"] in ("met", "not met")

    lines = [ln for ln in per_kind.splitlines() if ln.startswith("| ")][1:]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert sorted((c[0], c[1], c[2]) for c in cells) == sorted(
        (s, r, k) for s in systems for r in rates for k in kinds
    )
    for system in systems:  # every request of a rate is in one of its kinds' rows
        for rate in rates:
            assert sum(int(c[3]) for c in cells if (c[0], c[1]) == (system, rate)) == 8

    assert re.search(
        r"^- Highest rate sustained with p99 slowdown <= 5x: .*\*\*(met|not met)\*\*$|not measured",
        report,
        re.MULTILINE,
    )
    assert re.search(
        r"^- Most requests/s completed at any rate.*: served [\d.]+, S [\d.]+; served / S [\d.]+x",
        report,
        re.M,
    )
    assert re.search(r"load average \(1/5/15 min\) [\d.]+ / [\d.]+ / [\d.]+", report)
    assert re.search(r"commit [0-9a-f]{7,}", report)
    assert re.search(r"The server counted (\d+) generated tokens .* ask for \1\.", report)
