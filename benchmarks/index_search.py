"""Search latency and memory of ImageIndex on 100,000 images, against baselines measured in the same run.

Synthetic L2-normalised embeddings (Q=32, D=256 as the real BLIP-2 retrieval checkpoints), no
server: this measures the index alone (a real search adds one blip2_text_embed request).

- ``ImageIndex`` (what the SDK does): int16 fixed-point storage, chunked scoring.
- ``float16 chunked``: the same chunked scoring over float16 storage (same bytes, slower cast).
- ``float32 naive`` (the baseline): the whole float32 matrix in memory, one matrix-vector product,
  max over queries, full argsort.

Run: ``.venv/bin/python benchmarks/index_search.py [--images 100000] [--queries 30]``; prints a
table and writes ``.work/figures/index_search.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blip2_triton.client.index import ImageIndex, quantize, top_indices  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def synthetic_chunks(images: int, queries: int, dim: int, seed: int):
    """L2-normalised float32 embeddings, 4096 images at a time (the same ones for the same seed)."""
    rng = np.random.default_rng(seed)
    for start in range(0, images, 4096):
        chunk = rng.standard_normal((min(4096, images - start), queries, dim), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=-1, keepdims=True)
        yield start, chunk


def synthetic(images: int, queries: int, dim: int, seed: int, dtype) -> np.ndarray:
    """The whole synthetic index as ``dtype`` (int16: fixed point), built chunk by chunk."""
    out = np.empty((images, queries, dim), dtype=dtype)
    for start, chunk in synthetic_chunks(images, queries, dim, seed):
        out[start : start + len(chunk)] = quantize(chunk) if dtype == np.int16 else chunk
    return out


def timed(search, texts: np.ndarray) -> tuple[list[float], list]:
    search(texts[0])  # warm-up
    latencies, results = [], []
    for text in texts:
        started = time.perf_counter()
        results.append(search(text))
        latencies.append(time.perf_counter() - started)
    return latencies, results


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "mean_ms": 1000 * statistics.fmean(ordered),
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=30, help="searches timed per method")
    parser.add_argument("--fp16-queries", type=int, default=5, help="searches timed for float16 (slow)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=256)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(1)
    texts = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    shape = (args.images, args.query_tokens, args.dim)
    print(
        f"index: {args.images:,} images x {args.query_tokens} queries x {args.dim} dims; "
        f"top-{args.top_k}; {args.queries} searches per method",
        flush=True,
    )

    start_rss = rss_bytes()
    stored = synthetic(*shape, seed=0, dtype=np.int16)
    paths = [f"images/{i:06d}.jpg" for i in range(args.images)]
    index = ImageIndex(stored, paths)
    gc.collect()
    index_rss = rss_bytes() - start_rss
    can_reset = reset_peak()
    before = rss_bytes()
    ours, our_hits = timed(lambda t: index.search_embedding(t, args.top_k, chunk_size=args.chunk_size), texts)
    ours_peak = peak_rss_bytes() - before if can_reset else None

    half = synthetic(*shape, seed=0, dtype=np.float16)

    def half_search(text, half=half):
        scores = np.empty(args.images, dtype=np.float32)
        buffer = np.empty((args.chunk_size, *shape[1:]), dtype=np.float32)
        for s in range(0, args.images, args.chunk_size):
            part = half[s : s + args.chunk_size]
            chunk = buffer[: len(part)]
            np.copyto(chunk, part)
            scores[s : s + len(part)] = (
                (chunk.reshape(-1, args.dim) @ text).reshape(len(part), -1).max(axis=1)
            )
        return top_indices(scores, args.top_k)

    fp16, _ = timed(half_search, texts[: args.fp16_queries])
    del half, half_search
    gc.collect()

    before = rss_bytes()
    full = synthetic(*shape, seed=0, dtype=np.float32)  # the original values, not the int16 ones
    naive_rss = rss_bytes() - before
    flat = full.reshape(-1, args.dim)

    def naive_search(text):
        scores = (flat @ text).reshape(args.images, -1).max(axis=1)
        return np.argsort(-scores, kind="stable")[: args.top_k], scores

    can_reset = reset_peak()
    before = rss_bytes()
    naive, naive_results = timed(naive_search, texts)
    naive_peak = peak_rss_bytes() - before if can_reset else None

    # Agreement: same top-k sets, score differences from the int16 storage.
    overlap = statistics.fmean(
        len({h.index for h in hits} & set(order.tolist())) / args.top_k
        for hits, (order, _) in zip(our_hits, naive_results, strict=True)
    )
    max_diff = max(
        abs(h.itc - float(scores[h.index]))
        for hits, (_, scores) in zip(our_hits, naive_results, strict=True)
        for h in hits
    )

    ours_s, fp16_s, naive_s = summary(ours), summary(fp16), summary(naive)
    figures = {
        "images": args.images,
        "query_tokens": args.query_tokens,
        "dim": args.dim,
        "top_k": args.top_k,
        "chunk_size": args.chunk_size,
        "searches": args.queries,
        "image_index": {
            **ours_s,
            "index_bytes": index.nbytes,
            "rss_bytes": index_rss,
            "search_peak_extra_bytes": ours_peak,
        },
        "float16_chunked": {**fp16_s, "index_bytes": int(np.prod(shape)) * 2, "searches": args.fp16_queries},
        "float32_naive_baseline": {
            **naive_s,
            "index_bytes": full.nbytes,
            "rss_bytes": naive_rss,
            "search_peak_extra_bytes": naive_peak,
        },
        "ratios_vs_baseline": {
            "latency_mean": ours_s["mean_ms"] / naive_s["mean_ms"],
            "latency_p95": ours_s["p95_ms"] / naive_s["p95_ms"],
            "index_bytes": index.nbytes / full.nbytes,
            "rss": index_rss / naive_rss,
            "float16_latency_mean": fp16_s["mean_ms"] / naive_s["mean_ms"],
        },
        "top_k_overlap_with_float32": overlap,
        "max_abs_score_difference_vs_float32": max_diff,
        "cpu_threads": len(__import__("os").sched_getaffinity(0)),
    }

    def row(name, stats, nbytes, rss):
        rss_text = "-" if rss is None else f"{rss / 1e6:8.0f} MB"
        print(
            f"{name:<22} {stats['mean_ms']:8.1f} {stats['p50_ms']:8.1f} {stats['p95_ms']:8.1f}"
            f"   {nbytes / 1e6:8.0f} MB   {rss_text}"
        )

    print(f"\n{'per query (ms)':<22} {'mean':>8} {'p50':>8} {'p95':>8}   {'index bytes':>11}   {'RSS':>11}")
    row("ImageIndex (int16)", ours_s, index.nbytes, index_rss)
    row("float16 chunked", fp16_s, figures["float16_chunked"]["index_bytes"], None)
    row("float32 naive (base)", naive_s, full.nbytes, naive_rss)
    ratios = figures["ratios_vs_baseline"]
    print(
        f"\nImageIndex / baseline: latency mean x{ratios['latency_mean']:.2f}, p95 x{ratios['latency_p95']:.2f}, "
        f"index bytes x{ratios['index_bytes']:.2f}, RSS x{ratios['rss']:.2f}; float16 chunked latency "
        f"x{ratios['float16_latency_mean']:.1f}"
    )
    if ours_peak is not None:
        print(
            f"extra memory while searching: ImageIndex {ours_peak / 1e6:.1f} MB, baseline {naive_peak / 1e6:.1f} MB"
        )
    print(f"top-{args.top_k} overlap with float32: {overlap:.3f}; max abs score difference {max_diff:.2e}")
    out = ROOT / ".work" / "figures" / "index_search.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
