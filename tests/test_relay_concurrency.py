"""More unary requests at once than the python backend's default BLS pool (32 threads) all reach
the engine: the relay ``blip2`` holds a pool thread in tritonserver for each request it passes on,
so the server is started with a pool sized to the engine's slots and wait queue."""

from __future__ import annotations

import threading
import time

import pytest

from blip2_triton.server.process import python_backend_args

from .conftest import start_server
from .triton_requests import infer_concurrently, scrape_metrics

pytestmark = pytest.mark.server

SLOTS = 40
TOKENS = 500  # the most a request may ask for is 512
ACTIVE = 'blip2_active_sequences{model="blip2_stream"}'


@pytest.fixture(scope="module")
def forty_slots(tmp_path_factory):
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    base = tmp_path_factory.mktemp("forty_slots")
    checkpoint = build_tiny_checkpoint(
        base / "checkpoint", "opt", image_size=64, llm_context=1024, llm_hidden=256, llm_layers=6
    )
    options = ExportOptions(max_active_sequences=SLOTS, max_queued_requests=8, max_batch_size=SLOTS)
    export_repository(str(checkpoint), base / "repository", options, quiet=True)
    server = start_server(base / "repository", base / "server.log")
    try:
        yield server, base / "repository"
    finally:
        server.stop()


def test_the_pool_is_sized_to_the_engine_unless_the_operator_sized_it(forty_slots):
    _, repository = forty_slots
    assert python_backend_args(repository) == [f"--backend-config=python,thread-pool-size={SLOTS + 8 + 16}"]
    assert python_backend_args(repository, ["--backend-config=python,thread-pool-size=8"]) == []
    assert python_backend_args(repository.parent) == []  # no engine model: Triton's default


def test_forty_unary_requests_decode_together(forty_slots, sample_images):
    """40 concurrent unary requests: the engine holds more than 32 of them at once (it held at most
    32 while the relay's calls waited for the default pool), and every one is answered."""
    server, _ = forty_slots
    image = sample_images[0].read_bytes()
    # Long answers from a wider model (~6 s of decoding here, against 0.3 s for all 40 to arrive): the
    # first requests are still decoding when the last arrive, however slowly a busy machine lets them in.
    requests = [{"image": image, "max_tokens": TOKENS, "min_tokens": TOKENS} for _ in range(SLOTS)]
    outcomes: list = []
    sender = threading.Thread(target=lambda: outcomes.extend(infer_concurrently(server.grpc_url, requests)))
    sender.start()
    most = 0.0
    while sender.is_alive():
        most = max(most, scrape_metrics(server.metrics_url).get(ACTIVE, 0.0))
        time.sleep(0.05)
    sender.join()
    assert all(outcome.text for outcome in outcomes) and len(outcomes) == SLOTS
    assert most > 32, f"at most {most:.0f} sequences were active at once"
