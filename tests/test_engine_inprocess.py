"""The in-flight engine in process, against transformers: joins, settings, streams, cancels, bounds.

Tiny OPT and Flan-T5-style checkpoints are exported, the engine is loaded from the export's
``blip2_stream`` folder (the engine model), and every text is compared with ``Blip2ForConditionalGeneration.generate``
on the same query embeddings (computed by the checkpoint's own vision model and Q-Former).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from blip2_triton.export.options import ExportOptions
from blip2_triton.export.repository import export_repository
from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint
from blip2_triton.runtime.errors import EngineOverloadedError, RequestValidationError
from blip2_triton.runtime.llm.checkpoint import GenerationRequest
from blip2_triton.runtime.llm.engine import EngineLimits, InflightEngine
from blip2_triton.runtime.settings import generate_kwargs, parse_settings

CASES = [
    (None, {"max_tokens": 40, "min_tokens": 30}),
    ("a photo of", {"max_tokens": 50}),
    (None, {}),
    ("a photo of", {"max_tokens": 20}),
    ("Question: what is it? Answer:", {"repetition_penalty": 1.5}),
    (None, {"no_repeat_ngram_size": 2, "max_tokens": 25}),
    (None, {"min_tokens": 12, "max_tokens": 14}),
    (None, {"temperature": 0.7, "top_p": 0.9, "random_seed": 7}),
    (None, {"temperature": 1.0, "top_k": 5, "random_seed": 11, "max_tokens": 15}),
    ("a photo of", {"beam_width": 3}),
    ("Question: what colour? Answer:", {"max_tokens": 30, "min_tokens": 30}),
]


class Sink:
    """Records what the engine reports for one request (every piece, as a stream would)."""

    wants_pieces = True

    def __init__(self, cancel_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self.text: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()
        self.cancel_after = cancel_after

    def on_text(self, piece: str) -> None:
        self.pieces.append(piece)

    def on_finish(self, text: str) -> None:
        self.text = text
        self.done.set()

    def on_error(self, exc: BaseException) -> None:
        self.error = exc
        self.done.set()

    def on_cancelled(self) -> None:
        self.cancelled = True
        self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.pieces) >= self.cancel_after


class Reference:
    """Query embeddings and transformers' texts for a checkpoint."""

    def __init__(self, checkpoint: Path) -> None:
        self.model = Blip2ForConditionalGeneration.from_pretrained(checkpoint).eval()
        self.processor = Blip2Processor.from_pretrained(checkpoint)

    def query_embeds(self, image: Image.Image) -> np.ndarray:
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            vision = self.model.vision_model(pixel_values=pixels).last_hidden_state
            queries = self.model.query_tokens.expand(1, -1, -1)
            output = self.model.qformer(query_embeds=queries, encoder_hidden_states=vision).last_hidden_state
            return self.model.language_projection(output)[0].numpy()

    def text(self, image: Image.Image, prompt: str | None, generation: dict) -> str:
        settings = parse_settings(generation)
        inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        if settings.sampling and settings.random_seed is not None:
            torch.manual_seed(settings.random_seed)
        with torch.inference_mode():
            sequences = self.model.generate(**inputs, **generate_kwargs(settings))
        if self.model.config.use_decoder_only_language_model:
            start = (
                inputs["input_ids"].shape[1]
                if "input_ids" in inputs
                else self.model.config.num_query_tokens + 1
            )
            sequences = sequences[:, start:]
        return self.processor.tokenizer.decode(sequences[0], skip_special_tokens=True).strip()


def _images(count: int) -> list[Image.Image]:
    return [
        Image.fromarray(np.random.RandomState(seed).randint(0, 255, (64, 64, 3), dtype=np.uint8))
        for seed in range(count)
    ]


@pytest.fixture(scope="module", params=["opt", "t5"])
def family_build(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"engine_{request.param}")
    checkpoint = build_tiny_checkpoint(base / "checkpoint", request.param, image_size=64)
    export_repository(str(checkpoint), base / "repository", ExportOptions(), quiet=True)
    return request.param, base / "repository" / "blip2_stream" / "1", Reference(checkpoint)


def _engine(folder: Path, **limits) -> InflightEngine:
    return InflightEngine.launch(folder, limits=EngineLimits(**{"max_active": 4, "max_queued": 64, **limits}))


def test_joining_requests_with_mixed_settings_equal_transformers(family_build):
    """Eleven requests with different settings join a 4-slot batch while others run: every text
    equals transformers' for that request alone, and the pieces join to it."""
    family, folder, reference = family_build
    images = _images(len(CASES))
    embeds = [reference.query_embeds(image) for image in images]
    expected = [
        reference.text(image, prompt, gen) for image, (prompt, gen) in zip(images, CASES, strict=True)
    ]
    engine = _engine(folder)
    try:
        sinks = []
        for query, (prompt, gen) in zip(embeds, CASES, strict=True):
            sinks.append(Sink())
            engine.submit(GenerationRequest(query, prompt or "", parse_settings(gen)), sinks[-1])
            time.sleep(0.01)
        for sink in sinks:
            assert sink.done.wait(120)
        stats = engine.stats()
    finally:
        engine.close(drain_timeout_s=5)
    for sink, want, case in zip(sinks, expected, CASES, strict=True):
        assert sink.error is None, (case, sink.error)
        assert sink.text == want, (family, case)
        assert "".join(sink.pieces) == sink.text
    assert stats["decoded_rows"] > stats["decode_steps"], "the requests never shared a decode step"
    assert len({sink.text for sink in sinks}) > 3


def test_a_seeded_request_gives_the_same_text_alone_and_under_load(family_build):
    _, folder, reference = family_build
    image = _images(1)[0]
    query = reference.query_embeds(image)
    seeded = parse_settings({"temperature": 1.0, "top_k": 20, "random_seed": 1234, "max_tokens": 12})
    engine = _engine(folder)
    try:
        alone = Sink()
        engine.submit(GenerationRequest(query, "", seeded), alone)
        assert alone.done.wait(60)
        crowd = [Sink() for _ in range(6)]
        for index, sink in enumerate(crowd):
            settings = seeded if index == 3 else parse_settings({"max_tokens": 20 + index})
            engine.submit(GenerationRequest(query, "", settings), sink)
        for sink in crowd:
            assert sink.done.wait(60)
    finally:
        engine.close(drain_timeout_s=5)
    assert alone.text == crowd[3].text


def test_a_cancelled_request_frees_its_slot_within_a_step(family_build):
    """One slot: a long request cancelled after 3 pieces leaves; the next one runs at once."""
    _, folder, reference = family_build
    query = reference.query_embeds(_images(1)[0])
    engine = _engine(folder, max_active=1)
    try:
        long = Sink(cancel_after=3)
        engine.submit(
            GenerationRequest(query, "", parse_settings({"max_tokens": 200, "min_tokens": 200})), long
        )
        short = Sink()
        engine.submit(GenerationRequest(query, "", parse_settings({"max_tokens": 3})), short)
        assert long.done.wait(60) and short.done.wait(60)
        stats = engine.stats()
    finally:
        engine.close(drain_timeout_s=5)
    assert long.cancelled and long.text is None
    assert short.text is not None
    assert stats["cancelled"] == 1
    assert stats["generated_tokens"] < 50  # the cancelled one stopped; it did not run 200 tokens


class CancelOnCheck(Sink):
    """Cancelled from the ``calls``-th time the engine asks (beam search asks once per step)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.asked = calls, 0

    def is_cancelled(self) -> bool:
        self.asked += 1
        return self.asked >= self.calls


def test_a_cancelled_beam_search_ends_at_the_next_step(family_build):
    """A 200-token beam search is asked once per step and stops when cancelled, not after 200."""
    _, folder, reference = family_build
    query = reference.query_embeds(_images(1)[0])
    engine = _engine(folder)
    settings = parse_settings({"beam_width": 3, "max_tokens": 200, "min_tokens": 200})
    try:
        cancelled = CancelOnCheck(calls=6)
        engine.submit(GenerationRequest(query, "", settings), cancelled)
        assert cancelled.done.wait(120)
        after = Sink()  # the beam worker is free again and answers the next beam request
        engine.submit(GenerationRequest(query, "", parse_settings({"beam_width": 2, "max_tokens": 3})), after)
        assert after.done.wait(120)
        stats = engine.stats()
    finally:
        engine.close(drain_timeout_s=5)
    assert cancelled.cancelled and cancelled.text is None and cancelled.error is None
    # asked before it starts, once per step until cancelled, once after: far fewer than 200 steps
    assert cancelled.asked <= cancelled.calls + 2, cancelled.asked
    assert after.text is not None
    assert stats["cancelled"] == 1 and stats["beam_requests"] == 2


def test_a_full_queue_refuses_at_once_and_bad_input_is_refused_at_submit(family_build):
    _, folder, reference = family_build
    query = reference.query_embeds(_images(1)[0])
    engine = _engine(folder, max_active=1, max_queued=1, max_sequence_tokens=100)
    long = parse_settings({"max_tokens": 80, "min_tokens": 80})
    try:
        first, second = Sink(cancel_after=10**6), Sink()
        engine.submit(GenerationRequest(query, "", long), first)
        time.sleep(0.2)
        engine.submit(GenerationRequest(query, "", long), second)
        started = time.monotonic()
        with pytest.raises(EngineOverloadedError, match="server overloaded"):
            engine.submit(GenerationRequest(query, "", long), Sink())
        assert time.monotonic() - started < 1.0
        with pytest.raises(RequestValidationError, match="query_embeds has shape"):
            engine.submit(GenerationRequest(query[:-1], "", long), Sink())
        with pytest.raises(RequestValidationError, match="exceeds the engine's slot"):
            engine.submit(GenerationRequest(query, "", parse_settings({"max_tokens": 512})), Sink())
    finally:
        cut = engine.close(drain_timeout_s=30)
    assert first.text is not None and second.text is not None  # close() drained what was accepted
    assert cut == 0


def test_close_cuts_off_what_does_not_finish_in_time(family_build):
    _, folder, reference = family_build
    query = reference.query_embeds(_images(1)[0])
    engine = _engine(folder, max_active=1)
    sinks = [Sink() for _ in range(3)]
    for sink in sinks:
        engine.submit(
            GenerationRequest(query, "", parse_settings({"max_tokens": 200, "min_tokens": 200})), sink
        )
    cut = engine.close(drain_timeout_s=0.0)
    assert cut >= 2
    assert all(sink.done.is_set() for sink in sinks)
    assert sum(isinstance(sink.error, EngineOverloadedError) for sink in sinks) == cut


def test_the_prefix_cache_serves_chat_turns_and_second_questions_exactly(family_build):
    """OPT with the prefix cache on: a 5-turn chat about one image and a second question reuse
    what earlier requests computed (hits, positions saved), and every text equals transformers'.
    Flan-T5's encoder reads the whole prompt: its engine has no prefix cache and gives the same texts."""
    from blip2_triton.client.prompts import chat_prompt

    family, folder, reference = family_build
    image = _images(1)[0]
    query = reference.query_embeds(image)
    settings = {"max_tokens": 6}
    engine = _engine(folder, prefix_cache_bytes=64 * 2**20)
    history: list[tuple[str, str]] = []
    try:
        for question in ("what is it?", "what colour?", "where is it?", "how many?", "is it big?"):
            prompt = chat_prompt(family, history, question)
            sink = Sink()
            engine.submit(GenerationRequest(query, prompt, parse_settings(settings)), sink)
            assert sink.done.wait(60) and sink.error is None, sink.error
            assert sink.text == reference.text(image, prompt, settings), (family, len(history))
            history.append((question, sink.text))
        second = Sink()
        engine.submit(GenerationRequest(query, "Question: why? Answer:", parse_settings(settings)), second)
        assert second.done.wait(60)
        assert second.text == reference.text(image, "Question: why? Answer:", settings)
        stats = engine.stats()
    finally:
        engine.close(drain_timeout_s=5)
    if family == "t5":
        assert stats["prefix_hits"] == stats["prefix_misses"] == 0
        return
    assert stats["prefix_hits"] == 5 and stats["prefix_misses"] == 1
    num_query_tokens = query.shape[0]
    assert stats["prefix_tokens_saved"] > 5 * num_query_tokens  # more than the image tokens alone


def test_prefix_hits_that_arrive_together_are_admitted_in_one_pass_exactly(family_build):
    """OPT, prefix cache on: after one request per image, six follow-up questions of different
    lengths about three images (all prefix hits) are released to the engine at once and admitted in
    one pass; every text still equals transformers' for that request alone."""
    family, folder, reference = family_build
    if family == "t5":
        pytest.skip("Flan-T5's engine has no prefix cache")
    images = _images(3)
    queries = [reference.query_embeds(image) for image in images]
    settings = {"max_tokens": 5}
    first = "Question: what is it? Answer:"
    follow_ups = ["Question: what is it? Answer: a", "Question: what colour is it? Answer:"]
    engine = _engine(folder, max_active=8, prefix_cache_bytes=64 * 2**20)
    try:
        for query in queries:
            sink = Sink()
            engine.submit(GenerationRequest(query, first, parse_settings(settings)), sink)
            assert sink.done.wait(60) and sink.error is None, sink.error
        before = engine.stats()
        engine.hold(30.0)  # all six wait, then join in one admission
        sinks = []
        for query in queries:
            for prompt in follow_ups:
                sink = Sink()
                engine.submit(GenerationRequest(query, prompt, parse_settings(settings)), sink)
                sinks.append((sink, prompt))
        engine.release()
        for sink, _ in sinks:
            assert sink.done.wait(60) and sink.error is None, sink.error
        after = engine.stats()
    finally:
        engine.close(drain_timeout_s=5)
    expected = [reference.text(image, prompt, settings) for image in images for prompt in follow_ups]
    assert [sink.text for sink, _ in sinks] == expected
    assert after["prefix_hits"] - before["prefix_hits"] == 6


def test_a_batched_resume_computes_what_each_resume_computes_alone(family_build):
    """OptStepper.prefill_after over entries of different known and new lengths, in one pass, gives
    each entry's logits and cache columns as a pass of that entry alone does."""
    family, folder, _ = family_build
    if family == "t5":
        pytest.skip("OPT only")
    from blip2_triton.runtime.llm.checkpoint import load_language_model
    from blip2_triton.runtime.llm.opt_stepper import OptStepper

    model, _, _ = load_language_model(folder, "cpu")
    stepper = OptStepper(model, 8, 128)
    generator = torch.Generator().manual_seed(0)
    shape = stepper.cache.keys.shape  # [layers, slots, heads, tokens, head_dim]
    hidden = model.get_input_embeddings().embedding_dim
    entries = [
        (
            torch.randn(shape[0], shape[2], known, shape[4], generator=generator),
            torch.randn(shape[0], shape[2], known, shape[4], generator=generator),
            torch.randn(new, hidden, generator=generator) * 0.1,
        )
        for known, new in ((5, 1), (12, 4), (1, 7), (30, 2))
    ]
    with torch.inference_mode():
        alone = [stepper.prefill_after(0, [entry])[0] for entry in entries]
        alone_keys = []
        for entry in entries:
            stepper.prefill_after(0, [entry])
            alone_keys.append(stepper.cache.keys[:, 0, :, : entry[0].shape[2] + entry[2].shape[0]].clone())
        together = stepper.prefill_after(2, entries)
    for row, (logits, keys) in enumerate(zip(alone, alone_keys, strict=True)):
        torch.testing.assert_close(together[row], logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            stepper.cache.keys[:, 2 + row, :, : keys.shape[2]], keys, rtol=1e-4, atol=1e-4
        )
        assert int(stepper.cache.lengths[2 + row]) == keys.shape[2]


def test_a_hold_pauses_the_engine_after_the_step_under_way_and_release_resumes_it(family_build):
    """``hold`` lets the step under way end, then ``paused`` is true and no step runs (the count
    of generated tokens stands still) until ``release``; the request then finishes as usual."""
    _, folder, reference = family_build
    query = reference.query_embeds(_images(1)[0])
    engine = _engine(folder, max_active=1)
    try:
        assert engine.paused()  # idle: nothing under way
        sink = Sink()
        engine.submit(
            GenerationRequest(query, "", parse_settings({"max_tokens": 60, "min_tokens": 60})), sink
        )
        deadline = time.monotonic() + 30
        while engine.stats()["generated_tokens"] < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        engine.hold(30.0)
        while not engine.paused() and time.monotonic() < deadline:
            time.sleep(0.001)
        held_at = engine.stats()["generated_tokens"]
        time.sleep(0.3)
        still = engine.stats()["generated_tokens"]
        engine.release()
        assert sink.done.wait(60)
    finally:
        engine.close(drain_timeout_s=5)
    assert 3 <= held_at == still < 60
    assert sink.text is not None and len(sink.pieces) >= 1
