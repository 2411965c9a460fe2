"""``blip2-triton index build`` and ``blip2-triton search``: the image index on the command line.

Registered on the shared parser by ``blip2_triton.cli`` through :func:`add_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blip2_triton.runtime.contract import IMAGE_EMBED_MODEL

from .cli_options import client_from_args, server_options
from .errors import Blip2ClientError
from .index import ImageIndex


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``index`` (with ``build``) and ``search`` on the shared ``blip2-triton`` parser."""
    parent = server_options(concurrency=True)
    index = subparsers.add_parser(
        "index",
        help="build an image index with a retrieval server",
        description="Image indexes for text search (servers exported from Blip2ForImageTextRetrieval).",
    )
    actions = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        parents=[parent],
        help="embed every image of a folder into one index file (resumable)",
        description="Embed every image under FOLDER (recursive) into one index file. Re-running skips "
        "the images already indexed; an interrupted build resumes from INDEX.partial.",
    )
    build.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    build.add_argument("-o", "--output", required=True, metavar="INDEX", help="index file to write")
    build.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="images per saved batch (default 256)"
    )
    build.set_defaults(func=run_build, expected_errors=(Blip2ClientError,))

    search = subparsers.add_parser(
        "search",
        parents=[parent],
        help="search an image index with a text",
        description="Search an index file for the images that best match a text: ITC scores over the "
        "whole index, optionally re-ranked by the ITM head. Prints 'rank<TAB>score<TAB>path' lines.",
    )
    search.add_argument("index", metavar="INDEX", help="index file written by 'index build'")
    search.add_argument("query", metavar="QUERY", help="the text to search for")
    search.add_argument("-k", "--top-k", type=int, default=5, metavar="K", help="results (default 5)")
    search.add_argument(
        "--rerank", type=int, default=None, metavar="K", help="re-rank the best K by the ITM head"
    )
    search.add_argument("--json", action="store_true", help="print one JSON object per line")
    search.set_defaults(func=run_search, expected_errors=(Blip2ClientError,))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise Blip2ClientError(f"{name} must be at least 1, got {value}")


def run_build(args: argparse.Namespace) -> int:
    """``blip2-triton index build``: a summary line on stderr, skipped images listed."""
    _positive("--batch-size", args.batch_size)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise Blip2ClientError(f"not a folder: {folder}")
    show_progress = None if sys.stderr.isatty() else False
    with client_from_args(args, IMAGE_EMBED_MODEL) as client:
        before = len(ImageIndex.load(args.output)) if Path(args.output).exists() else 0
        index = ImageIndex.build(
            client, folder, args.output, batch_size=args.batch_size, progress=show_progress
        )
    skipped = index.metadata.get("skipped", {})
    for path, reason in skipped.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(
        f"{args.output}: {len(index)} images ({len(index) - before} new, {len(skipped)} skipped), "
        f"{index.nbytes / 1e6:.1f} MB of embeddings",
        file=sys.stderr,
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    """``blip2-triton search``: one line per hit, best first."""
    _positive("-k", args.top_k)
    _positive("--rerank", args.rerank)
    with client_from_args(args, IMAGE_EMBED_MODEL) as client:
        index = ImageIndex.load(args.index, client=client)
        hits = index.search(args.query, top_k=args.top_k, rerank=args.rerank)
    for hit in hits:
        if args.json:
            print(json.dumps({"rank": hit.rank, "path": hit.path, "itc": hit.itc, "itm": hit.itm}))
        elif hit.itm is not None:
            print(f"{hit.rank}\titm={hit.itm:.4f} itc={hit.itc:.4f}\t{hit.path}")
        else:
            print(f"{hit.rank}\titc={hit.itc:.4f}\t{hit.path}")
    return 0
