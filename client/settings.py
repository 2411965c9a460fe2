"""Generation settings of one request: only the fields that are set are sent.

The server applies its defaults to what is left out and validates the values (an out-of-range
value comes back as :class:`~blip2_triton.client.errors.InvalidRequestError` with the server's
message); the client checks types only.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blip2_triton.runtime.contract import GENERATION_INPUTS

__all__ = ["GenerationSettings", "resolve_settings"]

_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate; every field is optional and maps onto the input tensor of the same name."""

    max_tokens: int | None = None
    min_tokens: int | None = None
    beam_width: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    random_seed: int | None = None

    def __post_init__(self) -> None:
        for spec in GENERATION_INPUTS:
            value = getattr(self, spec.name)
            if value is None:
                continue
            if spec.numpy_dtype == "float32":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                expected = "a number"
            else:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                expected = "an integer"
            if not ok:
                raise TypeError(f"{spec.name} must be {expected}, got {type(value).__name__} {value!r}")
        if self.random_seed is not None and not 0 <= self.random_seed <= _UINT64_MAX:
            raise ValueError(f"random_seed must fit in an unsigned 64-bit integer, got {self.random_seed}")

    def to_dict(self) -> dict[str, int | float]:
        """The fields that are set, by tensor name."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) is not None
        }

    def merged(self, **changes: Any) -> GenerationSettings:
        """A copy with ``changes`` applied; a change to None leaves the field as it is."""
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            raise TypeError(
                f"unknown generation setting(s) {', '.join(unknown)}; known: {', '.join(_FIELD_ORDER)}"
            )
        set_changes = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **set_changes) if set_changes else self


_FIELD_ORDER: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(GenerationSettings))
_FIELD_NAMES = frozenset(_FIELD_ORDER)


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
