"""Drain order: a caller is unloaded before the models it calls (no server needed)."""

from __future__ import annotations

from blip2_triton.server.model_graph import callers, entry_waves


def _configs(*names: str, ensembles: dict[str, list[str]] | None = None) -> dict[str, dict]:
    configs: dict[str, dict] = {name: {"name": name} for name in names}
    for name, steps in (ensembles or {}).items():
        configs[name] = {"name": name, "ensemble_scheduling": {"step": [{"model_name": s} for s in steps]}}
    return configs


def test_the_relay_drains_before_the_engine_model_and_the_engine_before_vision():
    configs = _configs("blip2", "blip2_stream", "blip2_vision", "blip2_preprocess")
    assert entry_waves(configs) == [["blip2"], ["blip2_stream"], ["blip2_preprocess", "blip2_vision"]]


def test_ensemble_steps_are_not_entries_and_retrieval_callers_share_a_level():
    configs = _configs(
        "blip2_image_embed",
        "blip2_itm",
        "blip2_image_encoder",
        "blip2_itm_head",
        "blip2_preprocess",
        ensembles={"blip2_text_embed": ["blip2_text_graph"]},
    )
    configs["blip2_text_graph"] = {"name": "blip2_text_graph"}
    waves = entry_waves(configs)
    assert waves[0] == ["blip2_image_embed", "blip2_itm"]
    assert "blip2_text_graph" not in [name for wave in waves for name in wave]
    assert callers(configs) == ["blip2_image_embed", "blip2_itm"]
