"""Realistic traffic (issue 16, part 5): open-loop Poisson arrivals against the served pipeline and
against S, the server a user writes first.

At each offered rate (requests/s) the same seeded schedule drives both systems: Poisson arrivals, a
fixed mix of request kinds (60% short answers of 1-10 new tokens, 30% captions of 20-40, 10% long
descriptions of 100-200; each request's length drawn once and fixed with ``min_tokens`` =
``max_tokens``, so random weights change nothing), and a distinct encoded JPEG per request, so no
image is ever one the server has seen.

- served: the ``BENCH`` checkpoint (random weights) exported as ``make bench`` exports it (16 slots,
  vision cache off) and served by ``tritonserver`` on free ports; each request is a gRPC stream to
  ``blip2_stream`` opened at its scheduled time (``traffic_served.py``).
- S: ``Blip2Processor`` + ``Blip2ForConditionalGeneration`` in this process, a queue fed at the
  scheduled times, batches of up to 16 gathered for at most 50 ms, one ``generate`` per batch to
  its longest request (``traffic_baseline.py``).

Each system's unloaded latency per kind is measured first (one request at a time); a request is
good within 5x its kind's. Prints the tables, the highest rate each system sustains and their ratio
(target >= 2x: met / not met, never asserted), and writes ``.work/bench/traffic.md`` and
``.work/bench/traffic.png`` (latency against offered load).

    make bench-traffic                                    # or: .venv/bin/python benchmarks/bench_traffic.py
    .venv/bin/python benchmarks/bench_traffic.py --quick  # tiny model, 2 rates, few requests: a smoke test
    OMP_NUM_THREADS=1 make bench-traffic                  # a busy machine: one torch thread per process
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import bench_model
from bench_report import ROOT, Context
from bench_served import export, export_options, generated_tokens, number_list, parse_export_option, serving
from perf_tools import BenchmarkError
from traffic_plan import KINDS, Arrival, Kind, mix_description, poisson_schedule, shortened, unloaded_schedule
from traffic_report import SystemResult, draw, report
from traffic_stats import Outcome, RateRun, unloaded_latency

OUTPUT = ROOT / ".work" / "bench" / "traffic.md"
QUICK_OUTPUT = ROOT / ".work" / "bench" / "traffic-quick.md"
DEFAULT_RATES = (0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
QUICK_RATES = (2.0, 8.0)
QUICK_REQUESTS = 8
QUICK_SHORTER = 5  # --quick divides every kind's lengths by 5
SLOTS = 16  # the served engine's slots = S's largest batch
WARM_IMAGES = 800_000_000  # image seeds: warm-up, unloaded, then one block per rate
UNLOADED_IMAGES = 900_000_000
RATE_IMAGES = 1_000_000


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:4.0f}s] {message}", file=sys.stderr, flush=True)


class System(Protocol):
    name: str

    def one_at_a_time(self, schedule: list[Arrival]) -> list[Outcome]: ...

    def open_loop(self, rate: float, schedule: list[Arrival]) -> RateRun: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny model, rates 2,8, 8 requests each, lengths / 5"
    )
    parser.add_argument(
        "--rates",
        type=number_list("rates", float, "0.5,1,2", "> 0 requests/s", lambda v: v > 0),
        help="offered rates, requests/s (default 0.2,0.5,1,2,3,4,6; --quick 2,8)",
    )
    parser.add_argument("--requests", type=int, help="requests per rate (default 60; --quick 8)")
    parser.add_argument("--unloaded", type=int, help="unloaded requests per kind (default 5; --quick 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the schedules and images (default 0)")
    parser.add_argument(
        "--export-option",
        type=parse_export_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"an ExportOptions field of the served repository (repeatable); defaults: {SLOTS} slots, "
        "max_batch_size 16, vision_cache_mb 0",
    )
    parser.add_argument("--output", type=Path, help=f"Markdown report (default {OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--figure", type=Path, help="PNG (default: the report's path with .png)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint, export and logs")
    return parser


@dataclass(frozen=True)
class Plan:
    """Every schedule of a run: the warm-up burst, the unloaded requests, one schedule per rate."""

    rates: list[float]
    schedules: list[list[Arrival]]
    warm: list[Arrival]
    unloaded: list[Arrival]

    def tokens(self) -> int:
        """New tokens asked for by everything sent."""
        return sum(a.tokens for a in (*self.warm, *self.unloaded, *(a for s in self.schedules for a in s)))


def make_plan(
    rates: list[float], requests: int, per_kind: int, warm: int, seed: int, kinds: tuple[Kind, ...]
) -> Plan:
    """Seeded schedules; each its own block of image seeds, so no image repeats."""
    return Plan(
        rates,
        [
            poisson_schedule(r, requests, seed + 1000 * i, RATE_IMAGES * (i + 1), kinds)
            for i, r in enumerate(rates)
        ],
        poisson_schedule(1000.0, warm, seed + 7, WARM_IMAGES, kinds),
        unloaded_schedule(per_kind, seed + 11, UNLOADED_IMAGES, kinds),
    )


def measure(system: System, description: str, plan: Plan) -> SystemResult:
    """Warm-up (a burst, untimed), unloaded latencies per kind, then every rate in turn."""
    system.open_loop(1000.0, plan.warm)
    unloaded = system.one_at_a_time(plan.unloaded)
    reference = unloaded_latency(unloaded)
    _say(
        f"   {system.name} unloaded p50: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in reference.items())
    )
    runs = []
    for rate, schedule in zip(plan.rates, plan.schedules, strict=True):
        t0 = time.monotonic()
        runs.append(system.open_loop(rate, schedule))
        failed = sum(o.latency_s is None for o in runs[-1].outcomes)
        _say(
            f"   {system.name} at {rate:g} req/s: {len(schedule)} requests, {failed} failed, {time.monotonic() - t0:.0f}s"
        )
    return SystemResult(system.name, description, unloaded, reference, runs)


def run(
    args: argparse.Namespace, say: Callable[[str], None] = _say
) -> tuple[str, list[SystemResult], Context]:
    spec = bench_model.QUICK if args.quick else bench_model.BENCH
    rates = args.rates or list(QUICK_RATES if args.quick else DEFAULT_RATES)
    requests = args.requests or (QUICK_REQUESTS if args.quick else 60)
    per_kind = args.unloaded or (1 if args.quick else 5)
    kinds = shortened(KINDS, QUICK_SHORTER) if args.quick else KINDS
    plan = make_plan(rates, requests, per_kind, 4 if args.quick else SLOTS, args.seed, kinds)
    generation = (
        f"Open-loop Poisson arrivals, seed {args.seed}, {requests} requests per rate at "
        f"{', '.join(f'{r:g}' for r in rates)} requests/s; mix: {mix_description(kinds)}; greedy, "
        "min = max new tokens, no prompt; a distinct 320x240 JPEG per request."
    )
    context = Context.now(spec.describe(), generation)
    (ROOT / ".work" / "bench").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"traffic-{spec.name}-", dir=ROOT / ".work" / "bench"))
    notes: list[str] = []
    try:
        say(f"== building the {spec.name} checkpoint (random weights): {spec.describe()}")
        checkpoint = bench_model.build_checkpoint(work / "checkpoint", spec)
        say("== exporting")
        options = export_options(SLOTS, dict(args.export_option))
        repository = export(checkpoint, work / "model_repository", options, work / "export.log")
        say("== exported; serving")
        from traffic_served import ServedSystem

        with serving(repository, work / "tritonserver.log") as server:
            say(f"   server ready on {server.grpc_url}")
            tokens_before = generated_tokens(server.metrics_url)
            served_description = (
                f"tritonserver 2.51 (pip wheel) on the same cores, {options.max_active_sequences} slots, "
                f"vision cache {options.vision_cache_mb} MB; each request a gRPC stream to `blip2_stream` "
                "(the SDK's AsyncBlip2Client over tritonclient.grpc.aio) opened at its scheduled time; "
                "TTFT to the first text piece."
            )
            served = measure(ServedSystem(server.grpc_url), served_description, plan)
            time.sleep(1.0)  # the token counter is published from a poll loop
            tokens_after = generated_tokens(server.metrics_url)
        if tokens_before is not None and tokens_after is not None:
            notes.append(
                f"The server counted {tokens_after - tokens_before} generated tokens (warm-up included); "
                f"the fixed lengths sent ask for {plan.tokens()}."
            )
        say("== S: transformers in this process")
        from traffic_baseline import GATHER_S, MAX_BATCH, FirstCutServer

        baseline_system = FirstCutServer(checkpoint)
        try:
            baseline_description = (
                f"transformers in this process: a queue fed at the scheduled times, batches of up to {MAX_BATCH} "
                f"gathered for at most {GATHER_S * 1000:.0f} ms, one `generate` per batch to its longest "
                "request; each answer cut to its own length and done when the batch's `generate` returns; "
                "TTFT when the batch's first new token comes (a streamer)."
            )
            baseline = measure(baseline_system, baseline_description, plan)
        finally:
            baseline_system.close()
        notes += [f"S at {r.rate:g} req/s: {'; '.join(r.notes)}" for r in baseline.runs if r.notes]
    finally:
        if args.keep:
            say(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    context.load_after = os.getloadavg()
    errors = sorted({o.error for s in (served, baseline) for r in s.runs for o in r.outcomes if o.error})
    notes += [f"Failed requests said: {e}" for e in errors[:3]]
    notes += [
        "Latency and TTFT count from each request's scheduled arrival. Slowdown: a request's latency over "
        "its kind's unloaded p50 (a failed request: inf). Good: slowdown <= 5. A system meets the objective "
        "at a rate when the p99 slowdown is <= 5 (99% of its requests good); it sustains the highest rate "
        "at which it meets it at that rate and every lower one. Achieved and goodput: requests (good "
        "requests) per second from the first arrival to the last response. Scheduled: the drawn "
        "schedule's own rate (arrivals - 1 over the last arrival's time).",
        f"{_threads()} torch threads in this process (S); OMP_NUM_THREADS "
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')} here and in the server, whose stages run on the same "
        "cores. On a busy machine torch's default threads (one per core) in every process make both "
        "systems many times slower than OMP_NUM_THREADS=1 does.",
    ]
    context.notes = notes
    return report(served, baseline, context), [served, baseline], context


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.requests is not None and args.requests < 1) or (args.unloaded is not None and args.unloaded < 1):
        parser.error("--requests and --unloaded must be at least 1")
    output = args.output or (QUICK_OUTPUT if args.quick else OUTPUT)
    figure = args.figure or output.with_suffix(".png")

    def terminate(signum, frame):  # SIGTERM: unwind, so that the server is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    from blip2_triton.export.errors import ExportError
    from blip2_triton.server import ServerProcessError

    try:
        text, systems, context = run(args)
    except (BenchmarkError, ServerProcessError, ExportError, ValueError) as exc:
        print(f"bench_traffic: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_traffic: interrupted", file=sys.stderr)
        return 130
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    title = (
        f"{context.date}, {context.machine}, load {context.load_before[0]:.2f} -> {context.load_after[0]:.2f}"
    )
    draw(systems, figure, title)
    _say(f"written to {output} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
