"""Decode speed of the in-flight engine against transformers ``generate``, at blip2-opt-2.7b size.

For users with a GPU: the language model of ``Salesforce/blip2-opt-2.7b`` (OPT 32 x 2560, 50272
tokens; random weights, fp16) is written as an export's engine folder and run in this
process by ``InflightEngine`` (the engine the served ``blip2_stream`` runs), then by transformers
``generate``, at 1, 8, 32 and 64 sequences decoding together, every one generating exactly
``--tokens`` new tokens after 32 image tokens + BOS (random query embeddings: a caption request).
Then a 6-turn chat about one image through the engine with the OPT prefix cache off and on
(``benchmarks/bench_chat.py``'s): prefill positions computed and latency per turn.

Printed: decode tokens/s and the time of one decode step for both, against the weight-bandwidth
floor, the least a step can take when it must read every weight once (weight bytes / the device's
copy bandwidth, measured here with torch: bytes read + written per second by a large copy).

    .venv/bin/python benchmarks/gpu_decode.py                          # cuda, opt-2.7b size, fp16
    .venv/bin/python benchmarks/gpu_decode.py --small --device cpu     # a small model on CPU (tests)
    .venv/bin/python benchmarks/gpu_decode.py --model bench --device cpu --levels 1,4,16,64  # make bench's OPT

Decode time is taken on the request that finished last: from its first text to its end, over
``tokens - 1`` steps, while the others decode beside it.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_model
from bench_chat import chat_report, run_chat
from bench_inprocess import FirstTokenClock
from bench_report import ROOT, commit_description, machine_description, markdown, number, utc_now
from bench_served import number_list

LEVELS = (1, 8, 32, 64)
HEADER = ("system", "active", "decode tok/s", "step ms", "step / floor", "TTFT p50 ms")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Level:
    """One system at one number of sequences decoding together."""

    system: str
    active: int
    step_s: float
    ttfts_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.active / self.step_s


# --------------------------------------------------------------------------------------------------
# Device


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def copy_bandwidth(device: str, megabytes: int, repeats: int = 10) -> float:
    """Bytes read + written per second by ``tensor.copy_`` of ``megabytes`` MiB on ``device``."""
    import torch

    size = megabytes * 2**20
    source = torch.ones(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    seconds = time.perf_counter() - started
    del source, target
    return 2 * size * repeats / seconds


def weight_bytes(model: Any) -> int:
    """Bytes of the model's parameters, tied ones once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique)


def _release(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# The engine


class TimingSink:
    """An engine sink that notes when a request's first text and its end arrive."""

    wants_pieces = True  # as a stream: the engine decodes pieces as they come

    def __init__(self, done: threading.Semaphore) -> None:
        self._done = done
        self.first_text_at: float | None = None
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def on_text(self, piece: str) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.perf_counter()

    def on_finish(self, text: str) -> None:
        self.finished_at = time.perf_counter()
        self._done.release()

    def on_error(self, exc: BaseException) -> None:
        self.error = exc
        self.finished_at = time.perf_counter()
        self._done.release()

    def on_cancelled(self) -> None:
        self.on_error(RuntimeError("cancelled"))

    def is_cancelled(self) -> bool:
        return False


def _query_embeds(count: int, spec: bench_model.LlmSpec, seed: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((spec.num_query_tokens, spec.width)) * 0.5).astype(np.float32)
        for _ in range(count)
    ]


def engine_round(engine: Any, embeds: list[Any], tokens: int, timeout_s: float) -> Level:
    """Submit one request per query embedding at once; time the one that finishes last."""
    from blip2_triton.runtime.contract import GenerationSettings
    from blip2_triton.runtime.llm.checkpoint import GenerationRequest

    settings = GenerationSettings(max_tokens=tokens, min_tokens=tokens)
    done = threading.Semaphore(0)
    sinks = [TimingSink(done) for _ in embeds]
    started = time.perf_counter()
    for query, sink in zip(embeds, sinks, strict=True):
        engine.submit(GenerationRequest(query, "", settings), sink)
    for _ in sinks:
        if not done.acquire(timeout=timeout_s):
            raise RuntimeError(f"the engine did not finish {len(sinks)} requests within {timeout_s:.0f}s")
    failed = next((s.error for s in sinks if s.error is not None), None)
    if failed is not None:
        raise RuntimeError(f"an engine request failed: {failed}")
    last = max(sinks, key=lambda s: s.finished_at or 0.0)
    if last.first_text_at is None or last.finished_at is None:
        raise RuntimeError("the engine finished a request without sending any text first (on_text)")
    decode_s = last.finished_at - last.first_text_at
    ttfts = [(s.first_text_at or s.finished_at or started) - started for s in sinks]
    return Level("engine", len(embeds), decode_s / max(tokens - 1, 1), ttfts)


def measure_engine(
    folder: Path, spec: bench_model.LlmSpec, device: str, tokens: int, levels: list[int], timeout_s: float
) -> list[Level]:
    from blip2_triton.runtime.llm.engine import EngineLimits, InflightEngine

    most = max(levels)
    limits = EngineLimits(
        max_active=most, max_sequence_tokens=spec.num_query_tokens + 1 + tokens + 8, max_queued=most
    )
    engine = InflightEngine.launch(folder, device, limits=limits)
    try:
        engine_round(engine, _query_embeds(most, spec, 1), 4, timeout_s)  # warm-up, untimed
        results = []
        for active in levels:
            results.append(engine_round(engine, _query_embeds(active, spec, active), tokens, timeout_s))
            _say(f"   engine, {active} active: {results[-1].tokens_per_s:.0f} tokens/s")
        return results
    finally:
        engine.close()
        del engine
        _release(device)


# --------------------------------------------------------------------------------------------------
# transformers generate


def generate_round(model: Any, settings: Any, embeds: list[Any], tokens: int, device: str) -> Level:
    """One ``generate`` over the batch, as the served OPT engine calls it (image tokens + BOS)."""
    import numpy as np
    import torch

    batch = len(embeds)
    bos = torch.full((batch, 1), settings.bos_token_id, dtype=torch.long, device=device)
    image_ids = torch.full((batch, settings.num_query_tokens), settings.image_token_id, device=device)
    embedding = model.get_input_embeddings()
    dtype = embedding.weight.dtype
    query = torch.from_numpy(np.stack(embeds)).to(device=device, dtype=dtype)
    inputs_embeds = torch.cat([query, embedding(bos)], dim=1)
    input_ids = torch.cat([image_ids, bos], dim=1)
    clock = FirstTokenClock()
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones_like(input_ids),
            input_ids=input_ids,
            do_sample=False,
            min_new_tokens=tokens,
            max_new_tokens=tokens,
            streamer=clock,
        )
    synchronize(device)
    finished = time.perf_counter()
    first = clock.first_token_at or started
    return Level("transformers generate", batch, (finished - first) / max(tokens - 1, 1), [first - started])


def measure_generate(
    folder: Path, spec: bench_model.LlmSpec, device: str, tokens: int, levels: list[int]
) -> tuple[list[Level], int]:
    """Every level with ``generate``; also the model's weight bytes."""
    import torch
    from transformers import AutoModelForCausalLM

    from blip2_triton.runtime.llm.checkpoint import LlmSettings

    settings = LlmSettings.load(folder)
    dtype = getattr(torch, bench_model.TORCH_DTYPES[settings.dtype])
    model = AutoModelForCausalLM.from_pretrained(folder / "language_model", dtype=dtype).to(device).eval()
    try:
        generate_round(model, settings, _query_embeds(max(levels), spec, 1), 4, device)  # warm-up
        results = []
        for active in levels:
            results.append(
                generate_round(model, settings, _query_embeds(active, spec, active), tokens, device)
            )
            _say(f"   transformers generate, batch {active}: {results[-1].tokens_per_s:.0f} tokens/s")
        return results, weight_bytes(model)
    finally:
        del model
        _release(device)


# --------------------------------------------------------------------------------------------------
# Report


def report(levels: list[Level], floor_s: float, header_lines: list[str]) -> str:
    cells = []
    for level in sorted(levels, key=lambda lv: (lv.system != "engine", lv.active)):
        cells.append(
            (
                level.system,
                str(level.active),
                number(level.tokens_per_s),
                number(level.step_s * 1000),
                f"{level.step_s / floor_s:.2f}x",
                number(statistics.median(level.ttfts_s) * 1000) if level.ttfts_s else "-",
            )
        )
    ratios = []
    engine = {lv.active: lv for lv in levels if lv.system == "engine"}
    for level in levels:
        if level.system != "engine" and level.active in engine:
            ratios.append(f"{level.active}: {engine[level.active].tokens_per_s / level.tokens_per_s:.2f}x")
    lines = [*header_lines, "", markdown(HEADER, cells), ""]
    if ratios:
        lines.append(
            f"Engine decode tokens/s vs transformers generate, by active sequences: {', '.join(ratios)}."
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> str:
    spec = bench_model.SMALL_LLM if args.small else bench_model.LLM_MODELS[args.model]
    dtype = args.dtype or ("fp32" if args.small or args.device == "cpu" else "fp16")
    tokens = args.tokens or (16 if args.small else 128)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gpu-decode-", dir=args.work_dir) as tmp:
        t0 = time.perf_counter()
        _say(f"== writing {spec.describe()} ({dtype}, random weights)")
        folder = bench_model.build_llm_folder(Path(tmp) / "blip2_stream", spec, dtype, args.device)
        _say(f"   written in {time.perf_counter() - t0:.0f}s; measuring the copy bandwidth")
        bandwidth = copy_bandwidth(args.device, 1024 if args.device.startswith("cuda") else 256)
        engine = measure_engine(folder, spec, args.device, tokens, args.levels, args.timeout)
        generate, weights = measure_generate(folder, spec, args.device, tokens, args.levels)
        chat = None
        if args.chat_turns_tokens:
            _say("== a 6-turn chat through the engine, prefix cache off, then on")
            without = run_chat(folder, 0, args.chat_turns_tokens, args.device, repeats=2)
            with_cache = run_chat(folder, args.chat_cache_mb, args.chat_turns_tokens, args.device, repeats=2)
            chat, _ = chat_report(without, with_cache)
    floor_s = weights / bandwidth
    header = [
        f"**{utc_now()}**, {device_description(args.device)}, commit {commit_description()}; load average "
        f"{' / '.join(f'{x:.2f}' for x in load_before)} at the start.",
        "",
        f"Model: {spec.describe()}, {dtype}, random weights; {tokens} new tokens per sequence (min = max).",
        f"weight-bandwidth floor: {floor_s * 1000:.3f} ms per step ({weights / 1e6:,.0f} MB of weights / "
        f"{bandwidth / 1e9:,.1f} GB/s copy bandwidth, bytes read + written)",
    ]
    text = report(engine + generate, floor_s, header)
    if chat is not None:
        text += (
            f"\nA 6-turn chat about one image through the engine (prefix cache off / on, "
            f"{args.chat_cache_mb} MB; {args.chat_turns_tokens} new tokens per turn, best of 2):\n\n{chat}\n"
        )
    return text


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{machine_description()} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument(
        "--model",
        choices=sorted(bench_model.LLM_MODELS),
        default="opt-2.7b",
        help="the OPT's size (default opt-2.7b; bench: make bench's 8 x 512, for CPU)",
    )
    parser.add_argument("--small", action="store_true", help="the small OPT (tests): --model small")
    parser.add_argument("--dtype", choices=sorted(bench_model.TORCH_DTYPES), help="default fp16 on GPU")
    parser.add_argument("--tokens", type=int, help="new tokens per sequence (default 128; --small 16)")
    parser.add_argument(
        "--levels",
        type=number_list("levels", int, "1,8,32,64", ">= 1", lambda v: v >= 1),
        default=list(LEVELS),
        help="sequences decoding together (default 1,8,32,64)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per level at most")
    parser.add_argument(
        "--chat-turns-tokens",
        type=int,
        default=16,
        metavar="N",
        help="then a 6-turn chat with the prefix cache off and on, N new tokens per turn (0: skip; default 16)",
    )
    parser.add_argument(
        "--chat-cache-mb", type=int, default=512, help="prefix cache size for the chat (default 512)"
    )
    parser.add_argument("--work-dir", type=Path, help="where the model folder is written (then deleted)")
    parser.add_argument("--output", type=Path, help="also write the report here (Markdown)")
    args = parser.parse_args(argv)
    if args.tokens is not None and args.tokens < 2:
        parser.error("--tokens must be at least 2 (a decode step follows the first token)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: pass --device cpu (with --small for a quick run)")
    work_dir = args.work_dir or ROOT / ".work" / "bench"
    work_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir = work_dir
    text = run(args)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
