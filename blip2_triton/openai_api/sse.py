"""Server-sent events as OpenAI streams them: ``data: <json>`` blocks, then ``data: [DONE]``."""

from __future__ import annotations

import json
from typing import Any

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(payload: dict[str, Any]) -> str:
    """One event carrying ``payload`` as compact JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def sse_done() -> str:
    """The event that ends a stream."""
    return "data: [DONE]\n\n"
