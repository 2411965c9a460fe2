"""Where a lone request spends its time: transformers in process (A) against the served pipeline.

One image at a time, each new to the server, exactly ``--tokens`` new tokens (min = max), on the
bench-size BLIP-2 OPT of ``make bench`` (random weights):

- A, the plain loop: ``Blip2Processor`` then ``generate`` (no streamer: its latency is the figure
  compared); a second pass with a streamer gives A's time to first token, and the processor and
  vision stages are timed on their own.
- Served: unary ``blip2`` (the figure compared) and streaming ``blip2_stream`` from the SDK, with the
  server logging each request's stage ends (``BLIP2_TRITON_TIMELINE=1``): accepted by the engine
  model, image preprocessed, vision done, first token, generated, response sent. What the client
  saw beyond "sent" is gRPC, Triton and (unary) the ``blip2`` relay.

Prints the per-stage table (medians) with the ratio of served p50 to A's p50.

    .venv/bin/python benchmarks/bench_timeline.py [--requests 12] [--tokens 32] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_model
from bench_report import ROOT, Context
from bench_served import export, export_options, serving
from traffic_plan import encoded_image

TIMELINE = "timeline "


def fresh_images(count: int, seed: int) -> list[bytes]:
    """``count`` distinct JPEGs (bench-traffic's): none of them is in any cache."""
    return [encoded_image(seed * 10_000 + i) for i in range(count)]


def _median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def in_process(checkpoint: Path, images: list[bytes], tokens: int) -> dict[str, float]:
    """A's stages (medians, ms): processor, vision, first token, whole request."""
    import torch
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, TextStreamer

    processor = Blip2Processor.from_pretrained(checkpoint)
    model = Blip2ForConditionalGeneration.from_pretrained(checkpoint).eval()
    settings = {"do_sample": False, "num_beams": 1, "min_new_tokens": tokens, "max_new_tokens": tokens}

    class FirstToken(TextStreamer):
        def __init__(self) -> None:
            self.calls, self.at = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2 and self.at is None:  # the first put is the prompt
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    def run(data: bytes, streamer=None) -> tuple[float, float, float | None]:
        t0 = time.perf_counter()
        inputs = processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
        t1 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, **settings, streamer=streamer)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0, None if streamer is None else streamer.at - t0

    run(images[0])  # warm-up
    processed, total, first = [], [], []
    for data in images:
        p, t, _ = run(data)
        processed.append(p)
        total.append(t)
    for data in images:
        _, _, f = run(data, FirstToken())
        first.append(f)
    vision = []
    with torch.inference_mode():
        for data in images:
            inputs = processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
            t0 = time.perf_counter()
            model.get_image_features(**inputs)
            vision.append(time.perf_counter() - t0)
    return {
        "preprocessed": _median_ms(processed),
        "vision": _median_ms(vision),
        "first_token": _median_ms(first),
        "total": _median_ms(total),
    }


def served(repository: Path, images: list[bytes], tokens: int, work: Path) -> dict[str, dict[str, float]]:
    """Per mode (unary, stream): the client's latency and the server's stage ends (medians, ms)."""
    from blip2_triton.client import Blip2Client

    os.environ["BLIP2_TRITON_TIMELINE"] = "1"
    log = work / "tritonserver.log"
    results: dict[str, dict[str, float]] = {}
    with serving(repository, log) as server, Blip2Client(server.grpc_url) as client:
        warm = fresh_images(2, seed=99)
        client.caption(warm[0], min_tokens=tokens, max_tokens=tokens)
        list(client.stream_caption(warm[1], min_tokens=tokens, max_tokens=tokens))
        for mode in ("unary", "stream"):
            seen_before = _timelines(log)
            latencies, firsts = [], []
            for data in images:
                t0 = time.perf_counter()
                if mode == "unary":
                    client.caption(data, min_tokens=tokens, max_tokens=tokens)
                else:
                    first = None
                    for piece in client.stream_caption(data, min_tokens=tokens, max_tokens=tokens):
                        if first is None and piece:
                            first = time.perf_counter() - t0
                    firsts.append(first or 0.0)
                latencies.append(time.perf_counter() - t0)
            time.sleep(0.5)  # the last log lines
            lines = _timelines(log)[len(seen_before) :]
            if not lines:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"no timeline lines in the server log ({mode}); its end:\n{tail}")
            stages: dict[str, list[float]] = {}
            for line in lines:
                for name, at in line.items():
                    stages.setdefault(name, []).append(at / 1000)
            figures = {name: _median_ms(values) for name, values in stages.items()}
            figures["client_total"] = _median_ms(latencies)
            if firsts:
                figures["client_first_token"] = _median_ms(firsts)
            results[mode] = figures
    return results


def _timelines(log: Path) -> list[dict[str, float]]:
    """The stage ends of every ``timeline name=ms ...`` line the engine model logged."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        at = line.find(TIMELINE)
        if at >= 0:
            pairs = re.findall(r"(\w+)=([\d.]+)", line[at + len(TIMELINE) :])
            if pairs:
                found.append({name: float(ms) for name, ms in pairs})
    return found


def table(a: dict[str, float], s: dict[str, dict[str, float]], tokens: int) -> str:
    """The per-stage Markdown table: each stage's own duration (medians of stage ends, differenced)."""
    unary, stream = s["unary"], s["stream"]

    def span(figures: dict[str, float], end: str, start: str | None) -> str:
        if end not in figures or (start is not None and start not in figures):
            return "-"
        return f"{figures[end] - (figures[start] if start else 0.0):.1f}"

    decode_a = a["total"] - a["first_token"]
    rows = [
        (
            "front: parse + image decode + preprocess",
            f"{a['preprocessed']:.1f}",
            span(unary, "preprocessed", None),
            span(stream, "preprocessed", None),
        ),
        (
            "vision (ViT + Q-Former + projection)",
            f"{a['vision']:.1f}",
            span(unary, "encoded", "preprocessed"),
            span(stream, "encoded", "preprocessed"),
        ),
        (
            "queue + prefill + first token",
            f"{a['first_token'] - a['preprocessed'] - a['vision']:.1f}",
            span(unary, "first_token", "encoded"),
            span(stream, "first_token", "encoded"),
        ),
        (
            f"decode, {tokens - 1} more tokens",
            f"{decode_a:.1f}",
            span(unary, "generated", "first_token"),
            span(stream, "generated", "first_token"),
        ),
        ("response sent", "-", span(unary, "sent", "generated"), span(stream, "sent", "generated")),
        (
            "outside the engine model (gRPC, Triton, relay)",
            "-",
            f"{unary['client_total'] - unary.get('sent', 0):.1f}",
            f"{stream['client_total'] - stream.get('sent', 0):.1f}",
        ),
        (
            "**whole request (client p50)**",
            f"**{a['total']:.1f}**",
            f"**{unary['client_total']:.1f}**",
            f"**{stream['client_total']:.1f}**",
        ),
        ("time to first token", f"{a['first_token']:.1f}", "-", f"{stream.get('client_first_token', 0):.1f}"),
    ]
    lines = [
        "| stage (median ms) | A in process | served blip2 (unary) | served blip2_stream |",
        "|---|---|---|---|",
        *(f"| {name} | {x} | {y} | {z} |" for name, x, y, z in rows),
    ]
    ratio = unary["client_total"] / a["total"]
    verdict = "met" if ratio <= 1.10 else "not met"
    lines.append("")
    lines.append(f"Served unary p50 / A's p50: **{ratio:.2f}x** (target <= 1.10x): **{verdict}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="lone requests per system (default 12)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    parser.add_argument("--quick", action="store_true", help="the tiny model: a smoke test")
    parser.add_argument("--output", type=Path, default=ROOT / ".work" / "bench" / "timeline.md")
    args = parser.parse_args(argv)
    bench_model.quiet_libraries()
    spec = bench_model.QUICK if args.quick else bench_model.BENCH
    context = Context.now(
        spec.describe(), f"{args.requests} lone requests, exactly {args.tokens} new tokens, each image new"
    )
    (ROOT / ".work" / "bench").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="timeline-", dir=ROOT / ".work" / "bench") as tmp:
        work = Path(tmp)
        checkpoint = bench_model.build_checkpoint(work / "checkpoint", spec)
        images = fresh_images(args.requests, seed=7)
        print("== A in process", file=sys.stderr, flush=True)
        a = in_process(checkpoint, images, args.tokens)
        repository = export(checkpoint, work / "repository", export_options(16, {}), work / "export.log")
        print("== served", file=sys.stderr, flush=True)
        s = served(repository, fresh_images(args.requests, seed=11), args.tokens, work)
    context.load_after = os.getloadavg()
    text = (
        f"{context.header()}\n\nModel: {context.model}. {context.generation}.\n\n{table(a, s, args.tokens)}\n"
    )
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
