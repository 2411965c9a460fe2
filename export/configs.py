"""Rendering ``config.pbtxt`` files from templates, strictly, and validating them.

A template is filled with ``string.Template.substitute`` (a missing value raises), parsed into
Triton's own ``ModelConfig`` protobuf (an unknown field or a bad value raises), and the models of a
repository are checked against each other (ensemble steps name real models and tensors).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from blip2_triton.runtime.contract import MODEL_TENSORS, TensorSpec

from .errors import ExportError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMPLATE_PACKAGE = "blip2_triton.model_repository"
CONFIG_TEMPLATE = "config.pbtxt.tmpl"


def template_dir() -> Traversable:
    """The committed model-repository sources (``model_repository/``: templates and ``model.py`` files)."""
    return files(TEMPLATE_PACKAGE)


def tensor_block(
    specs: Iterable[TensorSpec], sizes: Mapping[str, object] | None = None, *, indent: str = "  "
) -> str:
    """Config text for a list of tensors (``optional`` kept for inputs that have it).

    A dim named by a string (a checkpoint size) takes its number from ``sizes``; none there is an
    export error.
    """
    lines = []
    for spec in specs:
        dims = ", ".join(str(_dim(spec, dim, sizes or {})) for dim in spec.dims)
        optional = " optional: true" if spec.optional else ""
        lines.append(
            f'{indent}{{ name: "{spec.name}" data_type: {spec.triton_type} dims: [ {dims} ]{optional} }}'
        )
    return ",\n".join(lines)


def _dim(spec: TensorSpec, dim: int | str, sizes: Mapping[str, object]) -> object:
    if isinstance(dim, int):
        return dim
    if dim not in sizes:
        raise ExportError(f"tensor {spec.name!r}: no value for its checkpoint size {dim!r}")
    return sizes[dim]


def tensor_values(model: str, sizes: Mapping[str, object]) -> dict[str, str]:
    """``inputs`` and ``outputs`` of ``model``'s template, from the contract's ``MODEL_TENSORS``."""
    tensors = MODEL_TENSORS.get(model)
    if tensors is None:
        raise ExportError(
            f"{model}: the contract (runtime/contract.py MODEL_TENSORS) lists no tensors for it"
        )
    return {"inputs": tensor_block(tensors.inputs, sizes), "outputs": tensor_block(tensors.outputs, sizes)}


def render(template: str, values: Mapping[str, object], *, source: str) -> str:
    """Fill a template; any placeholder without a value is an export error."""
    try:
        return string.Template(template).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise ExportError(f"{source}: no value for template placeholder ${{{exc.args[0]}}}") from exc
    except ValueError as exc:
        raise ExportError(f"{source}: malformed template placeholder ({exc})") from exc


def parse_config(text: str, *, source: str) -> model_config_pb2.ModelConfig:
    """Parse config text with Triton's ``ModelConfig`` schema."""
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ExportError(f"{source} is not a valid Triton ModelConfig: {exc}") from exc
    return config


def check_model_config(config: model_config_pb2.ModelConfig, folder_name: str) -> None:
    """Checks that Triton would make at load time, made at export time instead."""
    where = f"{folder_name}/config.pbtxt"
    if config.name != folder_name:
        raise ExportError(f"{where}: name {config.name!r} differs from its folder")
    if config.max_batch_size <= 0:
        raise ExportError(f"{where}: max_batch_size must be > 0")
    if not config.backend and not config.platform:
        raise ExportError(f"{where}: neither backend nor platform is set")
    for tensor in (*config.input, *config.output):
        if tensor.data_type == model_config_pb2.TYPE_INVALID or not tensor.dims:
            raise ExportError(f"{where}: tensor {tensor.name!r} lacks a type or dims")
        if any(d == 0 or d < -1 for d in tensor.dims):
            raise ExportError(f"{where}: tensor {tensor.name!r} has bad dims {list(tensor.dims)}")


def check_ensemble(
    ensemble: model_config_pb2.ModelConfig, models: Mapping[str, model_config_pb2.ModelConfig]
) -> None:
    """Every step names a model of the repository and only tensors that model has."""
    ensemble_inputs = {t.name for t in ensemble.input}
    produced: set[str] = set(ensemble_inputs)
    for step in ensemble.ensemble_scheduling.step:
        model = models.get(step.model_name)
        if model is None:
            raise ExportError(f"ensemble {ensemble.name!r}: step names unknown model {step.model_name!r}")
        inputs = {t.name for t in model.input}
        outputs = {t.name for t in model.output}
        for key, wire in step.input_map.items():
            if key not in inputs:
                raise ExportError(f"ensemble step {step.model_name}: no input {key!r}")
            if wire not in produced:
                raise ExportError(f"ensemble step {step.model_name}: {wire!r} is not produced before it")
        required = {t.name for t in model.input if not t.optional}
        if missing := required - set(step.input_map):
            raise ExportError(
                f"ensemble step {step.model_name}: required inputs {sorted(missing)} are not mapped"
            )
        for key, wire in step.output_map.items():
            if key not in outputs:
                raise ExportError(f"ensemble step {step.model_name}: no output {key!r}")
            produced.add(wire)
    for tensor in ensemble.output:
        if tensor.name not in produced:
            raise ExportError(f"ensemble {ensemble.name!r}: output {tensor.name!r} is produced by no step")


def write_config(
    model: str, values: Mapping[str, object], out_dir: Path, template: str = CONFIG_TEMPLATE
) -> model_config_pb2.ModelConfig:
    """Render ``model``'s template (its tensor lines from the contract), validate it and write
    ``out_dir/config.pbtxt``; returns the config."""
    source = f"{model}/{template}"
    values = {**values, **tensor_values(model, values)}
    text = render((template_dir() / model / template).read_text(), values, source=source)
    config = parse_config(text, source=source)
    check_model_config(config, out_dir.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.pbtxt").write_text(text)
    return config


def validate_repository(repository: Path) -> dict[str, model_config_pb2.ModelConfig]:
    """Parse and check every ``config.pbtxt`` of a written repository (and its ensembles)."""
    models = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = parse_config(path.read_text(), source=str(path))
        check_model_config(config, path.parent.name)
        models[config.name] = config
    for config in models.values():
        if config.platform == "ensemble":
            check_ensemble(config, models)
    return models
