"""System C: the checkpoint exported, served by a real ``tritonserver`` here, loaded by perf_analyzer.

Unary requests go to the public ``blip2`` model; when the repository has the decoupled
``blip2_stream`` model, the same levels run again over a gRPC stream (``--streaming``), and the
first response carrying text gives the time to first token. Each level sends a fixed number of
requests (the images cycled through, each with ``min_tokens`` = ``max_tokens``) and times each one
from perf_analyzer's profile export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench_report import Row
from perf_tools import (
    BenchmarkError,
    CountedRun,
    check_perf_analyzer,
    perf_analyzer_binary,
    run_counted,
    write_input_data,
)

from blip2_triton.runtime.contract import PUBLIC_MODEL, STREAM_MODEL

if TYPE_CHECKING:
    from blip2_triton.export.options import ExportOptions
    from blip2_triton.server import TritonServer

UNARY_ROW = f"C served {PUBLIC_MODEL}"
STREAM_ROW = f"C served {STREAM_MODEL} (stream)"
TOKENS_METRIC = "blip2_generated_tokens_total"


@dataclass(frozen=True)
class ServedPlan:
    """What to send: the images, the tokens per image, the levels and requests per level."""

    images: list[Path]
    tokens: int
    levels: list[int]
    waves: int  # requests per level: ``waves`` x the concurrency, at least one pass over the images
    level_timeout_s: float = 900.0

    def requests(self, concurrency: int) -> int:
        return max(len(self.images), self.waves * concurrency)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Export


def parse_export_option(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a ``--export-option`` flag -> (ExportOptions field, its text)."""
    import argparse

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"bad export option {text!r}: use name=value")
    return name.replace("-", "_"), value


def number_list(
    name: str, cast: Callable[[str], float], example: str, rule: str, valid: Callable[[float], bool]
):
    """An argparse ``type`` for a comma-separated list (``--concurrency 1,16``, ``--rates 0.5,1``):
    sorted, without repeats; ``valid`` must hold for every value (``rule`` says it in words)."""
    import argparse

    def parse(text: str) -> list:
        try:
            values = sorted({cast(p) for p in text.split(",") if p.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {name} {text!r}: use a list like {example}") from None
        if not values or not valid(values[0]):
            raise argparse.ArgumentTypeError(f"bad {name} {text!r}: {name} must be {rule}")
        return values

    return parse


def export_options(concurrency: int, overrides: dict[str, str]) -> ExportOptions:
    """``ExportOptions`` for a fair comparison at ``concurrency``, then ``overrides`` (field -> text).

    Batches and generation slots hold ``concurrency`` requests, as B's batch holds every image; the
    vision cache and the prefix cache are off, since the images repeat and A and B encode and
    prefill every one of them (pass ``vision_cache_mb=64`` or ``prefix_cache_mb=128`` to see what
    the caches do).
    """
    from blip2_triton.export.repository import ExportOptions

    defaults = ExportOptions()
    values: dict[str, object] = {
        "max_batch_size": concurrency,
        "max_active_sequences": concurrency,
        "vision_cache_mb": 0,
        "prefix_cache_mb": 0,
    }
    known = {f.name for f in dataclasses.fields(ExportOptions)}
    for name, text in overrides.items():
        if name not in known:
            raise BenchmarkError(f"unknown export option {name!r}; known: {', '.join(sorted(known))}")
        kind = type(getattr(defaults, name))
        values[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    options = dataclasses.replace(defaults, **values)
    options.check()
    return options


def export(checkpoint: Path, output: Path, options: ExportOptions, log: Path) -> Path:
    """``export_repository`` with its progress and transformers' chatter sent to ``log``."""
    from blip2_triton.export.repository import export_repository

    try:
        with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            export_repository(str(checkpoint), output, options, quiet=True)
    except Exception:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    return output


# --------------------------------------------------------------------------------------------------
# Server


@contextlib.contextmanager
def serving(repository: Path, log: Path) -> Iterator[TritonServer]:
    """A ``TritonServer`` on free ports, stopped on exit; its log tail shown if it fails to start."""
    from blip2_triton.server import TritonServer

    server = TritonServer.on_free_ports(repository, log_file=log)
    try:
        server.start()
    except Exception as exc:
        tail = getattr(exc, "log_tail", "")
        if tail:
            print(tail, file=sys.stderr)
        raise
    try:
        yield server
    finally:
        server.stop()


def ready_models(grpc_url: str) -> set[str]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
    finally:
        client.close()
    return {m["name"] for m in index if m.get("state") == "READY"}


def metric_total(metrics_url: str, name: str) -> float | None:
    """The sum of a counter over all its labels on the server's metrics port, or None without it."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    values = re.findall(rf"^{name}(?:{{[^}}]*}})?\s+(\S+)$", text, flags=re.MULTILINE)
    return sum(float(v) for v in values) if values else None


def generated_tokens(metrics_url: str) -> int | None:
    """The server's own count of generated tokens (all models), or None where it has no such metric."""
    total = metric_total(metrics_url, TOKENS_METRIC)
    return None if total is None else int(total)


def rows_per_step(metrics_url: str) -> tuple[float, float] | None:
    """The engine's decode steps and the sequences they advanced, so far."""
    steps, rows = (
        metric_total(metrics_url, m) for m in ("blip2_decode_steps_total", "blip2_decoded_rows_total")
    )
    return None if steps is None or rows is None else (steps, rows)


# --------------------------------------------------------------------------------------------------
# Levels


def measure_served(repository: Path, plan: ServedPlan, work: Path) -> tuple[list[Row], list[str]]:
    """Rows for every level, unary then streaming; notes on what the server counted."""
    from blip2_triton.server import server_environment

    env = server_environment()
    binary = perf_analyzer_binary()
    check_perf_analyzer(binary, env)
    input_json = work / "perf_input.json"
    write_input_data(input_json, plan.images, None, plan.tokens, plan.tokens)
    notes: list[str] = []
    started = time.monotonic()
    with serving(repository, work / "tritonserver.log") as server:
        _say(f"   server ready on {server.grpc_url} in {time.monotonic() - started:.0f}s")
        models = ready_models(server.grpc_url)
        modes = [(UNARY_ROW, PUBLIC_MODEL, False), (STREAM_ROW, STREAM_MODEL, True)]
        rows: list[Row] = []
        tokens_before = generated_tokens(server.metrics_url)
        expected = 0
        batching: list[str] = []
        for name, model, streaming in modes:
            if model not in models:
                rows += [Row(name, c, missing=f"no {model} model in this repository") for c in plan.levels]
                continue
            base = ["-m", model, "-u", server.grpc_url, "-i", "grpc", "--input-data", str(input_json)]
            base += ["--streaming"] if streaming else []
            warm = max(plan.levels)  # first requests allocate and load kernels: keep them out
            run_counted(binary, env, base, warm, warm, work / "warm.json", plan.level_timeout_s)
            expected += warm * plan.tokens
            for concurrency in plan.levels:
                count = plan.requests(concurrency)
                t0 = time.monotonic()
                steps_before = rows_per_step(server.metrics_url)
                run = run_counted(
                    binary, env, base, concurrency, count, work / "profile.json", plan.level_timeout_s
                )
                rows.append(_row(name, concurrency, run, plan.tokens, streaming))
                time.sleep(1.0)  # the engine's counters are published from a poll loop
                steps_after = rows_per_step(server.metrics_url)
                if steps_before and steps_after and steps_after[0] > steps_before[0]:
                    average = (steps_after[1] - steps_before[1]) / (steps_after[0] - steps_before[0])
                    batching.append(f"{model} at {concurrency}: {average:.1f}")
                expected += len(run.requests) * plan.tokens
                _say(
                    f"   {model} concurrency {concurrency}: {rows[-1].images_per_s:.2f} images/s "
                    f"({len(run.requests)} requests, {time.monotonic() - t0:.0f}s)"
                )
        time.sleep(1.0)  # the token counter is published from a poll loop
        tokens_after = generated_tokens(server.metrics_url)
    if tokens_before is not None and tokens_after is not None:
        notes.append(
            f"The server counted {tokens_after - tokens_before} generated tokens over the served runs "
            f"(warm-up included); fixed-length generation means {expected}."
        )
    if batching:
        notes.append(f"Sequences per decode step, on average (the engine's counters): {', '.join(batching)}.")
    return rows, notes


def _row(name: str, concurrency: int, run: CountedRun, tokens: int, streaming: bool) -> Row:
    requests = run.requests
    return Row(
        name,
        concurrency,
        images=len(requests),
        seconds=run.span_s,
        tokens=len(requests) * tokens,
        latencies_s=[r.last_response_s for r in requests],
        ttfts_s=[r.first_response_s for r in requests] if streaming else [],
    )
