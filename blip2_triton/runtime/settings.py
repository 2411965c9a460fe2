"""Per-request generation settings (``contract.GenerationSettings``): parsing, validation, and
what they mean for transformers ``generate``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .contract import DEFAULT_MAX_TOKENS, MAX_BEAM_WIDTH, MAX_PROMPT_CHARS, MAX_TOKENS_CAP, GenerationSettings
from .errors import RequestValidationError


def generate_kwargs(settings: GenerationSettings) -> dict[str, Any]:
    """Keyword arguments for ``transformers`` ``generate`` (unset values are left out)."""
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_tokens or DEFAULT_MAX_TOKENS}
    optional = {
        "min_new_tokens": settings.min_tokens,
        "num_beams": settings.beam_width,
        "repetition_penalty": settings.repetition_penalty,
        "length_penalty": settings.length_penalty,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
    }
    kwargs.update({key: value for key, value in optional.items() if value is not None})
    if settings.sampling:
        kwargs["do_sample"] = True
        kwargs["temperature"] = settings.temperature
        if settings.top_p is not None:
            kwargs["top_p"] = settings.top_p
        if settings.top_k is not None:
            kwargs["top_k"] = settings.top_k
    elif settings.temperature is not None:
        kwargs["do_sample"] = False
    return kwargs


def stop_when_cancelled(cancelled: Sequence[Callable[[], bool]]) -> dict[str, Any]:
    """``generate`` keyword arguments that end a call between two steps once every request in it
    is cancelled (beam search runs whole ``generate`` calls; this lets a cancel cut one short).

    Empty when no request can be cancelled, so ``generate`` runs exactly as without it.
    """
    if not cancelled:
        return {}
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class WhenCancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            stop = all(is_cancelled() for is_cancelled in cancelled)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([WhenCancelled()])}


def _scalar(name: str, value: Any) -> Any:
    try:
        if hasattr(value, "reshape"):
            flat = value.reshape(-1)
            if flat.size != 1:
                raise RequestValidationError(f"'{name}' must hold exactly one value, got {flat.size}")
            value = flat[0]
        return value.item() if hasattr(value, "item") else value
    except RequestValidationError:
        raise
    except Exception as exc:  # pragma: no cover - numpy always has item()
        raise RequestValidationError(f"'{name}' could not be read: {exc}") from exc


def _int(name: str, value: Any, low: int, high: int | None = None) -> int:
    value = int(_scalar(name, value))
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise RequestValidationError(f"'{name}' must be {bound}, got {value}")
    return value


def _float(name: str, value: Any, *, low: float | None = None, low_open: bool = False, high=None) -> float:
    value = float(_scalar(name, value))
    if not math.isfinite(value):
        raise RequestValidationError(f"'{name}' must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        relation = ">" if low_open else ">="
        bound = f"{relation} {low}" + (f" and <= {high}" if high is not None else "")
        raise RequestValidationError(f"'{name}' must be {bound}, got {value}")
    return value


# Ranges of the float settings (the README's table): wider than any useful value, so that a value
# outside them is a client's mistake. length_penalty may be negative (shorter beams win), as in
# transformers.
MAX_TEMPERATURE = 100.0
MAX_PENALTY = 10.0


def parse_settings(raw: Mapping[str, Any]) -> GenerationSettings:
    """Validate the optional generation inputs of one request (absent entries are ``None``).

    The result always has ``max_tokens`` set (``DEFAULT_MAX_TOKENS`` when absent).
    """

    def get(name: str) -> Any:
        return raw.get(name)

    max_tokens = DEFAULT_MAX_TOKENS
    if get("max_tokens") is not None:
        max_tokens = _int("max_tokens", get("max_tokens"), 1, MAX_TOKENS_CAP)
    min_tokens = None
    if get("min_tokens") is not None:
        min_tokens = _int("min_tokens", get("min_tokens"), 0, max_tokens)
    beam_width = None
    if get("beam_width") is not None:
        beam_width = _int("beam_width", get("beam_width"), 1, MAX_BEAM_WIDTH)
    temperature = None
    if get("temperature") is not None:
        temperature = _float("temperature", get("temperature"), low=0.0, high=MAX_TEMPERATURE)
    top_p = None if get("top_p") is None else _float("top_p", get("top_p"), low=0.0, low_open=True, high=1.0)
    top_k = None if get("top_k") is None else _int("top_k", get("top_k"), 0)
    repetition_penalty = None
    if get("repetition_penalty") is not None:
        repetition_penalty = _float(
            "repetition_penalty", get("repetition_penalty"), low=0.0, low_open=True, high=MAX_PENALTY
        )
    length_penalty = None
    if get("length_penalty") is not None:
        length_penalty = _float("length_penalty", get("length_penalty"), low=-MAX_PENALTY, high=MAX_PENALTY)
    no_repeat = None
    if get("no_repeat_ngram_size") is not None:
        no_repeat = _int("no_repeat_ngram_size", get("no_repeat_ngram_size"), 0, MAX_TOKENS_CAP)
    seed = None if get("random_seed") is None else int(_scalar("random_seed", get("random_seed")))
    return GenerationSettings(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        beam_width=beam_width,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        length_penalty=length_penalty,
        no_repeat_ngram_size=no_repeat,
        random_seed=seed,
    )


def parse_prompt(raw: Any) -> str:
    """The prompt of a request: bytes or str, possibly absent (empty means a plain caption)."""
    if raw is None:
        return ""
    value = _scalar("text_input", raw)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestValidationError(f"'text_input' is not valid UTF-8 ({exc.reason})") from exc
    value = str(value)
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestValidationError(
            f"'text_input' is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}"
        )
    return value if value.strip() else ""
