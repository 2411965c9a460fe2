"""A 6-turn visual chat through the in-flight engine, with the OPT prefix cache on and off.

Each turn's prompt is the whole conversation so far (the SDK's chat template) about one image, so
without the cache every turn prefills the image tokens and the whole history again. Printed per
turn: prompt positions, positions the prefill computed (the rest came from the cache), and the
turn's latency (submit to final text), for both runs; every answer is exactly ``--tokens`` tokens
(min = max, so random weights do not matter) and the texts of both runs must be equal.

    .venv/bin/python benchmarks/bench_chat.py                       # CPU, an 8 x 512 OPT (make bench's size)
    .venv/bin/python benchmarks/bench_chat.py --model opt-2.7b --device cuda --dtype fp16
    .venv/bin/python benchmarks/bench_chat.py --small               # a tiny model (tests)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench_model
import numpy as np
from bench_report import commit_description, machine_description, markdown, utc_now

QUESTIONS = (
    "what is in the picture?",
    "what colour is it?",
    "where is it?",
    "how many are there?",
    "is it large or small?",
    "what is behind it?",
)
MODELS = bench_model.LLM_MODELS


class _Sink:
    wants_pieces = False

    def __init__(self) -> None:
        self.text: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def on_text(self, piece: str) -> None:
        pass

    def on_finish(self, text: str) -> None:
        self.text = text
        self.done.set()

    def on_error(self, exc: BaseException) -> None:
        self.error = exc
        self.done.set()

    def on_cancelled(self) -> None:
        self.done.set()

    def is_cancelled(self) -> bool:
        return False


def run_chat(folder: Path, cache_mb: int, tokens: int, device: str, repeats: int) -> list[dict]:
    """One chat per repeat on a fresh engine; per turn: positions, computed, best latency (ms), text."""
    from blip2_triton.client.prompts import chat_prompt
    from blip2_triton.runtime.llm.checkpoint import GenerationRequest
    from blip2_triton.runtime.llm.engine import EngineLimits, InflightEngine
    from blip2_triton.runtime.settings import parse_settings

    settings = parse_settings({"max_tokens": np.int32(tokens), "min_tokens": np.int32(tokens)})
    turns: list[dict] = []
    for repeat in range(repeats):
        engine = InflightEngine.launch(
            folder,
            device=device,
            limits=EngineLimits(max_active=4, max_sequence_tokens=1024, prefix_cache_bytes=cache_mb * 2**20),
        )
        query = np.random.RandomState(repeat).standard_normal(
            (engine.settings.num_query_tokens, engine.hidden)
        )
        query = query.astype(np.float32)
        history: list[tuple[str, str]] = []
        try:
            for turn, question in enumerate(QUESTIONS):
                prompt = chat_prompt("opt", history, question)
                positions = len(engine.checker.check(prompt, settings))
                saved_before = engine.stats()["prefix_tokens_saved"]
                sink = _Sink()
                started = time.perf_counter()
                engine.submit(GenerationRequest(query, prompt, settings), sink)
                if not sink.done.wait(600) or sink.error is not None:
                    raise RuntimeError(f"turn {turn + 1} failed: {sink.error}")
                latency_ms = (time.perf_counter() - started) * 1000
                saved = engine.stats()["prefix_tokens_saved"] - saved_before
                history.append((question, sink.text or ""))
                if repeat == 0:
                    turns.append(
                        {"positions": positions, "computed": positions - saved, "ms": [], "text": sink.text}
                    )
                turns[turn]["ms"].append(latency_ms)
        finally:
            engine.close(drain_timeout_s=5)
    return turns


def chat_report(without: list[dict], with_cache: list[dict]) -> tuple[str, bool]:
    """The per-turn table of two ``run_chat`` results (cache off, on), its summary lines, and
    whether the texts of both runs are equal."""
    rows = []
    for turn, (off, on) in enumerate(zip(without, with_cache, strict=True), start=1):
        off_ms, on_ms = min(off["ms"]), min(on["ms"])
        rows.append(
            (
                str(turn),
                str(off["positions"]),
                str(off["computed"]),
                str(on["computed"]),
                f"{off_ms:.1f}",
                f"{on_ms:.1f}",
                f"{off_ms / on_ms:.2f}x",
            )
        )
    same = all(off["text"] == on["text"] for off, on in zip(without, with_cache, strict=True))
    header = (
        "turn",
        "prompt positions",
        "computed (off)",
        "computed (on)",
        "latency off ms",
        "latency on ms",
        "off / on",
    )
    total_off = sum(min(t["ms"]) for t in without)
    total_on = sum(min(t["ms"]) for t in with_cache)
    median_off = statistics.median(min(t["ms"]) for t in without)
    median_on = statistics.median(min(t["ms"]) for t in with_cache)
    lines = [
        markdown(header, rows),
        f"whole chat: {total_off:.0f} ms off, {total_on:.0f} ms on ({total_off / total_on:.2f}x); "
        f"median turn {median_off:.1f} / {median_on:.1f} ms",
        f"texts equal with and without the cache: {same}",
    ]
    return "\n".join(lines), same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="bench")
    parser.add_argument("--small", action="store_true", help="the small model (tests)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--tokens", type=int, default=12, help="new tokens per answer (min = max)")
    parser.add_argument("--repeats", type=int, default=3, help="chats per setting; the best latency counts")
    parser.add_argument("--cache-mb", type=int, default=128)
    args = parser.parse_args(argv)
    spec = MODELS["small" if args.small else args.model]
    with tempfile.TemporaryDirectory() as tmp:
        folder = bench_model.build_llm_folder(Path(tmp) / "blip2_stream", spec, args.dtype, args.device)
        without = run_chat(folder, 0, args.tokens, args.device, args.repeats)
        with_cache = run_chat(folder, args.cache_mb, args.tokens, args.device, args.repeats)
    text, same = chat_report(without, with_cache)
    print(
        f"# 6-turn chat, prefix cache off / on ({utc_now()}, {machine_description()}, {commit_description()})"
    )
    print(
        f"model: {spec.describe()}, {args.dtype} on {args.device}; {args.tokens} new tokens per turn, best of {args.repeats}"
    )
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
