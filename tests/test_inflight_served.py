"""The in-flight engine as served: joins, streaming, cancellation, overload, vision cache, metrics.

A tiny OPT export with ONE engine slot and a wait queue of two, so that what a slot and the queue
do is visible: a cancelled request must give its slot back, a full queue must refuse at once.
Timings are compared with each other within a test (a short request against a long one measured
in the same run), never against absolute bounds.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from blip2_triton.runtime.contract import PUBLIC_MODEL, STREAM_MODEL

from .conftest import start_server
from .reference import GenerationReference
from .triton_requests import build_inputs, infer_concurrently, scrape_metrics

pytestmark = pytest.mark.server

LONG = {"max_tokens": 500, "min_tokens": 500}
SHORT = {"max_tokens": 3}


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory):
    """A served OPT export, slower than the tiny one (so 500 tokens take a while) with 1024
    positions, two engine slots and a wait queue of two; and its transformers reference."""
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    base = tmp_path_factory.mktemp("two_slots")
    checkpoint = build_tiny_checkpoint(
        base / "checkpoint", "opt", image_size=64, llm_hidden=384, llm_layers=6, llm_context=1024
    )
    options = ExportOptions(max_active_sequences=2, max_queued_requests=2)
    export_repository(str(checkpoint), base / "repository", options, quiet=True)
    server = start_server(base / "repository", base / "server.log")
    try:
        yield server, GenerationReference(checkpoint)
    finally:
        server.stop()


def _timed_infer(url: str, image: bytes, settings: dict, results: dict, key: str, **kwargs) -> None:
    client = grpcclient.InferenceServerClient(url)
    started = time.monotonic()
    try:
        result = client.infer(PUBLIC_MODEL, build_inputs(image, **settings), **kwargs)
        results[key] = (time.monotonic() - started, result.as_numpy("text_output")[0][0].decode())
    except Exception as exc:  # recorded for the assertions
        results[key] = (time.monotonic() - started, exc)
    finally:
        client.close()


def stream(url: str, image: bytes, prompt: str | None = None, **settings) -> tuple[list[str], bool]:
    """The pieces ``blip2_stream`` sends for one request, and whether a final flag came."""
    client = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(
            STREAM_MODEL, build_inputs(image, prompt, **settings), enable_empty_final_response=True
        )
        pieces, final = [], False
        while not final:
            result, error = answers.get(timeout=120)
            if error is not None:
                raise error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                pieces.append(result.as_numpy("text_output")[0][0].decode("utf-8"))
        return pieces, final
    finally:
        client.stop_stream()
        client.close()


def test_a_short_request_is_not_held_by_a_long_one(two_slots, sample_images):
    """In flight: the short request joins the running batch and leaves long before the long one."""
    server, reference = two_slots
    image = sample_images[0].read_bytes()
    results: dict = {}
    long = threading.Thread(target=_timed_infer, args=(server.grpc_url, image, LONG, results, "long"))
    long.start()
    time.sleep(0.5)
    _timed_infer(server.grpc_url, image, SHORT, results, "short")
    long.join()
    long_s, long_text = results["long"]
    short_s, short_text = results["short"]
    assert isinstance(long_text, str) and isinstance(short_text, str)
    assert short_text == reference.generate(image, None, **SHORT)
    print(f"\nin flight: a 3-token request took {short_s:.2f}s while a 500-token one took {long_s:.2f}s")
    assert short_s < long_s / 4


def test_stream_pieces_join_to_the_unary_text(opt_server, sample_images):
    for path, prompt in zip(
        sample_images[:3], (None, "a photo of", "Question: what is it? Answer:"), strict=True
    ):
        image = path.read_bytes()
        pieces, final = stream(opt_server.grpc_url, image, prompt, max_tokens=20)
        (unary,) = infer_concurrently(
            opt_server.grpc_url, [{"image": image, "prompt": prompt, "max_tokens": 20}]
        )
        assert final
        assert "".join(pieces) == unary.text == opt_server.reference(image, prompt, max_tokens=20)
        assert all(piece and "\ufffd" not in piece for piece in pieces)
        assert len(pieces) > 1 or len(unary.text.split()) <= 1


def test_bad_stream_request_gets_its_one_line_error(opt_server, sample_images):
    """A gRPC stream carries an error's message only (no status code): the message names it."""
    with pytest.raises(Exception) as caught:
        stream(opt_server.grpc_url, b"not an image")
    message = caught.value.message()
    assert "not a recognised image format" in message
    assert "\n" not in message and "Traceback" not in message
    pieces, final = stream(opt_server.grpc_url, sample_images[0].read_bytes(), max_tokens=3)
    assert final and pieces  # the server keeps serving


def _busy_slot(server, image: bytes, results: dict) -> threading.Thread:
    """Occupy one of the two slots with a 500-token request; returns its thread."""
    thread = threading.Thread(target=_timed_infer, args=(server.grpc_url, image, LONG, results, "busy"))
    thread.start()
    time.sleep(0.3)
    return thread


def test_a_client_timeout_frees_the_slot(two_slots, sample_images):
    """One slot busy, the other taken by a request whose deadline passes: the deadline cancels it
    in the engine, so the next request gets the slot at once instead of waiting 500 tokens."""
    server, reference = two_slots
    image = sample_images[1].read_bytes()
    results: dict = {}
    busy = _busy_slot(server, image, results)
    _timed_infer(server.grpc_url, image, LONG, results, "cut", client_timeout=0.3)
    _timed_infer(server.grpc_url, image, SHORT, results, "next")
    busy.join()
    _, cut = results["cut"]
    next_s, text = results["next"]
    busy_s, _ = results["busy"]
    assert "deadline" in str(cut).lower(), cut
    assert text == reference.generate(image, None, **SHORT)
    print(
        f"\ncancel: after a timed-out 500-token request a 3-token one took {next_s:.2f}s (500 tokens: {busy_s:.2f}s)"
    )
    assert next_s < busy_s / 4


def test_a_closed_stream_frees_the_slot(two_slots, sample_images):
    server, reference = two_slots
    image = sample_images[2].read_bytes()
    results: dict = {}
    busy = _busy_slot(server, image, results)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer(STREAM_MODEL, build_inputs(image, **LONG))
    answers.get(timeout=60)  # it runs: a first piece came
    client.stop_stream(cancel_requests=True)
    client.close()
    _timed_infer(server.grpc_url, image, SHORT, results, "next")
    busy.join()
    next_s, text = results["next"]
    assert text == reference.generate(image, None, **SHORT)
    print(
        f"\nclosed stream: the next 3-token request took {next_s:.2f}s (500 tokens: {results['busy'][0]:.2f}s)"
    )
    assert next_s < results["busy"][0] / 4


def test_a_full_queue_refuses_at_once(two_slots, sample_images):
    """Two slots busy, two requests waiting: the fifth is refused UNAVAILABLE without waiting."""
    server, _ = two_slots
    image = sample_images[3].read_bytes()
    results: dict = {}
    threads = [
        threading.Thread(target=_timed_infer, args=(server.grpc_url, image, LONG, results, f"r{i}"))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    _timed_infer(server.grpc_url, image, SHORT, results, "refused")
    for thread in threads:
        thread.join()
    refused_s, refused = results["refused"]
    assert not isinstance(refused, str), "the fifth request was not refused"
    assert "UNAVAILABLE" in str(refused.status()), refused
    assert "overloaded" in refused.message()
    assert all(isinstance(results[f"r{i}"][1], str) for i in range(4))
    admitted = ", ".join(f"{results['r' + str(i)][0]:.2f}" for i in range(4))
    print(f"\noverload: refused in {refused_s:.3f}s; the admitted ones took {admitted}s")
    assert refused_s < min(results[f"r{i}"][0] for i in range(4)) / 4
    key = 'blip2_requests_rejected_total{model="blip2_stream",reason="queue_full"}'
    deadline = time.monotonic() + 5  # the engine publishes its metrics four times a second
    while True:
        refusals = scrape_metrics(server.metrics_url).get(key, 0)
        if refusals >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert refusals >= 1, "the refusal is not counted by reason"


def test_five_questions_about_one_image_encode_it_once(opt_server):
    image = _png_never_sent_before()
    client = grpcclient.InferenceServerClient(opt_server.grpc_url)
    before = client.get_inference_statistics("blip2_vision").model_stats[0]
    for question in ("what is it?", "what colour?", "where?", "how many?", "is it big?"):
        client.infer(PUBLIC_MODEL, build_inputs(image, f"Question: {question} Answer:", max_tokens=4))
    after = client.get_inference_statistics("blip2_vision").model_stats[0]
    client.close()
    executions = after.execution_count - before.execution_count
    hits = after.inference_stats.cache_hit.count - before.inference_stats.cache_hit.count
    print(f"\nvision cache: 5 questions -> {executions} blip2_vision execution(s), {hits} cache hits")
    assert executions == 1
    assert hits == 4


def test_questions_about_one_image_reuse_its_prefill(opt_server):
    """The OPT prefix cache (on by default): after the first question, the image tokens and the
    shared start of the prompt come from the cache, counted on the metrics port."""
    image = _png_never_sent_before()
    names = ("blip2_prefix_cache_hits_total", "blip2_prefix_cache_tokens_saved_total")

    def counters() -> dict[str, float]:
        time.sleep(0.6)  # the engine publishes every 0.25 s
        values = scrape_metrics(opt_server.server.metrics_url)
        return {name: values.get(f'{name}{{model="blip2_stream"}}', 0.0) for name in names}

    before = counters()
    client = grpcclient.InferenceServerClient(opt_server.grpc_url)
    try:
        texts = [
            client.infer(PUBLIC_MODEL, build_inputs(image, f"Question: {q} Answer:", max_tokens=4))
            .as_numpy("text_output")[0][0]
            .decode()
            for q in ("what is it?", "what colour?", "where?")
        ]
    finally:
        client.close()
    after = counters()
    assert all(
        opt_server.reference(image, f"Question: {q} Answer:", max_tokens=4) == t
        for q, t in zip(("what is it?", "what colour?", "where?"), texts, strict=True)
    )
    assert after[names[0]] - before[names[0]] >= 2
    assert after[names[1]] - before[names[1]] > 2 * 8  # more than image tokens alone would save


def test_metrics_are_published(opt_server, sample_images):
    infer_concurrently(opt_server.grpc_url, [{"image": sample_images[0].read_bytes(), "max_tokens": 5}])
    deadline = time.monotonic() + 10
    while True:
        values = scrape_metrics(opt_server.server.metrics_url)
        if (
            values.get('blip2_generated_tokens_total{model="blip2_stream"}', 0) > 0
            or time.monotonic() > deadline
        ):
            break
        time.sleep(0.5)
    assert values['blip2_generated_tokens_total{model="blip2_stream"}'] > 0
    assert values['blip2_time_to_first_token_seconds_count{model="blip2_stream"}'] > 0
    assert values['blip2_time_per_output_token_seconds_count{model="blip2_stream"}'] > 0
    assert 'blip2_active_sequences{model="blip2_stream"}' in values
    assert 'blip2_queued_requests{model="blip2_stream"}' in values
    assert any(key.startswith("nv_cache_num_hits_per_model") for key in values)
    assert any(key.startswith("nv_cache_num_misses_per_model") for key in values)


def _png_never_sent_before() -> bytes:
    """A random image, so the vision cache cannot know it from an earlier test."""
    import io

    from PIL import Image

    pixels = np.random.default_rng(time.time_ns()).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_parity_under_staggered_load(opt_server, sample_images):
    """Greedy and beam requests joining mid-generation still equal transformers token for token."""
    cases = []
    for index, path in enumerate(sample_images[:8]):
        settings = {"max_tokens": 12 + 3 * index}
        if index % 3 == 2:
            settings["beam_width"] = 3
        prompt = (None, "a photo of", "Question: what is in the picture? Answer:")[index % 3]
        cases.append((path.read_bytes(), prompt, settings))
    results: dict = {}

    def run(index: int, image: bytes, prompt, settings: dict) -> None:
        client = grpcclient.InferenceServerClient(opt_server.grpc_url)
        try:
            answer = client.infer(PUBLIC_MODEL, build_inputs(image, prompt, **settings))
            results[index] = answer.as_numpy("text_output")[0][0].decode()
        finally:
            client.close()

    threads = []
    for index, (image, prompt, settings) in enumerate(cases):
        threads.append(threading.Thread(target=run, args=(index, image, prompt, settings)))
        threads[-1].start()
        time.sleep(0.07)  # each one joins a batch that is already generating
    for thread in threads:
        thread.join()
    for index, (image, prompt, settings) in enumerate(cases):
        assert results[index] == opt_server.reference(image, prompt, **settings), (index, settings)
    assert np.unique([results[i] for i in results]).size > 1
