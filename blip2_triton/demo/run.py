"""The main job end to end: checkpoint → export → tritonserver → captions and answers → stop.

Without ``--model`` it serves the small BLIP-2 shipped with the package, trained from scratch on
procedural scenes (``blip2_triton.scenes``), and asks it about held-out scenes it never saw, saying
how many answers were right. With ``--model`` (hub id or local folder) it captions and questions
the shipped sample images with that checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

QUESTIONS = ("what is in the picture?", "what colour is it?")


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(model: str | None, work_dir: Path, dtype: str = "fp32", device: str = "cpu") -> int:
    from blip2_triton.client import Blip2Client
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures import sample_images
    from blip2_triton.server import TritonServer

    started = time.monotonic()
    work_dir = work_dir.resolve()
    scenes = model is None
    if model is None:
        from blip2_triton.scenes.demo import demo_model

        model = str(demo_model())
        _say("== the shipped scene checkpoint: a small BLIP-2 (OPT) trained from scratch on generated scenes")
    repository = work_dir / "model_repository"
    shutil.rmtree(repository, ignore_errors=True)
    _say(f"== exporting {model} to {repository}")
    export_repository(model, repository, ExportOptions(dtype=dtype, device=device))
    server = TritonServer.on_free_ports(repository, log_file=work_dir / "tritonserver.log")
    _say(
        f"== starting tritonserver (gRPC {server.grpc_url}, HTTP {server.http_url}); log: {work_dir}/tritonserver.log"
    )
    server.start()
    try:
        # the server started here: plain gRPC, whatever BLIP2_TRITON_* say (they are for remote servers)
        with Blip2Client(server.grpc_url, protocol="grpc", tls=False, headers={}) as client:
            if scenes:
                _scene_demo(client)
            else:
                _sample_demo(client, sample_images())
    finally:
        server.stop()
        _say("== server stopped")
    _say(f"demo finished in {time.monotonic() - started:.0f}s")
    return 0


def _scene_demo(client) -> None:
    from blip2_triton.scenes.demo import run_scene_demo

    _say("== held-out scenes (never seen in training): served captions and answers")
    run_scene_demo(client, _say)


def _sample_demo(client, images) -> None:
    _say(f"== captions of {len(images)} sample images (caption_batch: concurrent, batched by the server)")
    for path, text in zip(images, client.caption_batch(images, progress=False), strict=True):
        _say(f"   {path.name:28s} {text!r}")
    _say("== visual question answering")
    for path in images[:3]:
        for question in QUESTIONS[:1]:
            _say(f"   {path.name:28s} Q: {question} A: {client.ask(path, question)!r}")
    _say(f"== a chat about {images[0].name}")
    chat = client.chat(images[0])
    for question in QUESTIONS:
        _say(f"   Q: {question}  A: {chat.ask(question)!r}")
    _say("== a prompted caption with beam search")
    _say(f"   {images[1].name:28s} {client.caption(images[1], prompt='a photo of', beam_width=3)!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared by ``python -m blip2_triton.demo`` and ``blip2-triton demo``)."""
    parser.add_argument(
        "--model", help="hub id or local checkpoint folder (default: the shipped scene checkpoint)"
    )
    parser.add_argument("--work-dir", default=".work/demo", type=Path)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Run the demo; an export or server failure is one line on stderr and exit status 1."""
    from blip2_triton.command_errors import print_error
    from blip2_triton.export.errors import ExportError
    from blip2_triton.server import ServerProcessError

    try:
        return run_demo(args.model, args.work_dir, args.dtype, args.device)
    except (ExportError, ServerProcessError) as exc:
        print_error(exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
