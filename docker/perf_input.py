#!/usr/bin/env python3
"""Write a perf_analyzer ``--input-data`` JSON file for the ``blip2`` ensemble from image files.

perf_analyzer cannot invent a valid encoded image, so its default random input would only
measure the INVALID_ARG path. This file holds real images (base64 in the JSON) and, optionally, a
prompt and ``max_tokens`` for each request; perf_analyzer cycles through the entries.

    python docker/perf_input.py blip2_triton/fixtures/samples/*.jpg blip2_triton/fixtures/samples/*.png -o perf_input.json
    python docker/perf_input.py blip2_triton/fixtures/samples/sky_circle.jpg --prompt "Question: what is this? Answer:" \\
        --max-tokens 20 -o perf_vqa.json
    perf_analyzer -m blip2 -u localhost:8001 -i grpc --input-data perf_input.json \\
        --concurrency-range 1:8:2 --measurement-interval 10000

Standard library only (runs in any image that has python3).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
from pathlib import Path


def bytes_element(value: bytes) -> dict[str, str]:
    """One TYPE_STRING element as perf_analyzer's ``{"b64": ...}`` form.

    For BYTES tensors perf_analyzer sends the decoded bytes as the tensor's raw content, which
    Triton reads as serialized strings: a 4-byte little-endian length, then the bytes.
    """
    return {"b64": base64.b64encode(struct.pack("<I", len(value)) + value).decode("ascii")}


def build_input_data(
    images: list[Path],
    prompt: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
) -> dict[str, list[dict]]:
    """The ``{"data": [...]}`` document: one entry per image, each a batch-1 request."""
    entries = []
    for path in images:
        entry: dict = {"image": bytes_element(path.read_bytes())}
        if prompt:
            entry["text_input"] = bytes_element(prompt.encode("utf-8"))
        if max_tokens is not None:
            entry["max_tokens"] = [max_tokens]
        if min_tokens is not None:
            entry["min_tokens"] = [min_tokens]
        entries.append(entry)
    return {"data": entries}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="encoded image files (JPEG, PNG, ...)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--prompt", help="text_input of every request (default: plain caption)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: the model's)")
    parser.add_argument("--min-tokens", type=int, help="min_tokens of every request (default: none)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        parser.error(f"not a file: {', '.join(missing)}")
    document = build_input_data(args.images, args.prompt, args.max_tokens, args.min_tokens)
    args.output.write_text(json.dumps(document))
    print(f"{args.output}: {len(document['data'])} requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
