"""Side-by-side benchmark (issues 8 and 16): transformers in process against the served pipeline, one table.

In one run, on the same images (the shipped samples, cycled to 16), with random weights at a
fixed bench size and fixed-length generation (min = max new tokens = 32, so every system does the
same work):

- A: the seed-style loop in process (``Blip2Processor`` + ``generate``, one image at a time);
- B: one batched ``generate`` over the 16 images in process;
- C: the exported repository served by ``tritonserver`` on free ports, loaded by perf_analyzer at
  concurrency 1, 16 and 64 with the real encoded images: unary on ``blip2``, streaming on
  ``blip2_stream`` when the repository has it (time to first token from the first text piece).

Prints one table (images/s, output tokens/s, p50/p99 latency, TTFT, ratios against A and B), the
issue's targets as met / not met (never asserted), date, machine, load average and commit, and
writes the same Markdown to ``.work/bench/bench.md``.

    make bench                                       # or: .venv/bin/python benchmarks/bench_serving.py
    .venv/bin/python benchmarks/bench_serving.py --quick   # tiny model, few tokens: a smoke test

Figures from a machine shared with other work are noisy: compare runs whose load averages are low.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import bench_model
from bench_inprocess import measure_in_process
from bench_report import ROOT, Context, report
from bench_served import (
    UNARY_ROW,
    ServedPlan,
    export,
    export_options,
    measure_served,
    number_list,
    parse_export_option,
)
from perf_tools import BenchmarkError

from blip2_triton.fixtures import sample_images

OUTPUT = ROOT / ".work" / "bench" / "bench.md"
QUICK_OUTPUT = ROOT / ".work" / "bench" / "bench-quick.md"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_images(count: int) -> list[Path]:
    """``count`` images: the shipped samples, cycled."""
    samples = sample_images()
    return [samples[i % len(samples)] for i in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny model, 4 tokens, one pass per level"
    )
    parser.add_argument("--tokens", type=int, help="new tokens per image (default 32; --quick 4)")
    parser.add_argument("--images", type=int, default=16, help="images per pass (default 16)")
    parser.add_argument(
        "--concurrency",
        type=number_list("levels", int, "1,4,16", ">= 1", lambda v: v >= 1),
        help="served levels (default 1,16,64: the targets' levels; --quick 1,4,16)",
    )
    parser.add_argument(
        "--waves",
        type=int,
        help="requests per served level: waves x concurrency, at least one pass (default 6; --quick 1)",
    )
    parser.add_argument(
        "--export-option",
        type=parse_export_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an ExportOptions field for the served repository (repeatable); max_batch_size and "
        "max_active_sequences default to the highest level, vision_cache_mb and prefix_cache_mb to 0 (the images repeat)",
    )
    parser.add_argument("--output", type=Path, help=f"Markdown report (default {OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint, export and logs")
    return parser


def run(args: argparse.Namespace) -> str:
    bench_model.quiet_libraries()
    spec = bench_model.QUICK if args.quick else bench_model.BENCH
    tokens = args.tokens or (4 if args.quick else 32)
    waves = args.waves or (1 if args.quick else 6)
    args.concurrency = args.concurrency or ([1, 4, 16] if args.quick else [1, 16, 64])
    images = bench_images(args.images)
    generation = (
        f"{len(images)} images (the shipped samples, cycled), greedy, exactly {tokens} new tokens "
        f"each (min = max new tokens), no prompt."
    )
    context = Context.now(spec.describe(), generation)
    (ROOT / ".work" / "bench").mkdir(parents=True, exist_ok=True)
    work_root = tempfile.mkdtemp(prefix=f"run-{spec.name}-", dir=ROOT / ".work" / "bench")
    work = Path(work_root)
    try:
        t0 = time.monotonic()
        _say(f"== building the {spec.name} checkpoint (random weights): {spec.describe()}")
        checkpoint = bench_model.build_checkpoint(work / "checkpoint", spec)
        _say(f"   built in {time.monotonic() - t0:.0f}s; A and B in process")
        in_process = measure_in_process(checkpoint, images, tokens)
        _say(
            f"   A {in_process.loop.images_per_s:.2f} images/s, B {in_process.batched.images_per_s:.2f} images/s"
        )
        t0 = time.monotonic()
        options = export_options(max(args.concurrency), dict(args.export_option))
        repository = export(checkpoint, work / "model_repository", options, work / "export.log")
        _say(f"== exported in {time.monotonic() - t0:.0f}s; serving")
        plan = ServedPlan(images, tokens, args.concurrency, waves)
        served, notes = measure_served(repository, plan, work)
    finally:
        if args.keep:
            _say(f"   kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    context.load_after = os.getloadavg()
    requests = ", ".join(f"{plan.requests(c)} at {c}" for c in plan.levels)
    context.notes = [
        f"A and B: transformers `generate` in one process ({_threads()} torch threads). C: tritonserver "
        f"2.51 (pip wheel) on the same cores, export options {_options_text(options)}; perf_analyzer "
        f"over gRPC with the encoded images (`--input-data`), requests per level: {requests}, after "
        "an untimed warm-up.",
        "Latency: from sending a request to its last response (B: the batch's time, for each image). "
        "TTFT: to the first new token (A, B: a `generate` streamer) or the first streamed text piece.",
        *notes,
    ]
    return report([in_process.loop, in_process.batched, *served], context, UNARY_ROW)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _options_text(options) -> str:
    import dataclasses

    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(options).items())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images < 1 or (args.tokens is not None and args.tokens < 1) or (args.waves or 1) < 1:
        parser.error("--images, --tokens and --waves must be at least 1")
    output = args.output or (QUICK_OUTPUT if args.quick else OUTPUT)

    def terminate(signum, frame):  # SIGTERM: unwind, so that the server is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    from blip2_triton.export.errors import ExportError
    from blip2_triton.server import ServerProcessError

    try:
        text = run(args)
    except (BenchmarkError, ServerProcessError, ExportError) as exc:
        print(f"bench_serving: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_serving: interrupted", file=sys.stderr)
        return 130
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    _say(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
