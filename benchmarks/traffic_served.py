"""The served system under open-loop traffic: ``blip2_stream`` over gRPC streams, sent on schedule.

One asyncio task per request sleeps until its scheduled time and then opens its own stream with the
SDK's :class:`AsyncBlip2Client` (``tritonclient.grpc.aio``), whatever the earlier requests are doing:
the sender never waits for a completion. Latency and time to first token are counted from the
scheduled time, so a late sender cannot hide a slow server. The first text piece gives the time to
first token (a request whose text is empty gives its end).
"""

from __future__ import annotations

import asyncio
import time

from traffic_plan import Arrival, encoded_image
from traffic_stats import Outcome, RateRun

from blip2_triton.client import AsyncBlip2Client, Blip2ClientError

STREAM_TIMEOUT_S = 600.0


async def _send(client: AsyncBlip2Client, arrival: Arrival, image: bytes, start: float) -> Outcome:
    scheduled = start + arrival.at_s
    await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
    first = None
    try:
        async for _ in client.stream_caption(
            image, max_tokens=arrival.tokens, min_tokens=arrival.tokens, timeout_s=STREAM_TIMEOUT_S
        ):
            if first is None:
                first = time.perf_counter()
    except Blip2ClientError as exc:
        return Outcome(arrival, None, None, " ".join(str(exc).split())[:200])
    end = time.perf_counter()
    return Outcome(arrival, end - scheduled, (first or end) - scheduled)


async def _open_loop(
    grpc_url: str, schedule: list[Arrival], images: list[bytes]
) -> tuple[list[Outcome], float]:
    async with AsyncBlip2Client(grpc_url, inference_timeout_s=STREAM_TIMEOUT_S) as client:
        await client.wait_until_ready(60.0)
        start = time.perf_counter() + 0.2  # every task is created before the first is due
        tasks = [_send(client, a, image, start) for a, image in zip(schedule, images, strict=True)]
        outcomes = await asyncio.gather(*tasks)
        return list(outcomes), time.perf_counter() - start


async def _one_at_a_time(grpc_url: str, schedule: list[Arrival], images: list[bytes]) -> list[Outcome]:
    async with AsyncBlip2Client(grpc_url, inference_timeout_s=STREAM_TIMEOUT_S) as client:
        await client.wait_until_ready(60.0)
        return [
            await _send(client, a, image, time.perf_counter() - a.at_s)
            for a, image in zip(schedule, images, strict=True)
        ]


class ServedSystem:
    """A running server's ``blip2_stream``, driven by schedules."""

    name = "served"

    def __init__(self, grpc_url: str) -> None:
        self.grpc_url = grpc_url

    def one_at_a_time(self, schedule: list[Arrival]) -> list[Outcome]:
        """Each request sent when the previous one has finished (the unloaded latencies; warm-up)."""
        images = [encoded_image(a.image_seed) for a in schedule]
        return asyncio.run(_one_at_a_time(self.grpc_url, schedule, images))

    def open_loop(self, rate: float, schedule: list[Arrival]) -> RateRun:
        """Every request sent at its scheduled time; the images are encoded before the clock starts."""
        images = [encoded_image(a.image_seed) for a in schedule]
        outcomes, span = asyncio.run(_open_loop(self.grpc_url, schedule, images))
        return RateRun(self.name, rate, outcomes, span)
