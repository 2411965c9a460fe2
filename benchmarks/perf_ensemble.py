"""Load-test the served BLIP-2 pipeline with perf_analyzer and print the figures.

A benchmark, not a test: nothing here asserts on timings. It starts a real ``tritonserver`` on
free ports (on ``--repository``, or on a tiny OPT checkpoint built and exported into a temporary
folder), feeds perf_analyzer a real sample image through ``--input-data`` (perf_analyzer cannot
invent a valid encoded image), measures each concurrency level, and prints

- per level: throughput, p50/p95/p99 latency, the throughput relative to concurrency 1 measured
  in the same run (what dynamic batching gains), and the average batch size each step ran at;
- for the whole run, per model: Triton's server-side statistics (requests, executions, average
  batch = inference_count / execution_count, queue and compute time, batch-size histogram).

    python benchmarks/perf_ensemble.py                          # tiny model, levels 1,2,4,8
    python benchmarks/perf_ensemble.py --repository .work/model_repository --concurrency 1:8:1
    python benchmarks/perf_ensemble.py --model blip2_vision      # vision step only, random pixels

With a tiny checkpoint the weights are random: the figures measure the serving machinery
(batching, queues, Python backend, ONNX), not a real model's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from perf_tools import BenchmarkError, check_perf_analyzer, perf_analyzer_binary, write_input_data

from blip2_triton.fixtures import samples_dir

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = samples_dir() / "sky_circle.jpg"
ENSEMBLE = "blip2"
STEPS = ("blip2_preprocess", "blip2_vision", "blip2_stream")
SHORT = {"blip2_preprocess": "pre", "blip2_vision": "vis", "blip2_stream": "llm"}
UNSTABLE_MARK = "Failed to obtain stable measurement"


def _say(message: str = "") -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------------
# perf_analyzer


def parse_concurrency(spec: str) -> list[int]:
    """``start:end[:step]`` (perf_analyzer's --concurrency-range, end inclusive) or ``1,2,4,8``."""
    try:
        if ":" in spec:
            parts = [int(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
            if step < 1 or end < start:
                raise ValueError
            levels = list(range(start, end + 1, step))
        else:
            levels = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad concurrency {spec!r}: use start:end[:step] or 1,2,4,8"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"bad concurrency {spec!r}: levels must be >= 1")
    return sorted(set(levels))


@dataclass
class Level:
    concurrency: int
    throughput: float = 0.0  # infer/s
    p50_us: float = 0.0
    p95_us: float = 0.0
    p99_us: float = 0.0
    stable: bool = True
    error: str = ""
    batch: dict[str, float | None] = field(default_factory=dict)  # model -> average batch size
    row: dict[str, str] = field(default_factory=dict)  # perf_analyzer's CSV row


def read_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise BenchmarkError(f"perf_analyzer wrote no measurement to {path}")
    return rows[-1]


def run_level(
    binary: Path,
    env: dict[str, str],
    base_args: list[str],
    concurrency: int,
    csv_path: Path,
    interval_ms: int,
    stability: float,
    max_trials: int,
) -> Level:
    """Measure one concurrency level; if it will not stabilise, take 3 windows as they come."""
    level = Level(concurrency)
    timeout = 60 + (max_trials + 2) * interval_ms / 1000 * 3
    attempts = (
        ["--stability-percentage", f"{stability:g}", "--max-trials", str(max_trials)],
        ["--stability-percentage", "1000", "--max-trials", "3"],  # accept whatever 3 windows give
    )
    for attempt, extra in enumerate(attempts):
        csv_path.unlink(missing_ok=True)
        command = [
            str(binary),
            *base_args,
            *extra,
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "-f",
            str(csv_path),
        ]
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            level.error = f"perf_analyzer ran past {timeout:.0f}s"
            return level
        if result.returncode == 0 and csv_path.is_file():
            row = read_csv(csv_path)
            level.row = row
            level.throughput = float(row["Inferences/Second"])
            level.p50_us = float(row["p50 latency"])
            level.p95_us = float(row["p95 latency"])
            level.p99_us = float(row["p99 latency"])
            level.stable = attempt == 0
            return level
        output = result.stdout + result.stderr
        if UNSTABLE_MARK in output and attempt == 0:
            continue
        errors = [ln.strip() for ln in output.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        level.error = (errors[-1] if errors else f"perf_analyzer exited with code {result.returncode}")[:300]
        return level
    return level


# --------------------------------------------------------------------------------------------------
# Server-side statistics


@dataclass
class ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    queue_ns: int = 0
    queue_count: int = 0
    compute_ns: int = 0  # compute input + infer + output, summed over requests
    compute_count: int = 0
    batches: dict[int, int] = field(default_factory=dict)  # batch size -> executions

    def __sub__(self, other: ModelStats) -> ModelStats:
        return ModelStats(
            self.inference_count - other.inference_count,
            self.execution_count - other.execution_count,
            self.queue_ns - other.queue_ns,
            self.queue_count - other.queue_count,
            self.compute_ns - other.compute_ns,
            self.compute_count - other.compute_count,
            {
                size: count - other.batches.get(size, 0)
                for size, count in self.batches.items()
                if count - other.batches.get(size, 0) > 0
            },
        )

    @property
    def average_batch(self) -> float | None:
        return self.inference_count / self.execution_count if self.execution_count else None


def _stat(section: dict, key: str) -> tuple[int, int]:
    entry = section.get(key, {})
    return int(entry.get("ns", 0)), int(entry.get("count", 0))


def snapshot(client, models: list[str]) -> dict[str, ModelStats]:
    """Cumulative statistics of ``models`` (proto3 JSON leaves zero fields out)."""
    stats = {}
    for model in models:
        doc = client.get_inference_statistics(model_name=model, as_json=True)
        entry = next(iter(doc.get("model_stats", [])), {})
        infer = entry.get("inference_stats", {})
        queue_ns, queue_count = _stat(infer, "queue")
        compute_ns, compute_count = 0, 0
        for key in ("compute_input", "compute_infer", "compute_output"):
            ns, count = _stat(infer, key)
            compute_ns += ns
            compute_count = max(compute_count, count)
        batches = {}
        for batch in entry.get("batch_stats", []):
            _, count = _stat(batch, "compute_infer")
            batches[int(batch.get("batch_size", 0))] = count
        stats[model] = ModelStats(
            int(entry.get("inference_count", 0)),
            int(entry.get("execution_count", 0)),
            queue_ns,
            queue_count,
            compute_ns,
            compute_count,
            batches,
        )
    return stats


def delta(after: dict[str, ModelStats], before: dict[str, ModelStats]) -> dict[str, ModelStats]:
    return {model: after[model] - before[model] for model in after}


# --------------------------------------------------------------------------------------------------
# Warm-up (first requests load kernels, allocate; keep them out of the concurrency-1 baseline)


def warm_up(client, model: str, images: list[Path], max_tokens: int | None, pixel_shape, count: int) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    def inputs(i: int):
        if model == ENSEMBLE:
            data = np.array([[images[i % len(images)].read_bytes()]], dtype=np.object_)
            tensors = [grpcclient.InferInput("image", [1, 1], "BYTES")]
            tensors[0].set_data_from_numpy(data)
            if max_tokens is not None:
                tokens = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
                tokens.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
                tensors.append(tokens)
            return tensors
        pixels = np.random.default_rng(i).standard_normal((1, *pixel_shape)).astype(np.float32)
        tensor = grpcclient.InferInput("pixel_values", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        return [tensor]

    client.infer(model, inputs(0))
    done = threading.Semaphore(0)
    failures: list[str] = []

    def callback(result, error):
        if error is not None:
            failures.append(str(error))
        done.release()

    for i in range(count):  # concurrent: exercises the batched paths too
        client.async_infer(model, inputs(i), callback)
    for _ in range(count):
        if not done.acquire(timeout=120):
            raise BenchmarkError("warm-up requests got no answer within 120 s")
    if failures:
        raise BenchmarkError(f"warm-up request failed: {' '.join(failures[0].split())[:300]}")


# --------------------------------------------------------------------------------------------------
# Report


def _ms(us: float) -> str:
    return f"{us / 1000:.1f}"


def print_levels(levels: list[Level], batch_models: list[str]) -> None:
    baseline = next((lv for lv in levels if lv.concurrency == 1 and not lv.error), None)
    batch_header = "avg batch " + "/".join(SHORT.get(m, m) for m in batch_models)
    header = f"{'conc':>4}  {'infer/s':>8}  {'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  {'x c=1':>6}  {batch_header}"
    _say(header)
    _say("-" * len(header))
    for lv in levels:
        if lv.error:
            _say(f"{lv.concurrency:>4}  error: {lv.error}")
            continue
        gain = f"{lv.throughput / baseline.throughput:.2f}" if baseline and baseline.throughput else "n/a"
        batch = "/".join(f"{lv.batch[m]:.2f}" if lv.batch.get(m) else "-" for m in batch_models)
        note = "" if lv.stable else "  (unstable: 3 windows as measured)"
        _say(
            f"{lv.concurrency:>4}  {lv.throughput:>8.2f}  {_ms(lv.p50_us):>7}  {_ms(lv.p95_us):>7}  "
            f"{_ms(lv.p99_us):>7}  {gain:>6}  {' ' * (len(batch_header) - len(batch))}{batch}{note}"
        )
    if baseline is None:
        _say("x c=1: no concurrency-1 level in this run, so no baseline (add 1 to --concurrency)")


def print_server_stats(total: dict[str, ModelStats]) -> None:
    header = (
        f"{'model':<17} {'requests':>8} {'execs':>6} {'avg batch':>9} {'queue ms':>8} {'compute ms':>10}  "
        "batch size: executions"
    )
    _say(header)
    _say("-" * len(header))
    for model, st in total.items():
        avg = f"{st.average_batch:.2f}" if st.average_batch else "-"
        queue = f"{st.queue_ns / st.queue_count / 1e6:.2f}" if st.queue_count else "-"
        compute = f"{st.compute_ns / st.compute_count / 1e6:.2f}" if st.compute_count else "-"
        hist = " ".join(f"{size}:{count}" for size, count in sorted(st.batches.items())) or "-"
        _say(
            f"{model:<17} {st.inference_count:>8} {st.execution_count:>6} {avg:>9} {queue:>8} {compute:>10}  {hist}"
        )
    _say("(queue and compute: per request; a batched execution's compute counts for each of its requests)")


# --------------------------------------------------------------------------------------------------
# Main


def _prepare_repository(args, work: Path) -> Path:
    if args.repository is not None:
        repository = args.repository.expanduser().resolve()
        if not (repository / ENSEMBLE).is_dir():
            raise BenchmarkError(f"{repository} is not a BLIP-2 model repository (no {ENSEMBLE}/ folder)")
        return repository
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    started = time.monotonic()
    _say("== building a tiny BLIP-2 (OPT) checkpoint (random weights) and exporting it")
    repository = work / "model_repository"
    log = work / "export.log"
    try:  # transformers' progress bars and warnings go to a log, shown only on failure
        with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            checkpoint = build_tiny_checkpoint(work / "tiny_checkpoint", "opt")
            options = ExportOptions(max_batch_size=args.max_batch_size)
            export_repository(str(checkpoint), repository, options, quiet=True)
    except Exception:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    _say(f"   exported to {repository} in {time.monotonic() - started:.0f}s")
    return repository


def _describe(client, models: list[str]) -> None:
    for model in models:
        config = client.get_model_config(model, as_json=True)["config"]
        delay = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", "0")
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        _say(
            f"   {model:<17} max_batch_size {config.get('max_batch_size', 0)}, "
            f"queue delay {int(delay)} us, {instances} instance(s)"
        )


def run(args) -> int:
    import tritonclient.grpc as grpcclient

    from blip2_triton.server import TritonServer, server_environment

    env = server_environment()
    binary = perf_analyzer_binary()
    check_perf_analyzer(binary, env)  # before spending minutes on an export

    ensemble = args.model == ENSEMBLE
    stats_models = list(STEPS) if ensemble else [args.model]
    with tempfile.TemporaryDirectory(prefix="blip2-perf-") as tmp:
        work = Path(tmp)
        repository = _prepare_repository(args, work)
        server = TritonServer.on_free_ports(repository, log_file=work / "tritonserver.log")
        _say(f"== starting tritonserver on {server.grpc_url} (gRPC)")
        started = time.monotonic()
        try:
            server.start()
        except Exception as exc:
            tail = getattr(exc, "log_tail", "")
            if tail:
                print(tail, file=sys.stderr)
            raise
        try:
            _say(f"   ready in {time.monotonic() - started:.0f}s")
            client = grpcclient.InferenceServerClient(server.grpc_url)
            try:
                _describe(client, [args.model, *stats_models] if ensemble else stats_models)
                pixel_shape = None
                if not ensemble:
                    meta = client.get_model_metadata(args.model, as_json=True)
                    pixel_shape = [int(d) for d in meta["inputs"][0]["shape"][1:]]
                warm_up(client, args.model, args.image, args.max_tokens, pixel_shape, count=8)

                perf_args = [
                    "-m",
                    args.model,
                    "-u",
                    server.grpc_url,
                    "-i",
                    "grpc",
                    "--measurement-interval",
                    str(args.measurement_interval_ms),
                ]
                if ensemble:
                    input_json = work / "perf_input.json"
                    write_input_data(input_json, args.image, args.prompt, args.max_tokens)
                    perf_args += ["--input-data", str(input_json)]
                what = (
                    f"image {', '.join(p.name for p in args.image)}"
                    + (f", prompt {args.prompt!r}" if args.prompt else "")
                    + (
                        f", max_tokens {args.max_tokens}"
                        if args.max_tokens is not None
                        else ", default max_tokens"
                    )
                    if ensemble
                    else "random pixel_values"
                )
                _say(
                    f"== perf_analyzer -m {args.model} over gRPC: {what}; "
                    f"{args.measurement_interval_ms} ms windows, levels {', '.join(map(str, args.concurrency))}"
                )
                levels: list[Level] = []
                load_before = os.getloadavg()[0]
                totals_before = snapshot(client, stats_models)
                for concurrency in args.concurrency:
                    before = snapshot(client, stats_models)
                    t0 = time.monotonic()
                    level = run_level(
                        binary,
                        env,
                        perf_args,
                        concurrency,
                        work / f"perf_c{concurrency}.csv",
                        args.measurement_interval_ms,
                        args.stability_percentage,
                        args.max_trials,
                    )
                    used = delta(snapshot(client, stats_models), before)
                    level.batch = {m: st.average_batch for m, st in used.items()}
                    levels.append(level)
                    state = level.error or f"{level.throughput:.2f} infer/s"
                    _say(f"   concurrency {concurrency}: {state} ({time.monotonic() - t0:.0f}s)")
                totals = delta(snapshot(client, stats_models), totals_before)
                load_after = os.getloadavg()[0]
            finally:
                client.close()
        finally:
            server.stop()
            _say("== server stopped")

    _say()
    _say(f"Client side (perf_analyzer, {args.model}); x c=1 = throughput / concurrency-1 throughput:")
    print_levels(levels, stats_models)
    _say()
    _say("Server side (Triton statistics over all levels, warm-up excluded):")
    print_server_stats(totals)
    _say()
    _say(
        f"Machine: {os.cpu_count()} CPU cores; 1-min load average {load_before:.2f} before the levels, "
        f"{load_after:.2f} after. Server, perf_analyzer and anything else running share these cores: "
        "compare figures only between quiet runs."
    )
    if args.csv is not None:
        rows = [lv.row for lv in levels if lv.row]
        if rows:
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            with open(args.csv, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            _say(f"perf_analyzer CSV rows written to {args.csv}")
    return 0 if any(not lv.error for lv in levels) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, help="existing export to serve (default: export a tiny model)"
    )
    parser.add_argument(
        "--model",
        default=ENSEMBLE,
        choices=(ENSEMBLE, "blip2_vision"),
        help="blip2 (the ensemble, real image) or blip2_vision (vision step alone, random pixel_values)",
    )
    parser.add_argument(
        "--concurrency",
        type=parse_concurrency,
        default=parse_concurrency("1,2,4,8"),
        help="levels: start:end[:step] (end inclusive) or a list like 1,2,4,8 (default)",
    )
    parser.add_argument(
        "--measurement-interval-ms", type=int, default=3000, help="window length (default 3000)"
    )
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=25,
        help="perf_analyzer's max/min spread over 3 windows (default 25; a level that will not "
        "settle within --max-trials is measured once more over 3 windows and marked unstable)",
    )
    parser.add_argument("--max-trials", type=int, default=6, help="windows per level at most (default 6)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: the model's)")
    parser.add_argument("--prompt", help="text_input of every request (default: plain caption)")
    parser.add_argument(
        "--image",
        type=Path,
        action="append",
        help=f"image file sent (repeat to cycle through several; default {DEFAULT_IMAGE.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="max_batch_size of the tiny export (default 8)"
    )
    parser.add_argument("--csv", type=Path, help="also write perf_analyzer's CSV rows (all levels) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.image = args.image or [DEFAULT_IMAGE]
    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        parser.error(f"not a file: {', '.join(missing)}")
    if args.measurement_interval_ms < 100 or args.max_trials < 3:
        parser.error("--measurement-interval-ms must be >= 100 and --max-trials >= 3")

    def terminate(signum, frame):  # SIGTERM: unwind so that the server is stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    from blip2_triton.export.errors import ExportError
    from blip2_triton.server import ServerProcessError

    try:
        return run(args)
    except (BenchmarkError, ServerProcessError, ExportError) as exc:
        print(f"perf_ensemble: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("perf_ensemble: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
