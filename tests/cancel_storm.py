"""Clients that leave: storms of cancelled streams and unary requests, and what a server holds.

Each storm is bounded in count and time and sends to one local server. The drivers count what
they sent and what came back; ``ServerFootprint`` reads what tritonserver and its stubs hold
(resident memory, open descriptors) and what ``/dev/shm`` holds, so a test can say it stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient

from blip2_triton.client import AsyncBlip2Client, Blip2Client
from blip2_triton.runtime.contract import ENGINE_MODEL, PUBLIC_MODEL, STREAM_MODEL
from blip2_triton.server.process_table import rss_bytes, stub_processes

from .triton_requests import build_inputs

MAX_DELAY_S = 0.1  # clients leave 0-100 ms after sending


def _threaded(total: int, threads: int, seed: int, work) -> int:
    """``total`` requests over ``threads`` threads: ``work(rng, count)`` sends ``count`` of them with
    a random source of its own and returns what it counted; the counts summed."""
    counts = [0] * threads
    per_thread = -(-total // threads)

    def run(index: int) -> None:
        counts[index] = work(random.Random(seed * 1000 + index), per_thread)

    _run_threads(run, threads)
    return sum(counts)


def stream_cancels(
    url: str, image: bytes, total: int, settings: dict, *, threads: int = 8, seed: int = 0
) -> int:
    """``total`` streams to ``blip2_stream``, each cancelled (``stop_stream(cancel_requests=True)``)
    0-100 ms after it was sent, by ``threads`` threads. Returns how many were sent."""

    def work(rng: random.Random, count: int) -> int:
        client = grpcclient.InferenceServerClient(url)
        sent = 0
        try:
            for _ in range(count):
                client.start_stream(callback=lambda result, error: None)
                client.async_stream_infer(STREAM_MODEL, build_inputs(image, **settings))
                sent += 1
                time.sleep(rng.uniform(0, MAX_DELAY_S))
                client.stop_stream(cancel_requests=True)
        finally:
            client.close()
        return sent

    return _threaded(total, threads, seed, work)


def sdk_breakouts(url: str, image: bytes, total: int, settings: dict, *, threads: int = 4) -> int:
    """``total`` SDK streams (``Blip2Client.stream_caption``) left with ``break`` after their first
    piece, as the README shows. Returns how many pieces were read."""

    def work(rng: random.Random, count: int) -> int:
        pieces = 0
        with Blip2Client(url) as client:
            for _ in range(count):
                for _piece in client.stream_caption(image, **settings):
                    pieces += 1
                    break
        return pieces

    return _threaded(total, threads, 0, work)


def sdk_task_cancels(
    url: str, image: bytes, total: int, settings: dict, *, concurrency: int = 8, seed: int = 0
) -> int:
    """``total`` asyncio tasks reading ``AsyncBlip2Client.stream_caption``, each cancelled 0-100 ms
    after it started, ``concurrency`` at a time. Returns how many were cancelled while running."""

    async def consume(client: AsyncBlip2Client) -> None:
        async for _piece in client.stream_caption(image, **settings):
            pass

    async def main() -> int:
        rng = random.Random(seed)
        cancelled = 0
        async with AsyncBlip2Client(url) as client:
            for _ in range(-(-total // concurrency)):
                tasks = [asyncio.ensure_future(consume(client)) for _ in range(concurrency)]
                await asyncio.sleep(rng.uniform(0, MAX_DELAY_S))
                for task in tasks:
                    cancelled += task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return cancelled

    return asyncio.run(main())


def unary_cancels(
    url: str, image: bytes, total: int, settings: dict, *, threads: int = 4, seed: int = 0
) -> int:
    """``total`` unary requests to ``blip2``: half cancelled (``InferAsyncRequest.cancel``) 0-100 ms
    after sending, half with a client deadline of 20-100 ms. Returns how many were sent."""

    def work(rng: random.Random, count: int) -> int:
        client = grpcclient.InferenceServerClient(url)
        sent = 0
        try:
            for number in range(count):
                if number % 2:
                    request = client.async_infer(
                        PUBLIC_MODEL, build_inputs(image, **settings), lambda result, error: None
                    )
                    time.sleep(rng.uniform(0, MAX_DELAY_S))
                    request.cancel()
                else:
                    with contextlib.suppress(Exception):  # the deadline: what this storm is about
                        client.infer(
                            PUBLIC_MODEL,
                            build_inputs(image, **settings),
                            client_timeout=rng.uniform(0.02, 0.1),
                        )
                sent += 1
        finally:
            client.close()
        return sent

    return _threaded(total, threads, seed, work)


def _run_threads(target, count: int, timeout_s: float = 300.0) -> None:
    workers = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout_s)
    assert not any(worker.is_alive() for worker in workers), "a storm thread did not finish"


def engine_figures(metrics_url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The engine's metrics of the given names (``blip2_active_sequences``, ...)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in names and f'model="{ENGINE_MODEL}"' in line:
            found[name] = float(line.rsplit(" ", 1)[1])
    return found


def engine_gauges(metrics_url: str) -> dict[str, float]:
    """The engine's ``blip2_active_sequences`` and ``blip2_queued_requests`` gauges."""
    return engine_figures(metrics_url, ("blip2_active_sequences", "blip2_queued_requests"))


def engine_cancelled(metrics_url: str) -> float:
    """Requests the engine counted as cancelled (``blip2_requests_cancelled_total``)."""
    return engine_figures(metrics_url, ("blip2_requests_cancelled_total",)).get(
        "blip2_requests_cancelled_total", 0
    )


def wait_engine_idle(metrics_url: str, timeout_s: float = 30.0) -> float:
    """Seconds until the engine reports no active and no queued sequence (raises after ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        gauges = engine_gauges(metrics_url)
        if gauges and not any(gauges.values()):
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(
        f"the engine is still busy {timeout_s:g} s after the storm: {engine_gauges(metrics_url)}"
    )


@dataclass(frozen=True)
class ServerFootprint:
    """What tritonserver and its stubs hold at one moment."""

    rss_mb: float
    fds: int
    shm_regions: int
    shm_mb: float
    processes: int

    @classmethod
    def of(cls, server_pid: int) -> ServerFootprint:
        pids = [server_pid, *(stub.pid for stub in stub_processes(server_pid))]
        fds = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fds += len(list(Path(f"/proc/{pid}/fd").iterdir()))
        regions = _shm_regions_of(pids)
        return cls(
            rss_mb=sum(rss_bytes(pid) for pid in pids) / 2**20,
            fds=fds,
            shm_regions=len(regions),
            shm_mb=sum(path.stat().st_size for path in regions if path.exists()) / 2**20,
            processes=len(pids),
        )


def _shm_regions_of(pids: list[int]) -> set[Path]:
    """The ``/dev/shm`` files the given processes have mapped."""
    regions: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            if " /dev/shm/" in line:
                regions.add(Path(line[line.index("/dev/shm/") :].split(" (deleted)")[0].strip()))
    return regions
