"""perf_analyzer for the benchmarks: find it, check it can run, feed it real images, read its timings.

Shared by ``perf_ensemble.py`` (stability windows per concurrency level) and ``bench_serving.py``
(a fixed number of requests per level, timings per request from ``--profile-export-file``).
The ``--input-data`` document is built by ``docker/perf_input.py`` (standard library only, so the
compose perf service runs it too): one builder for both.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

# What perf_analyzer needs at load time, and how to get it (see scripts/setup.sh).
LIBRARY_HINTS = {
    "libb64.so.0d": "install the Debian package libb64-0d (sudo apt-get install libb64-0d, or `make setup`)",
    "libcudart.so.12": "install nvidia-cuda-runtime-cu12 into the venv "
    "(.venv/bin/pip install nvidia-cuda-runtime-cu12, or `make setup`)",
}


class BenchmarkError(Exception):
    """A failure reported as one line."""


def perf_analyzer_binary() -> Path:
    """The perf_analyzer that ``tritonclient[all]`` installs next to this interpreter."""
    candidate = Path(sys.executable).parent / "perf_analyzer"
    if candidate.is_file():
        return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise BenchmarkError(
        "perf_analyzer not found: install tritonclient[all]==2.51.0 into the venv (it ships the binary)"
    )


def missing_library_message(stderr: str) -> str | None:
    """One line naming the shared library perf_analyzer could not load and how to install it."""
    match = re.search(r"error while loading shared libraries: ([^:\s]+)", stderr)
    if match is None:
        return None
    library = match.group(1)
    hint = LIBRARY_HINTS.get(library, "install the package that provides it")
    return f"perf_analyzer cannot start: {library} is missing; {hint}"


def check_perf_analyzer(binary: Path, env: dict[str, str]) -> None:
    """Fail fast, before any export or server start, if perf_analyzer cannot run here."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchmarkError(f"perf_analyzer cannot start: {exc}") from exc
    if result.returncode != 0:
        message = missing_library_message(result.stderr)
        detail = " ".join((result.stderr or result.stdout).split())[:300]
        raise BenchmarkError(message or f"perf_analyzer cannot start (exit {result.returncode}): {detail}")


# --------------------------------------------------------------------------------------------------
# Input data


@cache
def _perf_input() -> ModuleType:
    """``docker/perf_input.py`` (docker/ is not a package)."""
    path = ROOT / "docker" / "perf_input.py"
    spec = importlib.util.spec_from_file_location("blip2_docker_perf_input", path)
    if spec is None or spec.loader is None:
        raise BenchmarkError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_input_data(
    path: Path,
    images: list[Path],
    prompt: str | None,
    max_tokens: int | None,
    min_tokens: int | None = None,
) -> None:
    """perf_analyzer ``--input-data`` JSON: one batch-1 request per image, cycled through."""
    document = _perf_input().build_input_data(images, prompt, max_tokens, min_tokens)
    path.write_text(json.dumps(document))


# --------------------------------------------------------------------------------------------------
# A fixed number of requests, timed per request


@dataclass(frozen=True)
class RequestTiming:
    """One request as perf_analyzer saw it (seconds from when it was sent)."""

    first_response_s: float  # the first response that carries output (a stream's first piece)
    last_response_s: float  # the last response (a stream's final flag)
    responses: int


@dataclass(frozen=True)
class CountedRun:
    """``requests`` timed one by one, over the window perf_analyzer measured."""

    requests: list[RequestTiming]
    span_s: float  # from the first request sent to the last response received


def run_counted(
    binary: Path,
    env: dict[str, str],
    base_args: list[str],
    concurrency: int,
    requests: int,
    profile: Path,
    timeout_s: float,
) -> CountedRun:
    """Send exactly ``requests`` requests, ``concurrency`` at a time, and read their timings."""
    profile.unlink(missing_ok=True)
    command = [
        str(binary),
        *base_args,
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--request-count",
        str(requests),
        "--profile-export-file",
        str(profile),
    ]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"perf_analyzer ran past {timeout_s:.0f}s at concurrency {concurrency}") from exc
    if result.returncode != 0 or not profile.is_file():
        output = result.stdout + result.stderr
        errors = [ln.strip() for ln in output.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        detail = errors[-1] if errors else f"perf_analyzer exited with code {result.returncode}"
        raise BenchmarkError(f"perf_analyzer at concurrency {concurrency}: {detail[:300]}")
    return read_profile(profile)


def read_profile(path: Path) -> CountedRun:
    """The timings of a ``--profile-export-file`` (one experiment).

    The file echoes the raw request bytes (images) into JSON strings, so it is not valid UTF-8:
    those bytes are replaced on reading; the timestamps are plain numbers. The span is taken from
    the requests themselves: with ``--request-count`` perf_analyzer's own window (and so its
    throughput) lasts at least a second, however soon the requests are done.
    """
    document = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
    experiment = document["experiments"][-1]
    timings = []
    first_sent, last_received = None, None
    for request in experiment["requests"]:
        sent = request["timestamp"]
        stamps = request.get("response_timestamps") or []
        if not stamps:
            raise BenchmarkError(f"{path}: a request got no response")
        outputs = request.get("response_outputs") or []
        with_output = [t for t, out in zip(stamps, outputs, strict=False) if any(out.values())]
        first = with_output[0] if with_output else stamps[0]
        timings.append(RequestTiming((first - sent) / 1e9, (stamps[-1] - sent) / 1e9, len(stamps)))
        first_sent = sent if first_sent is None else min(first_sent, sent)
        last_received = stamps[-1] if last_received is None else max(last_received, stamps[-1])
    if not timings:
        raise BenchmarkError(f"{path}: no request was measured")
    return CountedRun(timings, (last_received - first_sent) / 1e9)
