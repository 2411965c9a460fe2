"""The in-flight (continuous) batching engine of the LLM stage, free of Triton glue.

One engine per model instance. ``submit`` checks a request and queues it; the engine's thread runs
a loop of steps: it drops cancelled sequences, admits waiting requests into free slots (an OPT
prefill, or a T5 encoder pass, each a step of its own), then runs ONE decode step over every
active sequence, each at its own position with its own settings, and answers whatever finished.
A finished or cancelled sequence frees its slot at once; the next request takes it at the next
step. Beam search (``beam_width`` > 1) runs on a second worker with transformers' ``generate``,
one request at a time, so it never holds the decode loop; a cancel ends it at the next beam step.

Threads and CPU speed: torch's CPU kernels use OpenMP, and GNU OpenMP gives every thread that runs
parallel work a worker pool of its own. Once a process holds more pool threads than cores, every
worker stops spinning between kernels and sleeps instead, which made a lone request's decode steps
about 1.5x slower on a 2-core machine when the model was loaded on one thread and stepped on
another. ``launch`` therefore loads the model on the decode thread itself, and each beam request
runs on a short-lived thread whose pool goes away with it.

Callbacks (``RequestSink``) come from the engine's threads only: ``on_text`` once per generated token
with the newly settled piece of text ("" when none; a sink whose ``wants_pieces`` is false gets ""
throughout and is spared the incremental decoding), then exactly one of ``on_finish`` (the whole text, as transformers decodes it),
``on_error`` or ``on_cancelled``.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EngineOverloadedError, RequestValidationError
from .beam_search import BeamSearch
from .checkpoint import GenerationRequest, LlmSettings, context_length, load_language_model
from .detokenizer import Detokenizer
from .opt_stepper import OptStepper
from .prefix_cache import PrefixCache, PrefixHit, image_key
from .prompt_check import PromptChecker, encoder_token_limit
from .t5_stepper import T5Stepper
from .token_choice import TokenChoice

IDLE_WAIT_S = 0.05


class RequestSink(Protocol):
    """Where one request's results go (called from the engine's threads)."""

    wants_pieces: bool  # false: a unary request, on_text gets "" and the text comes with on_finish

    def on_text(self, piece: str) -> None: ...  # once per generated token; "" when nothing settled
    def on_finish(self, text: str) -> None: ...
    def on_error(self, exc: BaseException) -> None: ...
    def on_cancelled(self) -> None: ...
    def is_cancelled(self) -> bool: ...


class _GuardedSink:
    """A sink whose failures stay its own: an exception in a callback is printed (the server log)
    and swallowed, so one request's broken sink can never stop the engine or its neighbours."""

    def __init__(self, sink: RequestSink) -> None:
        self._sink = sink
        self.wants_pieces = sink.wants_pieces

    def _call(self, name: str, *args):
        try:
            return getattr(self._sink, name)(*args)  # one guard for the five callbacks
        except Exception:
            traceback.print_exc()
            return None

    def on_text(self, piece: str) -> None:
        self._call("on_text", piece)

    def on_finish(self, text: str) -> None:
        self._call("on_finish", text)

    def on_error(self, exc: BaseException) -> None:
        self._call("on_error", exc)

    def on_cancelled(self) -> None:
        self._call("on_cancelled")

    def is_cancelled(self) -> bool:
        return bool(self._call("is_cancelled"))


@dataclass(frozen=True)
class EngineLimits:
    """The engine's bounds (export options): slots, tokens per slot, waiting requests."""

    max_active: int = 16
    max_sequence_tokens: int = 1024
    max_queued: int = 64
    prefix_cache_bytes: int = 0  # OPT: keys/values of (image, prefix) kept between requests; 0 = off


@dataclass
class _Sequence:
    """A request in a slot."""

    request: GenerationRequest
    sink: RequestSink
    choice: TokenChoice
    detokenizer: Detokenizer
    history: list[int]
    next_token: int = -1
    generated: int = 0
    image: bytes | None = None  # the prefix cache's key of the request's image (OPT, cache on)


@dataclass
class _Stats:
    generated_tokens: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    decode_steps: int = 0
    decoded_rows: int = 0
    prefills: int = 0
    beam_requests: int = 0
    beam_busy: int = 0  # the beam worker is generating
    prefix_hits: int = 0
    prefix_misses: int = 0
    prefix_tokens_saved: int = 0


class InflightEngine:
    """Continuous batching over preallocated slots; see the module docstring."""

    def __init__(
        self, model, tokenizer, settings: LlmSettings, limits: EngineLimits, device: str = "cpu"
    ) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.limits = limits
        self.device = device
        self.encoder_decoder = settings.family == "t5"
        context = context_length(model.config, settings.family)
        self.checker = PromptChecker(
            tokenizer, settings, context_length=context, max_sequence_tokens=limits.max_sequence_tokens
        )
        self.stepper: OptStepper | T5Stepper
        if self.encoder_decoder:
            encoder_tokens = encoder_token_limit(tokenizer)
            self.stepper = T5Stepper(model, limits.max_active, limits.max_sequence_tokens, encoder_tokens)
        else:
            if getattr(model.config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
                raise ValueError(f"unsupported attention implementation {model.config._attn_implementation}")
            self.stepper = OptStepper(model, limits.max_active, limits.max_sequence_tokens)
        self.prefix_cache = PrefixCache(0 if self.encoder_decoder else limits.prefix_cache_bytes)
        self.hidden = model.get_input_embeddings().embedding_dim
        self.beam_search = BeamSearch(model, tokenizer, settings, device)
        self._pending: collections.deque = collections.deque()
        self._beams: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._rows: list[_Sequence] = []
        self._stats = _Stats()
        self._accepting = True
        self._stopping = False
        self._reserved = 0  # requests accepted by ``reserve`` and not submitted yet
        self._held_until = 0.0  # monotonic time: no step runs before it unless ``release``d
        self._stepping = False  # the loop is inside an iteration (admitting or decoding)
        self._admitting = 0  # requests taken off the wait queue, not in a slot yet
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: str = "cpu", limits: EngineLimits | None = None
    ) -> InflightEngine:
        """Load the language model and tokenizer an export wrote into ``folder``."""
        model, tokenizer, settings = load_language_model(folder, device)
        return cls(model, tokenizer, settings, limits or EngineLimits(), device)

    # -- the outside -------------------------------------------------------------------------------

    @classmethod
    def launch(
        cls, folder: str | Path, device: str = "cpu", limits: EngineLimits | None = None
    ) -> InflightEngine:
        """Load the engine from ``folder`` ON its decode thread and start it (see the module
        docstring: every torch kernel of the decode loop then runs on the thread that loaded the
        model). Returns once loaded; a failed load raises here."""
        loaded: queue.Queue = queue.Queue(maxsize=1)

        def load_then_loop() -> None:
            try:
                engine = cls.from_folder(folder, device, limits)
            except BaseException as exc:  # the caller raises it
                loaded.put(exc)
                return
            loaded.put(engine)
            engine._loop()

        thread = threading.Thread(target=load_then_loop, name="blip2-decode-loop", daemon=True)
        thread.start()
        result = loaded.get()
        if isinstance(result, BaseException):
            raise result
        beam_worker = threading.Thread(target=result._beam_loop, name="blip2-beam-worker", daemon=True)
        beam_worker.start()
        result._threads += [thread, beam_worker]
        return result

    def reserve(self, rows: int) -> None:
        """Take ``rows`` requests that will be submitted once their images are encoded, or refuse
        them at once (``EngineOverloadedError``) when the slots and the wait queue cannot hold
        them with everything accepted before. Each is then ``submit``ted with ``reserved=True``
        or handed back with ``unreserve``."""
        with self._wake:
            if not self._accepting:
                raise EngineOverloadedError("the LLM stage is shutting down", reason="shutting_down")
            accepted = len(self._rows) + len(self._pending) + self._beams.qsize() + self._reserved
            if accepted + rows > self.limits.max_active + self.limits.max_queued:
                raise EngineOverloadedError(
                    f"{accepted} requests hold or wait for the {self.limits.max_active} generation "
                    f"slots (at most {self.limits.max_queued} wait); try again later"
                )
            self._reserved += rows

    def unreserve(self, rows: int = 1) -> None:
        """Hand back reservations of requests that will not be submitted (failed, cancelled)."""
        with self._lock:
            self._reserved = max(0, self._reserved - rows)

    def submit(self, request: GenerationRequest, sink: RequestSink, *, reserved: bool = False) -> None:
        """Check ``request`` and queue it; never blocks. Raises ``RequestValidationError`` for bad
        input and ``EngineOverloadedError`` when the wait queue is full (not for a ``reserve``d
        request: its reservation is used up either way)."""
        if reserved:
            self.unreserve()
        ids = self._check(request)
        beam = (request.settings.beam_width or 1) > 1
        with self._wake:
            if not self._accepting and not reserved:  # a reserved request was accepted before a drain
                raise EngineOverloadedError("the LLM stage is shutting down", reason="shutting_down")
            waiting = len(self._pending) + self._beams.qsize()
            if not reserved and waiting >= self.limits.max_queued:
                raise EngineOverloadedError(
                    f"{waiting} requests wait for the {self.limits.max_active} generation slots; try again later"
                )
            sink = _GuardedSink(sink)
            if beam:
                self._beams.put((request, sink, ids))
            else:
                self._pending.append((request, sink, ids))
                self._wake.notify()

    def stats(self) -> dict:
        """Figures for metrics: active, queued, generated_tokens, finished, cancelled, decode_steps..."""
        with self._lock:
            stats = self._stats
            return {
                "active": len(self._rows),
                "queued": len(self._pending) + self._beams.qsize() + self._reserved,
                "generated_tokens": stats.generated_tokens,
                "finished": stats.finished,
                "cancelled": stats.cancelled,
                "failed": stats.failed,
                "decode_steps": stats.decode_steps,
                "decoded_rows": stats.decoded_rows,
                "prefills": stats.prefills,
                "beam_requests": stats.beam_requests,
                "prefix_hits": stats.prefix_hits,
                "prefix_misses": stats.prefix_misses,
                "prefix_tokens_saved": stats.prefix_tokens_saved,
                "prefix_cache_bytes": self.prefix_cache.nbytes,
            }

    def free_slots(self) -> int:
        """Slots no active or waiting request will take: how many new requests can start at once."""
        with self._lock:
            return max(0, self.limits.max_active - len(self._rows) - len(self._pending) - self._admitting)

    def idle(self) -> bool:
        """Nothing generating and nothing waiting for a slot."""
        with self._lock:
            return not self._rows and not self._pending and not self._admitting

    def hold(self, max_s: float) -> None:
        """Run no step (no prefill, no decode) until ``release`` or for at most ``max_s``: the
        vision stage has the cores meanwhile, and what it encodes then joins in one prefill."""
        with self._wake:
            self._held_until = max(self._held_until, time.monotonic() + max_s)

    def paused(self) -> bool:
        """No step is under way (the loop waits: idle, or ``hold``ing): after ``hold``, the vision
        stage has the cores once this is true."""
        with self._lock:
            return not self._stepping

    def release(self) -> None:
        """End a ``hold``: steps run again (with whatever was submitted meanwhile)."""
        with self._wake:
            self._held_until = 0.0
            self._wake.notify()

    def close(self, drain_timeout_s: float | None = None) -> int:
        """Stop admitting; let what was accepted finish until ``drain_timeout_s``; cut the rest
        (``on_error``); stop the threads. Returns how many requests were cut off."""
        with self._wake:
            self._accepting = False
            self._wake.notify_all()
        deadline = None if drain_timeout_s is None else time.monotonic() + drain_timeout_s
        while deadline is None or time.monotonic() < deadline:
            with self._lock:
                busy = (
                    len(self._rows)
                    + len(self._pending)
                    + self._admitting
                    + self._beams.qsize()
                    + self._stats.beam_busy
                    + self._reserved
                )
            if not busy or not self._threads:
                break
            time.sleep(0.05)
        with self._wake:
            self._stopping = True
            cut = list(self._pending)
            self._pending.clear()
            self._wake.notify_all()
        self._beams.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        cut_rows = self._rows
        self._rows = []
        while True:
            try:
                item = self._beams.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                cut.append(item)
        error = EngineOverloadedError("the server is shutting down", reason="shutting_down")
        for item in cut:
            item[1].on_error(error)
        for sequence in cut_rows:
            sequence.sink.on_error(error)
        return len(cut) + len(cut_rows)

    # -- checks ------------------------------------------------------------------------------------

    def _check(self, request: GenerationRequest) -> list[int]:
        """The request's input ids: those ``self.checker`` gave it (``prompt_ids``), or checked now."""
        expected = (self.settings.num_query_tokens, self.hidden)
        shape = tuple(np.shape(request.query_embeds))
        if shape != expected:
            raise RequestValidationError(f"query_embeds has shape {shape}, expected {expected}")
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        return self.checker.check(request.prompt, request.settings)

    # -- the decode loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                try:
                    if not self._iteration():
                        return
                except Exception:  # a failing step or callback must never stop the engine
                    traceback.print_exc()
                    self._fail_all(RuntimeError("the engine failed a step; see the server log"))

    def _fail_all(self, error: BaseException) -> None:
        rows, self._rows = self._rows, []
        for sequence in rows:
            with contextlib.suppress(Exception):
                sequence.sink.on_error(error)

    def _iteration(self) -> bool:
        """One round of the loop: admit, then one decode step. False once the engine stops."""
        with self._wake:
            while not self._stopping and not self._pending and not self._rows:
                self._wake.wait(IDLE_WAIT_S)
            while not self._stopping and (held := self._held_until - time.monotonic()) > 0:
                self._wake.wait(held)
            if self._stopping:
                return False
            admit: list[tuple[GenerationRequest, RequestSink, list[int]]] = []
            while self._pending and len(self._rows) + len(admit) < self.limits.max_active:
                admit.append(self._pending.popleft())
            self._stepping = True
            self._admitting = len(admit)
        try:
            self._drop_cancelled()
            if admit:
                self._admit(admit)
                with self._lock:
                    self._admitting = 0
            if self._rows:
                self._decode_step()
        finally:
            with self._lock:
                self._stepping = False
                self._admitting = 0
        return True

    def _drop_cancelled(self) -> None:
        for row in reversed(range(len(self._rows))):
            sequence = self._rows[row]
            if sequence.sink.is_cancelled():
                self._remove(row)
                with self._lock:
                    self._stats.cancelled += 1
                sequence.sink.on_cancelled()

    def _remove(self, row: int) -> None:
        last = len(self._rows) - 1
        if row != last:
            self.stepper.move(last, row)
            self._rows[row] = self._rows[last]
        self._rows.pop()

    def _new_sequence(self, request: GenerationRequest, sink: RequestSink, start_ids: list[int]) -> _Sequence:
        choice = TokenChoice(self.model, request.settings, len(start_ids), self.device)
        return _Sequence(request, sink, choice, Detokenizer(self.tokenizer), list(start_ids))

    def _admit(self, admitted: list) -> None:
        """Put waiting requests into free slots: one OPT prefill pass for all of them (one more for
        those whose prompt starts like a cached one: only their new positions), or a T5 encoder pass
        each. A request that fails alone gets its error; the others go on."""
        torch = self._torch
        joining = []
        resuming: list[tuple[_Sequence, PrefixHit, object]] = []
        for request, sink, ids in admitted:
            if sink.is_cancelled():
                with self._lock:
                    self._stats.cancelled += 1
                sink.on_cancelled()
                continue
            try:
                input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
                embeds = self._prompt_embeds(input_ids, request)
                if isinstance(self.stepper, T5Stepper):
                    sequence = self._new_sequence(request, sink, [self.stepper.start_token])
                    self.stepper.admit(len(self._rows), embeds, torch.ones_like(input_ids))
                    sequence.next_token = self.stepper.start_token
                    self._rows.append(sequence)
                    continue
                sequence = self._new_sequence(request, sink, ids)
                hit = self._prefix_hit(sequence)
                if hit is None:
                    joining.append((sequence, embeds[0]))
                else:
                    resuming.append((sequence, hit, embeds[0][hit.length :]))
            except Exception as exc:  # one request failing must not stop the loop
                self._fail(sink, exc)
        if resuming:
            entries = [(hit.keys, hit.values, new) for _, hit, new in resuming]
            self._join([sequence for sequence, _, _ in resuming], self._opt.prefill_after, entries)
        if joining:
            self._join([sequence for sequence, _ in joining], self._opt.prefill, [e for _, e in joining])
        with self._lock:
            self._stats.prefills += len(admitted)

    def _join(self, sequences: list[_Sequence], prefill, inputs: list) -> None:
        """Prefill ``sequences`` into the next free slots in one pass (``prefill(first_slot,
        inputs)`` -> their last positions' logits), then take each one's first token."""
        first = len(self._rows)
        try:
            logits = prefill(first, inputs)
        except Exception as exc:
            for sequence in sequences:
                self._fail(sequence.sink, exc)
            return
        self._rows.extend(sequences)
        tokens = self._choose(logits, first)
        for row in reversed(range(first, len(self._rows))):
            self._take(row, tokens[row])

    @property
    def _opt(self) -> OptStepper:
        """The stepper on the OPT-only paths (one prefill for many, the prefix cache)."""
        assert isinstance(self.stepper, OptStepper)
        return self.stepper

    def _prefix_hit(self, sequence: _Sequence) -> PrefixHit | None:
        """The cached keys and values of the longest known start of an OPT sequence's prompt (its
        image and tokens), counted as a hit or a miss; None when the cache is off or has nothing."""
        if not self.prefix_cache.enabled:
            return None
        sequence.image = image_key(np.asarray(sequence.request.query_embeds))
        hit = self.prefix_cache.lookup(sequence.image, sequence.history)
        with self._lock:
            if hit is None:
                self._stats.prefix_misses += 1
            else:
                self._stats.prefix_hits += 1
                self._stats.prefix_tokens_saved += hit.length
        return hit

    def _keep_prefix(self, row: int) -> None:
        """Keep a finished OPT sequence's keys and values (prompt and answer) for later requests."""
        sequence = self._rows[row]
        if sequence.image is None:
            return
        length = int(self._opt.cache.lengths[row])
        keys, values = self._opt.slot_entries(row, length)
        self.prefix_cache.store(sequence.image, sequence.history[:length], keys, values)

    def _fail(self, sink: RequestSink, exc: BaseException) -> None:
        with self._lock:
            self._stats.failed += 1
        sink.on_error(exc)

    def _prompt_embeds(self, input_ids, request: GenerationRequest):
        """The prompt's token embeddings with the query embeddings in place of the image tokens."""
        torch = self._torch
        embeds = self.model.get_input_embeddings()(input_ids)
        query = torch.as_tensor(np.asarray(request.query_embeds), device=self.device).to(embeds.dtype)
        mask = (input_ids == self.settings.image_token_id).unsqueeze(-1)
        return embeds.masked_scatter(mask, query[None])

    def _history(self, sequence: _Sequence):
        return self._torch.tensor([sequence.history], dtype=self._torch.long, device=self.device)

    def _decode_step(self) -> None:
        torch = self._torch
        count = len(self._rows)
        tokens = torch.tensor([s.next_token for s in self._rows], dtype=torch.long, device=self.device)
        try:
            logits = self.stepper.decode(count, tokens)
        except Exception as exc:  # the batch cannot go on: every active request gets the error
            rows, self._rows = self._rows, []
            for sequence in rows:
                sequence.sink.on_error(exc)
            return
        chosen = self._choose(logits, 0)
        with self._lock:
            self._stats.decode_steps += 1
            self._stats.decoded_rows += count
        for row in reversed(range(count)):
            self._take(row, chosen[row])

    def _choose(self, logits, first: int) -> dict[int, int]:
        """Each row's next token (rows ``first`` + i of ``logits``' row i): greedy rows whose only
        processing is a minimum length take one batched argmax, the rest their own processors."""
        torch = self._torch
        fast = [i for i in range(logits.shape[0]) if self._rows[first + i].choice.batchable]
        chosen: dict[int, int] = {}
        if fast:
            scores = logits[fast]
            blocked = [
                k
                for k, i in enumerate(fast)
                if self._rows[first + i].choice.blocks_eos(self._rows[first + i].generated)
            ]
            if blocked:
                scores = scores.clone()
                for k in blocked:
                    scores[k, self._rows[first + fast[k]].choice.eos_index] = -float("inf")
            picks = torch.argmax(scores, dim=-1).tolist()
            chosen.update({first + i: token for i, token in zip(fast, picks, strict=True)})
        for i in range(logits.shape[0]):
            row = first + i
            if row not in chosen:
                sequence = self._rows[row]
                chosen[row] = sequence.choice.pick(self._history(sequence), logits[i : i + 1])
        return chosen

    def _take(self, row: int, token: int) -> None:
        """Record ``token`` for the sequence in ``row``; answer and free the slot when it is done."""
        sequence = self._rows[row]
        sequence.history.append(token)
        sequence.generated += 1
        sequence.next_token = token
        with self._lock:
            self._stats.generated_tokens += 1
        piece = sequence.detokenizer.add(token, pieces=sequence.sink.wants_pieces)
        sequence.sink.on_text(piece)  # "" when nothing settled: still one call per token
        if sequence.choice.stops(token, sequence.generated):
            text, last = sequence.detokenizer.finish()
            self._keep_prefix(row)
            self._remove(row)
            if last and sequence.sink.wants_pieces:
                sequence.sink.on_text(last)
            with self._lock:
                self._stats.finished += 1
            sequence.sink.on_finish(text)

    # -- beam search -------------------------------------------------------------------------------

    def _beam_loop(self) -> None:
        while True:
            item = self._beams.get()
            if item is None:
                return
            request, sink, ids = item
            if sink.is_cancelled():
                with self._lock:
                    self._stats.cancelled += 1
                sink.on_cancelled()
                continue
            with self._lock:
                self._stats.beam_busy = 1
                self._stats.beam_requests += 1
            try:
                text = self._beam_generate(request, sink, ids)
            finally:
                with self._lock:
                    self._stats.beam_busy = 0
            if isinstance(text, Exception):
                sink.on_error(text)
            elif sink.is_cancelled():
                with self._lock:
                    self._stats.cancelled += 1
                sink.on_cancelled()
            else:
                if text:
                    sink.on_text(text)
                with self._lock:
                    self._stats.finished += 1
                sink.on_finish(text)

    def _beam_generate(
        self, request: GenerationRequest, sink: RequestSink, ids: list[int]
    ) -> str | Exception:
        """One beam request's text (or its error), computed on a thread that ends with it, so that
        its OpenMP worker pool does not outlive it (see the module docstring)."""
        result: list[str | Exception] = []

        def generate() -> None:
            try:
                # Asked between beam steps: a cancel ends the generate call at the next step.
                result.append(self.beam_search.generate(replace(request, cancelled=sink.is_cancelled), ids))
            except Exception as exc:
                result.append(exc)

        thread = threading.Thread(target=generate, name="blip2-beam-request", daemon=True)
        thread.start()
        thread.join()
        return result[0] if result else RuntimeError("beam search ended without a result")
