"""fp32 vs ``--quantize int8`` (and ``--dtype bf16``) on the trained scene captioner, in one run, same scenes.

For each variant: export (the int8 one with ``--quantize int8``), serve with a real tritonserver,
send the same held-out scenes over gRPC (captions and one question of each kind per scene), then
time the exported steps in-process. Reports accuracy, agreement with fp32 (texts and tokens),
LLM weight memory, vision graph size, vision and LLM step latency, end-to-end images/s.

Run: ``.venv/bin/python -P benchmarks/quantize_scenes.py [--scenes 200]``; prints a Markdown table and
writes ``.work/figures/quantize_scenes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("none", "int8")  # fp32, --quantize int8; "bf16" (--dtype bf16) on request
OPTIONS = {"none": {}, "int8": {"quantize": "int8"}, "bf16": {"dtype": "bf16"}}
ROUNDS = 3


def _best_ms(call, repeats: int) -> float:
    """The fastest of ``repeats`` calls after a warm-up, in ms (the least disturbed by other load)."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def time_vision(onnx_path: Path, image_size: int, repeats: int = 30) -> dict[str, float]:
    """Best ms of the vision graph (onnxruntime, CPU) at batch 1 and 8."""
    from blip2_triton.runtime.vision.onnx_graph import OnnxGraph

    graph = OnnxGraph(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    result = {}
    for batch in (1, 8):
        pixels = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
        result[f"batch{batch}_ms"] = _best_ms(
            lambda p=pixels: graph(["query_embeds"], pixel_values=p), repeats
        )
    return result


def time_llm(llm_folder: Path, method: str, num_query_tokens: int, repeats: int = 10) -> dict[str, float]:
    """LLM weight bytes and best ms to generate 12 tokens after image tokens + BOS, batch 1 and 8."""
    import torch
    from transformers import AutoModelForCausalLM

    from blip2_triton.runtime.llm.quantization import quantize_language_model, weight_bytes

    dtype = torch.bfloat16 if method == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(llm_folder / "language_model", dtype=dtype).eval()
    model = quantize_language_model(model, "int8" if method == "int8" else "none")
    hidden = model.get_input_embeddings().embedding_dim
    result: dict[str, float] = {"weight_bytes": weight_bytes(model)}
    for batch in (1, 8):
        embeds = torch.randn(batch, num_query_tokens + 1, hidden, dtype=dtype)

        def run(e=embeds) -> None:
            with torch.inference_mode():
                model.generate(
                    inputs_embeds=e,
                    attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
                    max_new_tokens=12,
                    min_new_tokens=12,
                    do_sample=False,
                )

        result[f"batch{batch}_ms"] = _best_ms(run, repeats)
    return result


def token_agreement(reference: list[str], other: list[str], tokenizer) -> tuple[float, float]:
    """(share of texts equal, share of reference tokens equal at the same position)."""
    same_text = float(np.mean([a == b for a, b in zip(reference, other, strict=True)]))
    matched = total = 0
    for a, b in zip(reference, other, strict=True):
        ta, tb = (
            tokenizer(a, add_special_tokens=False)["input_ids"],
            tokenizer(b, add_special_tokens=False)["input_ids"],
        )
        total += max(len(ta), len(tb))
        matched += sum(x == y for x, y in zip(ta, tb, strict=False))
    return same_text, matched / max(1, total)


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer

    from blip2_triton.export.options import ExportOptions
    from blip2_triton.scenes.checkpoints import captioner_checkpoint, image_size_of
    from blip2_triton.scenes.eval_command import served
    from blip2_triton.scenes.served_eval import evaluate_generation, heldout_scenes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--work-dir", type=Path, default=ROOT / ".work" / "quantize-scenes")
    parser.add_argument("--output", type=Path, default=ROOT / ".work" / "figures" / "quantize_scenes.json")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of none, int8, bf16; none first")
    args = parser.parse_args(argv)
    variants = tuple(args.variants.split(","))
    torch.set_num_threads(2)
    checkpoint = args.checkpoint or captioner_checkpoint()
    size = image_size_of(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    scenes = heldout_scenes(args.scenes)
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
        "scenes": args.scenes,
        "variants": {},
    }
    for method in variants:
        work = args.work_dir / method
        print(f"== {method}: export, serve, {args.scenes} held-out scenes", flush=True)
        with served(checkpoint, work, ExportOptions(**OPTIONS[method])) as client:
            generation = evaluate_generation(client, scenes, size)
        report["variants"][method] = {"generation": generation}
    for _ in range(ROUNDS):  # the variants take turns, so a burst of outside load hits both alike
        for method in variants:
            repository = args.work_dir / method / "model_repository"
            (onnx_path,) = repository.glob("blip2_vision/1/model.onnx")
            vision = {"graph_bytes": onnx_path.stat().st_size, **time_vision(onnx_path, size)}
            llm = time_llm(repository / "blip2_stream" / "1", method, config["num_query_tokens"])
            variant = report["variants"][method]
            for key, fresh in (("vision", vision), ("llm", llm)):
                kept = variant.setdefault(key, fresh)
                for name, value in fresh.items():
                    kept[name] = min(kept[name], value)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = {
        m: [c[2] for c in v["generation"]["predictions"]["captions"]]
        + [a[3] for a in v["generation"]["predictions"]["answers"]]
        for m, v in report["variants"].items()
    }
    report["agreement"] = {
        m: dict(zip(("texts", "tokens"), token_agreement(texts["none"], texts[m], tokenizer), strict=True))
        for m in variants
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"figures: {args.output}")
    return 0


def format_table(report: dict) -> str:
    names = list(report["variants"])
    variants = [report["variants"][m] for m in names]
    fp32 = variants[0]

    def row(label: str, get, fmt: str) -> str:
        return f"| {label} | " + " | ".join(fmt.format(get(v)) for v in variants) + " |"

    kinds = [k for k in fp32["generation"]["vqa"] if k != "all"]
    lines = [
        f"{report['date']}, {report['machine']}, {report['scenes']} held-out scenes",
        "",
        "| measure | " + " | ".join({"none": "fp32"}.get(m, m) for m in names) + " |",
        "|---" * (len(names) + 1) + "|",
        row("VQA accuracy, all kinds", lambda v: v["generation"]["vqa"]["all"]["accuracy"], "{:.1%}"),
        *[
            row(f"VQA accuracy, {k}", lambda v, k=k: v["generation"]["vqa"][k]["accuracy"], "{:.1%}")
            for k in kinds
        ],
        row("caption exact match", lambda v: v["generation"]["caption_exact"], "{:.1%}"),
        row("caption token F1", lambda v: v["generation"]["caption_f1"], "{:.3f}"),
        "| texts equal to fp32's | "
        + " | ".join(f"{report['agreement'][m]['texts']:.1%}" for m in names)
        + " |",
        "| tokens equal to fp32's | "
        + " | ".join(f"{report['agreement'][m]['tokens']:.1%}" for m in names)
        + " |",
        row("LLM weights in memory", lambda v: v["llm"]["weight_bytes"] / 2**20, "{:.2f} MiB"),
        row("vision graph (model.onnx)", lambda v: v["vision"]["graph_bytes"] / 2**20, "{:.2f} MiB"),
        row(
            "vision step, batch 1 / 8",
            lambda v: (v["vision"]["batch1_ms"], v["vision"]["batch8_ms"]),
            "{0[0]:.2f} / {0[1]:.2f} ms",
        ),
        row(
            "LLM, 12 tokens, batch 1 / 8",
            lambda v: (v["llm"]["batch1_ms"], v["llm"]["batch8_ms"]),
            "{0[0]:.1f} / {0[1]:.1f} ms",
        ),
        row("served captions per second", lambda v: v["generation"]["captions_per_second"], "{:.1f}"),
        row("served answers per second", lambda v: v["generation"]["answers_per_second"], "{:.1f}"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
