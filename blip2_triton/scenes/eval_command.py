"""``blip2-triton eval``: the scene checkpoints exported, served and scored on held-out scenes.

Exports the trained captioner (and the retrieval checkpoint), serves each with a real
tritonserver on free ports, sends held-out scenes over gRPC with the SDK, prints a table and
writes the figures as JSON. Also ``python -m blip2_triton.scenes.eval_command``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``eval``."""
    parser.add_argument(
        "--checkpoint", type=Path, help="captioner checkpoint (default: the shipped scenes-opt)"
    )
    parser.add_argument(
        "--retrieval-checkpoint", type=Path, help="retrieval checkpoint (default: the shipped scenes-itm)"
    )
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes for captions and VQA")
    parser.add_argument(
        "--gallery", type=int, default=100, help="held-out images (and captions) for retrieval"
    )
    parser.add_argument("--rerank", type=int, default=10, help="ITC candidates re-ranked by ITM")
    parser.add_argument("--work-dir", type=Path, default=Path(".work/eval-scenes"))
    parser.add_argument("--json", type=Path, help="write the figures here (default: WORK_DIR/eval.json)")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument(
        "--figure", type=Path, help="also draw the first 12 held-out scenes with their served captions (PNG)"
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval``."""
    parser = subparsers.add_parser("eval", help="score the scene checkpoints through the served pipeline")
    add_arguments(parser)
    parser.set_defaults(func=run)


@contextmanager
def served(checkpoint: Path, work_dir: Path, options=None):
    """Export ``checkpoint`` into ``work_dir`` and serve it; yields a connected ``Blip2Client``."""
    from blip2_triton.client import Blip2Client
    from blip2_triton.export.repository import export_repository
    from blip2_triton.server import TritonServer

    repository = work_dir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    export_repository(str(checkpoint), repository, options, quiet=True)
    server = TritonServer.on_free_ports(repository, log_file=work_dir / "tritonserver.log")
    server.start()
    try:
        # the server started here: plain gRPC, whatever BLIP2_TRITON_* say (they are for remote servers)
        with Blip2Client(server.grpc_url, protocol="grpc", tls=False, headers={}) as client:
            yield client
    finally:
        server.stop()


def evaluate(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Export, serve and score; returns the figures."""
    from .checkpoints import captioner_checkpoint, image_size_of, retriever_checkpoint
    from .served_eval import evaluate_generation, evaluate_retrieval, gallery_scenes, heldout_scenes

    checkpoint = args.checkpoint or captioner_checkpoint()
    size = image_size_of(checkpoint)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "date": time.strftime("%Y-%m-%d")}
    say(f"== captions and VQA: {args.scenes} held-out scenes through the served {checkpoint.name}")
    with served(checkpoint, args.work_dir / "captioner") as client:
        result["generation"] = evaluate_generation(client, heldout_scenes(args.scenes), size)
    if not args.skip_retrieval:
        retrieval = args.retrieval_checkpoint or retriever_checkpoint()
        say(f"== retrieval: a gallery of {args.gallery} held-out scenes through the served {retrieval.name}")
        with served(retrieval, args.work_dir / "retriever") as client:
            result["retrieval"] = evaluate_retrieval(client, gallery_scenes(args.gallery), size, args.rerank)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = ["| measure | value |", "|---|---|"]
    generation = result.get("generation")
    if generation:
        n = generation["scenes"]
        lines.append(f"| caption exact match ({n} scenes) | {generation['caption_exact']:.1%} |")
        lines.append(f"| caption token F1 | {generation['caption_f1']:.3f} |")
        for kind, row in generation["vqa"].items():
            label = "VQA accuracy, all kinds" if kind == "all" else f"VQA accuracy, {kind}"
            lines.append(f"| {label} | {row['accuracy']:.1%} ({row['right']}/{row['total']}) |")
    retrieval = result.get("retrieval")
    if retrieval:
        g, top = retrieval["gallery"], retrieval["rerank_top"]
        for direction, label in (("text_to_image", "text→image"), ("image_to_text", "image→text")):
            for method, name in (("itc", "ITC"), ("itc_itm", f"ITC + ITM re-rank of top {top}")):
                recall = retrieval[direction][method]
                lines.append(
                    f"| {label} recall@1 / @5, {name} ({g} images) | {recall['1']:.1%} / {recall['5']:.1%} |"
                )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``eval``; prints the table, writes the JSON."""
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = json.loads(json.dumps(evaluate(args)))  # str keys throughout, as written
    path = args.json or args.work_dir / "eval.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure and "generation" in result:
        from .checkpoints import image_size_of
        from .figure import save_grid

        captions = result["generation"]["predictions"]["captions"][:12]
        save_grid(captions, args.figure, image_size_of(Path(result["checkpoint"])))
        print(f"figure: {args.figure}")
    print(format_table(result))
    print(f"figures: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blip2-triton eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
