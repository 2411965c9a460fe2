"""Which loaded models call which: ensemble steps from the configs, BLS callers from the contract.

Triton knows an ensemble's steps, but not which models a Python (BLS) model calls. The contract
names the public models that clients call and that call other models, in levels (``CALLER_LEVELS``:
the unary relay ``blip2`` calls the engine model ``blip2_stream``, which calls ``blip2_vision``):
drain and stub recovery take them level by level, so that what a caller calls stays loaded while it
finishes.
"""

from __future__ import annotations

from blip2_triton.runtime.contract import IMAGE_EMBED_MODEL, ITM_MODEL, PUBLIC_MODEL, STREAM_MODEL

CALLER_LEVELS = ((PUBLIC_MODEL,), (STREAM_MODEL, ITM_MODEL, IMAGE_EMBED_MODEL))
CALLERS = tuple(name for level in CALLER_LEVELS for name in level)


def model_states(client, headers: dict[str, str] | None) -> dict[str, str]:
    """Every model of the repository index and its state (READY, LOADING, UNLOADING, UNAVAILABLE).

    An old incarnation that is still unloading wins over a newer one's state.
    """
    states: dict[str, str] = {}
    for model in client.get_model_repository_index(headers=headers).models:
        if states.get(model.name) != "UNLOADING":
            states[model.name] = model.state
    return states


def ready_models(client, headers: dict[str, str] | None) -> set[str]:
    """Models with a READY incarnation (a new one may be READY beside an old one still unloading)."""
    return {m.name for m in client.get_model_repository_index(headers=headers).models if m.state == "READY"}


def loaded_configs(client, headers: dict[str, str] | None) -> dict[str, dict]:
    """Config (JSON form) of every READY model, through a ``tritonclient.grpc`` client."""
    index = client.get_model_repository_index(headers=headers).models
    names = sorted({m.name for m in index if m.state == "READY"})
    return {name: client.get_model_config(name, as_json=True)["config"] for name in names}


def ensemble_steps(configs: dict[str, dict]) -> set[str]:
    return {
        step["model_name"]
        for config in configs.values()
        for step in config.get("ensemble_scheduling", {}).get("step", [])
    }


def entry_waves(configs: dict[str, dict]) -> list[list[str]]:
    """Models no ensemble uses as a step, in waves: the contract's callers level by level (a caller
    before what it calls), then the others."""
    steps = ensemble_steps(configs)
    entries = [name for name in sorted(configs) if name not in steps]
    levels = [[name for name in entries if name in level] for level in CALLER_LEVELS]
    rest = [name for name in entries if name not in CALLERS]
    return [wave for wave in (*levels, rest) if wave]


def callers(configs: dict[str, dict]) -> list[str]:
    """The loaded models of ``CALLERS`` that no ensemble uses as a step."""
    steps = ensemble_steps(configs)
    return [name for name in sorted(configs) if name in CALLERS and name not in steps]
