"""Overload: bounded queues give excess requests a fast UNAVAILABLE; admitted ones finish; nothing hangs.

A tiny export with small batches and queues (``--max-batch-size 2 --max-queue-size 2``, and an engine
of 2 slots and 2 waiting) gets four times as many concurrent requests as it can hold. Figures go to ``.work/figures/overload.json``.
Latency is reported, not asserted beyond generous bounds.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from blip2_triton.runtime.contract import PUBLIC_MODEL
from blip2_triton.server import TritonServer

from .parity import build_relocated_repository
from .triton_requests import build_inputs

FIGURES = Path(__file__).resolve().parent.parent / ".work" / "figures"
BATCH, QUEUE = 2, 2


def _image(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_queues(tmp_path_factory):
    base = tmp_path_factory.mktemp("overload")
    # The steps' Triton queues and the engine's own (its slots and wait queue) are all small.
    build = build_relocated_repository(
        base,
        "opt",
        max_batch_size=BATCH,
        max_queue_size=QUEUE,
        queue_delay_us=1000,
        max_active_sequences=BATCH,
        max_queued_requests=QUEUE,
    )
    server = TritonServer.on_free_ports(build["repository"], log_file=base / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send(url: str, index: int, tokens: int, outcomes: list) -> None:
    client = grpcclient.InferenceServerClient(url)
    started = time.monotonic()
    try:
        client.infer(
            PUBLIC_MODEL,
            build_inputs(_image(index), max_tokens=tokens, min_tokens=tokens),
            client_timeout=600,
        )
        outcomes[index] = ("ok", time.monotonic() - started)
    except InferenceServerException as exc:
        outcomes[index] = (f"{exc.status()} {exc.message()}", time.monotonic() - started)
    finally:
        client.close()


@pytest.mark.server
def test_four_times_overload_is_refused_fast_and_nothing_hangs(small_queues: TritonServer) -> None:
    # What the pipeline can hold at once, roughly: a batch running and a queue waiting, per step.
    capacity = 3 * (BATCH + QUEUE)
    count = 4 * capacity
    outcomes: list = [None] * count
    threads = [
        threading.Thread(target=_send, args=(small_queues.grpc_url, i, 40, outcomes)) for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    answered = [seconds for status, seconds in outcomes if status == "ok"]
    refused = [(status, seconds) for status, seconds in outcomes if status != "ok"]
    assert answered, "nothing was admitted"
    unavailable = [(status, s) for status, s in refused if status.startswith("StatusCode.UNAVAILABLE")]
    assert len(unavailable) == len(refused), sorted({status[:160] for status, _ in refused})
    # Refusals are fast: no refused request waited for generation (generous bound for a loaded machine).
    assert max(s for _, s in refused) < max(answered), "a refusal took as long as a generation"
    figures = {
        "sent_at_once": count,
        "answered": len(answered),
        "refused": len(refused),
        "refused_unavailable": len(unavailable),
        "refusal_latency_s_max": round(max((s for _, s in refused), default=0.0), 3),
        "refusal_latency_s_median": round(float(np.median([s for _, s in refused])), 3) if refused else None,
        "answered_latency_s_median": round(float(np.median(answered)), 2),
        "answered_latency_s_max": round(max(answered), 2),
        "refusal_messages": sorted({status for status, _ in refused}),
    }
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "overload.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\noverload:", json.dumps(figures))
