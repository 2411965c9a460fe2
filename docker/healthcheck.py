#!/usr/bin/env python3
"""Container health check: exit 0 when Triton's HTTP health endpoint answers 200, 1 otherwise.

Standard library only, so it runs in both images (neither needs curl for it). Usage:
    blip2-healthcheck            # GET http://127.0.0.1:$HTTP_PORT/v2/health/ready (HTTP_PORT: 8000)
    blip2-healthcheck live       # /v2/health/live instead
    blip2-healthcheck URL        # any full URL
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

ENDPOINTS = {"ready": "/v2/health/ready", "live": "/v2/health/live"}


def health_url(argv: list[str], environ: Mapping[str, str]) -> str:
    """The URL to check for these arguments and this environment."""
    target = argv[0] if argv else "ready"
    if target.startswith(("http://", "https://")):
        return target
    if target not in ENDPOINTS:
        raise SystemExit(f"blip2-healthcheck: expected 'ready', 'live' or a URL, got {target!r}")
    port = environ.get("HTTP_PORT", "8000")
    return f"http://127.0.0.1:{port}{ENDPOINTS[target]}"


def check(url: str, timeout_s: float = 4.0) -> tuple[bool, str]:
    """Whether ``url`` answers 200 within ``timeout_s``, and a one-line reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"


def main(argv: list[str] | None = None) -> int:
    ok, reason = check(health_url(sys.argv[1:] if argv is None else argv, os.environ))
    print(reason, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
