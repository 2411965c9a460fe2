"""The OpenAI frontend under load: its cost against direct gRPC, and a standard load tester.

A benchmark, not a test: nothing here asserts on timings. One run:

1. exports the shipped scene captioner (``scenes-opt``) unless ``--repository`` is given, starts a
   real tritonserver and ``blip2-triton openai`` beside it on free ports;
2. **side by side** (``--levels 1,16``): the same captions (fixed length: min = max new tokens, the
   shipped sample images) sent directly over gRPC with the SDK's asyncio client, and through the
   frontend with HTTP + JSON + base64 (``httpx``, unary chat completions), in alternating rounds so
   that a noisy machine hits both alike; throughput and p50/p95 latency per path and level, and the
   frontend's cost against the targets (throughput within 10%, p50 within 15 ms);
3. **aiperf** (``pip install aiperf``, into its own venv ``.work/aiperf-venv``: its dependencies
   clash with the serving ones) drives ``/v1/chat/completions`` with streaming and synthetic images:
   request throughput, time to first token and request latency. ``--skip-aiperf`` leaves it out.

    python benchmarks/perf_openai.py                   # make perf-openai
    python benchmarks/perf_openai.py --repository .work/model_repository --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_report import commit_description, machine_description, utc_now

from blip2_triton.client import AsyncBlip2Client, GenerationSettings
from blip2_triton.fixtures import sample_images
from blip2_triton.openai_api.child import FrontendChild
from blip2_triton.openai_api.served_model import load_served_model
from blip2_triton.server import TritonServer, free_ports

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".work" / "perf-openai"
AIPERF_VENV = ROOT / ".work" / "aiperf-venv"
TARGET_THROUGHPUT_LOSS = 0.10
TARGET_P50_MS = 15.0


def _say(message: str = "") -> None:
    print(message, flush=True)


@dataclass
class Sample:
    """One path at one concurrency: per-request latencies (s) and the wall time of the batch."""

    latencies: list[float]
    wall_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _run(concurrency: int, requests: int, send) -> Sample:
    """``requests`` calls of ``send(index)``, ``concurrency`` at a time."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for index in counter:
            started = time.perf_counter()
            await send(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Sample(latencies, time.perf_counter() - started)


async def side_by_side(
    grpc_url: str, api_url: str, model_id: str, levels: list[int], rounds: int, max_tokens: int
) -> dict[int, dict[str, Sample]]:
    """Direct gRPC and the frontend, alternating, ``rounds`` times per level; the best round of each."""
    images = [path.read_bytes() for path in sample_images()]
    urls = [f"data:image/png;base64,{base64.b64encode(image).decode()}" for image in images]
    settings = GenerationSettings(max_tokens=max_tokens, min_tokens=max_tokens)
    results: dict[int, dict[str, Sample]] = {}
    async with (
        AsyncBlip2Client(grpc_url, inference_timeout_s=600) as client,
        httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http,
    ):

        async def direct(index: int) -> None:
            await client.caption(images[index % len(images)], settings=settings)

        async def frontend(index: int) -> None:
            body = {
                "model": model_id,
                "max_tokens": max_tokens,
                "min_tokens": max_tokens,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": urls[index % len(urls)]}}],
                    }
                ],
            }
            answer = await http.post(f"{api_url}/v1/chat/completions", json=body)
            answer.raise_for_status()

        await _run(4, 16, direct)  # warm both paths
        await _run(4, 16, frontend)
        for level in levels:
            requests = max(16, level * 6)
            best: dict[str, Sample] = {}
            paths = [("direct gRPC", direct), ("OpenAI frontend", frontend)]
            for round_index in range(rounds):
                for name, send in paths if round_index % 2 == 0 else paths[::-1]:
                    sample = await _run(level, requests, send)
                    if name not in best or sample.throughput > best[name].throughput:
                        best[name] = sample
            results[level] = best
    return results


def cost_report(results: dict[int, dict[str, Sample]]) -> list[str]:
    lines = [
        "| path | conc. | req/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for level, paths in results.items():
        for name, sample in paths.items():
            lines.append(
                f"| {name} | {level} | {sample.throughput:.2f} | {sample.percentile(0.5) * 1000:.1f} | "
                f"{sample.percentile(0.95) * 1000:.1f} |"
            )
        direct, front = paths["direct gRPC"], paths["OpenAI frontend"]
        loss = 1 - front.throughput / direct.throughput
        extra_ms = (front.percentile(0.5) - direct.percentile(0.5)) * 1000
        met_t = "met" if loss <= TARGET_THROUGHPUT_LOSS else "NOT met"
        met_p = "met" if extra_ms <= TARGET_P50_MS else "NOT met"
        verdicts.append(
            f"- concurrency {level}: throughput {-loss * 100:+.1f}% (target >= -10%: {met_t}); "
            f"p50 {extra_ms:+.1f} ms (target <= +15 ms: {met_p})"
        )
    return [*lines, "", *verdicts]


# --------------------------------------------------------------------------------------------------
# aiperf


def aiperf_binary() -> Path | None:
    binary = AIPERF_VENV / "bin" / "aiperf"
    return binary if binary.exists() else None


def run_aiperf(
    api_url: str, model_id: str, tokenizer: Path, concurrency: int, requests: int, max_tokens: int
) -> list[str]:
    binary = aiperf_binary()
    if binary is None:
        return [f"aiperf: not installed ({AIPERF_VENV}/bin/aiperf; make perf-openai installs it)"]
    artifacts = Path(tempfile.mkdtemp(prefix="aiperf-", dir=WORK))
    command = [
        str(binary), "profile",
        "--model", model_id,
        "--url", api_url,
        "--endpoint-type", "chat",
        "--streaming",
        "--tokenizer", str(tokenizer),  # a local path: loaded without the hub
        "--use-server-token-count",  # token counts: the frontend's usage (stream_options.include_usage)
        "--concurrency", str(concurrency),
        "--request-count", str(requests),
        "--warmup-request-count", "4",
        "--synthetic-input-tokens-mean", "8",
        "--output-tokens-mean", str(max_tokens),
        "--extra-inputs", f"min_tokens:{max_tokens}",
        "--image-width-mean", "72", "--image-height-mean", "72", "--image-format", "png",
        "--artifact-dir", str(artifacts),
        "--ui-type", "none",
    ]  # fmt: skip
    _say("$ " + " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        return [f"aiperf failed (exit {done.returncode}):", *tail]
    found = sorted(artifacts.rglob("profile_export_aiperf.json"))
    if not found:
        return ["aiperf wrote no profile_export_aiperf.json:", *done.stdout.strip().splitlines()[-30:]]
    return aiperf_summary(json.loads(found[0].read_text()), concurrency)


def aiperf_summary(export: dict, concurrency: int) -> list[str]:
    """The figures aiperf's JSON export holds: throughput, TTFT, request latency (ms)."""
    records = export.get("records", export)

    def metric(name: str) -> dict:
        value = records.get(name) if isinstance(records, dict) else None
        return value if isinstance(value, dict) else {}

    lines = [f"aiperf, concurrency {concurrency}, streaming chat completions with synthetic images:", ""]
    lines += ["| metric | avg | p50 | p99 | unit |", "|---|---|---|---|---|"]
    for name in (
        "request_throughput",
        "output_token_throughput",
        "time_to_first_token",
        "inter_token_latency",
        "request_latency",
    ):
        values = metric(name)
        if values:
            lines.append(
                f"| {name} | {values.get('avg', float('nan')):.2f} | {values.get('p50', float('nan')):.2f} | "
                f"{values.get('p99', float('nan')):.2f} | {values.get('unit', '')} |"
            )
    return lines


# --------------------------------------------------------------------------------------------------


def export_scenes(work: Path) -> Path:
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.scenes.checkpoints import captioner_checkpoint

    repository = work / "scenes-opt-repository"
    if not (repository / "manifest.json").exists():
        shutil.rmtree(repository, ignore_errors=True)
        export_repository(
            str(captioner_checkpoint()), repository, ExportOptions(max_batch_size=16), quiet=True
        )
    return repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repository", type=Path, help="an exported generation repository (default: scenes-opt)"
    )
    parser.add_argument(
        "--levels", default="1,16", help="concurrency levels of the side by side (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds per level (default: %(default)s)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=16, help="new tokens per request, fixed (default: %(default)s)"
    )
    parser.add_argument("--aiperf-concurrency", type=int, default=8)
    parser.add_argument("--aiperf-requests", type=int, default=64)
    parser.add_argument("--skip-aiperf", action="store_true")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    repository = args.repository or export_scenes(WORK)
    model = load_served_model(repository)
    levels = [int(level) for level in args.levels.split(",")]
    grpc_port, http_port, metrics_port, api_port = free_ports(4)
    server = TritonServer(
        repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_file=WORK / "server.log",
    )
    load_before = os.getloadavg()
    started = utc_now()
    server.start()
    frontend = FrontendChild(server.grpc_url, repository, "127.0.0.1", api_port, [])
    try:
        frontend.start()
        _say(f"server {server.grpc_url}, frontend {frontend.url}, model {model.id}")
        results = asyncio.run(
            side_by_side(server.grpc_url, frontend.url, model.id, levels, args.rounds, args.max_tokens)
        )
        report = cost_report(results)
        aiperf = [] if args.skip_aiperf else run_aiperf(
            frontend.url, model.id, (repository / "blip2_stream" / "1" / "tokenizer").resolve(),
            args.aiperf_concurrency, args.aiperf_requests, args.max_tokens,
        )  # fmt: skip
    finally:
        frontend.stop()
        server.stop()
    load_after = os.getloadavg()
    header = [
        f"**{started}**, {machine_description()}, commit {commit_description()}; load average (1/5/15 min) "
        f"{' / '.join(f'{x:.2f}' for x in load_before)} before, {' / '.join(f'{x:.2f}' for x in load_after)} after.",
        "",
        f"Model {model.id} ({model.family}), exactly {args.max_tokens} new tokens per request, the shipped sample "
        f"images cycled; unary requests; best of {args.rounds} rounds per path and level, the paths "
        "alternating (which goes first too). The machine is shared: other work ran during the run.",
        "",
    ]
    text = "\n".join([*header, *report, "", *aiperf]) + "\n"
    (WORK / "perf_openai.md").write_text(text)
    _say()
    _say(text)
    _say(f"(also in {WORK / 'perf_openai.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
