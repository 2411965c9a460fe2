"""Train the scene models from scratch: ``make train-scenes`` (20-27 minutes on 2 CPU cores).

1. ``Blip2ForConditionalGeneration`` (OPT), end to end (ViT, Q-Former, projection, OPT) on captions
   (empty prompt) and questions (``Question: {q} Answer:``, the SDK's OPT template).
2. ``Blip2ForImageTextRetrieval`` from the same recipe over the captioner's frozen ViT (ITC + ITM).

Reproducible from ``--seed`` (same machine, same thread count). Writes ``scenes-opt/`` and
``scenes-itm/`` (``save_pretrained`` layout, safetensors), ``training.json`` (settings, times,
losses) and ``training_loss.png``.

    python -m blip2_triton_train.train [--output DIR] [--set caption_steps=3000 ...]

The default output is the folder the serving package ships them from
(``blip2_triton/fixtures/checkpoints``; the checkout's own with an editable install).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from blip2_triton.scenes.checkpoints import checkpoints_dir

from .captioner_training import train_captioner
from .data import SceneSet
from .models import SceneModelSpec
from .plot import plot_losses
from .retriever_training import train_retriever
from .training import TrainConfig, log

DEFAULT_OUTPUT = checkpoints_dir()


def _overridden(config, overrides: list[str]):
    """``config`` (a dataclass) with ``NAME=VALUE`` overrides applied."""
    names = {f.name for f in fields(config)}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in names:
            raise SystemExit(f"unknown setting {name!r}; known: {', '.join(sorted(names))}")
        config = replace(config, **{name: _parsed(value, type(getattr(config, name)))})
    return config


def _parsed(value: str, kind: type):
    """``value`` as ``kind``; a bool takes true/false/1/0 (``bool("0")`` would be True)."""
    if kind is not bool:
        return kind(value)
    if value.lower() not in ("true", "false", "1", "0"):
        raise SystemExit(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def _mean_tail(values: list[float], count: int = 100) -> float:
    tail = values[-count:]
    return round(sum(tail) / len(tail), 4)


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="folder for scenes-opt/ and scenes-itm/"
    )
    parser.add_argument("--cache", type=Path, help="an .npy file to keep the rendered training scenes in")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="change a TrainConfig field"
    )
    parser.add_argument(
        "--spec", action="append", default=[], metavar="NAME=VALUE", help="change a model size"
    )
    parser.add_argument("--eval-every", type=int, default=0, help="captioner steps between held-out checks")
    parser.add_argument("--skip-retriever", action="store_true", help="train the captioner only")
    args = parser.parse_args(argv)
    config, spec = _overridden(TrainConfig(), args.set), _overridden(SceneModelSpec(), args.spec)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    log(f"rendering {config.train_scenes} training scenes at {spec.image_size}px")
    data = SceneSet.render(range(config.train_scenes), spec.image_size, args.cache)
    rendered = time.monotonic()
    captioner, processor, caption_losses = train_captioner(spec, config, data, args.eval_every)
    captioned = time.monotonic()
    args.output.mkdir(parents=True, exist_ok=True)
    captioner.save_pretrained(args.output / "scenes-opt")
    processor.save_pretrained(args.output / "scenes-opt")
    aux = " + position loss" if config.position_aux_weight else ""
    curves = {f"captioner: LM loss{aux}": caption_losses}
    report = {
        "config": asdict(config),
        "spec": asdict(spec),
        "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "seconds": {"render": round(rendered - started, 1), "captioner": round(captioned - rendered, 1)},
        "final_loss": {"captioner": _mean_tail(caption_losses)},
    }
    if not args.skip_retriever:
        retriever, retrieval_processor, retrieval_losses = train_retriever(spec, config, data, captioner)
        retriever.save_pretrained(args.output / "scenes-itm")
        retrieval_processor.save_pretrained(args.output / "scenes-itm")
        curves["retriever: ITC + ITM loss"] = retrieval_losses
        report["seconds"]["retriever"] = round(time.monotonic() - captioned, 1)
        report["final_loss"]["retriever"] = _mean_tail(retrieval_losses)
    report["seconds"]["total"] = round(time.monotonic() - started, 1)
    plot_losses(
        curves, args.output / "training_loss.png", "scene models: training loss per step (mean of 25)"
    )
    (args.output / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {report['seconds']['total']:.0f}s: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
