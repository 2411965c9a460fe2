"""Prompt templates, by language-model family, in one place.

The family comes from the server: the engine model's (``blip2_stream``) config carries
``parameters { key: "llm_family" value { string_value: "opt" } }`` (or ``"t5"``).

- ``"opt"``: ``Question: {question} Answer:``
- ``"t5"`` (Flan-T5): ``Question: {question} Short answer:``

A chat follows BLIP-2's (LAVIS) format: each earlier turn is ``Question: {q} Answer: {a}.``, the
turns are joined with spaces, then `` Question: {question} Answer:`` follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from blip2_triton.runtime.contract import ENGINE_MODEL, LEGACY_LLM_MODEL

from .errors import ServerError

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "LLM_FAMILY_PARAMETER",
    "chat_prompt",
    "family_from_model_config",
    "llm_family_from_config",
    "names_family",
    "vqa_prompt",
]

LLM_FAMILY_PARAMETER = "llm_family"
DEFAULT_FAMILY = "opt"

# The word after "Question: {question}" for each family.
_ANSWER_LABELS: dict[str, str] = {"opt": "Answer:", "t5": "Short answer:"}
FAMILIES: tuple[str, ...] = tuple(_ANSWER_LABELS)


def _label(family: str) -> str:
    try:
        return _ANSWER_LABELS[family]
    except KeyError:
        raise ValueError(f"unknown language-model family {family!r}; known: {', '.join(FAMILIES)}") from None


def vqa_prompt(family: str, question: str) -> str:
    """The visual-question-answering prompt for ``question``."""
    return f"Question: {question} {_label(family)}"


def chat_prompt(family: str, history: Sequence[tuple[str, str]], question: str) -> str:
    """The prompt for ``question`` after the earlier ``(question, answer)`` turns of ``history``."""
    label = _label(family)
    turns = [f"Question: {q} {label} {a}." for q, a in history]
    return " ".join([*turns, vqa_prompt(family, question)])


# Where a server names its family: the engine model; servers exported before 2026-12 named it on
# blip2_llm (asked when the engine model's config has no such parameter).
FAMILY_MODELS = (ENGINE_MODEL, LEGACY_LLM_MODEL)


def names_family(config: Mapping[str, Any]) -> bool:
    """Whether a model config (gRPC or HTTP JSON) has the ``llm_family`` parameter."""
    if "config" in config and isinstance(config["config"], Mapping):
        config = config["config"]
    return LLM_FAMILY_PARAMETER in (config.get("parameters") or {})


def family_from_model_config(config: Mapping[str, Any]) -> str:
    """The ``llm_family`` parameter of the engine model's config (gRPC or HTTP JSON), default ``"opt"``.

    Takes what ``get_model_config(..., as_json=True)`` returns over gRPC (``{"config": {...}}``) or
    what ``get_model_config`` returns over HTTP (the config itself).
    """
    if "config" in config and isinstance(config["config"], Mapping):
        config = config["config"]
    entry = (config.get("parameters") or {}).get(LLM_FAMILY_PARAMETER)
    value = (entry.get("string_value") or entry.get("stringValue")) if isinstance(entry, Mapping) else entry
    if not value:
        return DEFAULT_FAMILY
    family = str(value).strip().lower()
    _label(family)
    return family


def llm_family_from_config(config: Mapping[str, Any]) -> str:
    """The family named by the engine model's config, as a client error when this client does not know it."""
    try:
        return family_from_model_config(config)
    except ValueError as exc:
        raise ServerError(
            f"the '{LLM_FAMILY_PARAMETER}' parameter of model '{ENGINE_MODEL}': {exc}"
        ) from None
