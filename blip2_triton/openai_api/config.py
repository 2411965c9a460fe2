"""What the operator chooses for the frontend, checked once: where Triton is, limits, the key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from blip2_triton.runtime.contract import MAX_IMAGE_BYTES

API_KEY_ENV = "BLIP2_TRITON_API_KEY"
# A base64 image of MAX_IMAGE_BYTES takes 4/3 of it; the rest of a chat body is small.
DEFAULT_MAX_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 4 * 1024 * 1024


@dataclass(frozen=True)
class FrontendConfig:
    """The frontend's settings; ``api_key`` None = no authentication."""

    triton_url: str
    model_repository: Path
    api_key: str | None = None
    allowed_image_hosts: frozenset[str] = field(default_factory=frozenset)
    request_timeout_s: float = 120.0
    image_fetch_timeout_s: float = 10.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_choices: int = 8

    def __post_init__(self) -> None:
        checks = [
            (self.request_timeout_s > 0, "the request timeout must be positive"),
            (self.image_fetch_timeout_s > 0, "the image fetch timeout must be positive"),
            (self.max_body_bytes > 0, "the body limit must be positive"),
            (self.max_choices >= 1, "the choice limit must be 1 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def api_key_from(flag: str | None) -> str | None:
    """The API key: the flag, else ``$BLIP2_TRITON_API_KEY``; None (auth off) when neither is set."""
    key = flag if flag is not None else os.environ.get(API_KEY_ENV)
    return key or None
