"""Generation settings of one request: only the fields that are set are sent.

``GenerationSettings`` is the contract's own (``blip2_triton.runtime.contract``), the one list of
settings. The server applies its defaults to what is left out and validates the values (an
out-of-range value comes back as :class:`~blip2_triton.client.errors.InvalidRequestError` with the
server's message); the client checks types only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blip2_triton.runtime.contract import GenerationSettings

__all__ = ["GenerationSettings", "resolve_settings"]


def resolve_settings(
    settings: GenerationSettings | Mapping[str, Any] | None, generation: Mapping[str, Any]
) -> GenerationSettings:
    """``settings`` (an object, a mapping or None) with the keyword overrides ``generation`` applied."""
    if settings is None:
        base = GenerationSettings()
    elif isinstance(settings, GenerationSettings):
        base = settings
    elif isinstance(settings, Mapping):
        base = GenerationSettings().merged(**settings)
    else:
        raise TypeError(f"settings must be a GenerationSettings, got {type(settings).__name__}")
    return base.merged(**generation)
