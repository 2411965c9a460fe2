"""Export: strict templates, configs valid under Triton's ModelConfig, ONNX graph, manifest, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from blip2_triton.export.configs import (
    check_ensemble,
    parse_config,
    render,
    template_dir,
    validate_repository,
)
from blip2_triton.export.errors import ExportError
from blip2_triton.export.manifest import verify_manifest
from blip2_triton.export.repository import ExportOptions, export_repository
from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

MODELS = {"blip2", "blip2_stream", "blip2_preprocess", "blip2_vision"}
CLI = [sys.executable, "-m", "blip2_triton.cli"]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint with a non-default image size (48 px)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt48") / "checkpoint", "opt", image_size=48)


def test_every_rendered_config_validates(opt_build):
    repository = opt_build["repository"]
    models = validate_repository(repository)
    assert set(models) == MODELS
    for name in MODELS:
        text = (repository / name / "config.pbtxt").read_text()
        assert "${" not in text
        assert parse_config(text, source=name).max_batch_size == 8


def test_the_engine_and_its_relay_have_no_dynamic_batcher_and_the_steps_do(opt_build):
    """Triton 2.51's dynamic batcher can lose the wake-up of an instance that frees as a request
    arrives and then sleep 500 ms; in front of the engine (whose execute only accepts) that split
    bursts apart, so blip2 and blip2_stream go without it. The steps keep their bounded queues."""
    repository = opt_build["repository"]
    configs = {
        name: parse_config((repository / name / "config.pbtxt").read_text(), source=name) for name in MODELS
    }
    assert not any(configs[name].HasField("dynamic_batching") for name in ("blip2", "blip2_stream"))
    for name in ("blip2_preprocess", "blip2_vision"):
        assert configs[name].dynamic_batching.default_queue_policy.max_queue_size > 0, name


def test_a_missing_template_value_is_an_export_error():
    template = (template_dir() / "blip2_stream" / "config.pbtxt.tmpl").read_text()
    with pytest.raises(ExportError, match=r"no value for template placeholder \$\{"):
        render(template, {"max_batch_size": 4}, source="blip2_stream/config.pbtxt.tmpl")


def test_a_config_outside_the_schema_is_an_export_error():
    with pytest.raises(ExportError, match="not a valid Triton ModelConfig"):
        parse_config('name: "x" max_batch_size: 4 no_such_field: 1', source="x")
    with pytest.raises(ExportError, match="not a valid Triton ModelConfig"):
        parse_config('name: "x" input [ { name: "a" data_type: TYPE_NOPE dims: [1] } ]', source="x")


def _vision_ensemble(models, wire: str):
    """An ensemble over the export's blip2_vision whose step reads ``wire``."""
    vision = models["blip2_vision"]
    pixels = ", ".join(str(d) for d in vision.input[0].dims)
    embeds = ", ".join(str(d) for d in vision.output[0].dims)
    return parse_config(
        f"""name: "e" platform: "ensemble" max_batch_size: 8
        input [ {{ name: "pixel_values" data_type: TYPE_FP32 dims: [ {pixels} ] }} ]
        output [ {{ name: "query_embeds" data_type: TYPE_FP32 dims: [ {embeds} ] }} ]
        ensemble_scheduling {{ step [ {{ model_name: "blip2_vision" model_version: -1
          input_map {{ key: "pixel_values" value: "{wire}" }}
          output_map {{ key: "query_embeds" value: "query_embeds" }} }} ] }}""",
        source="e",
    )


def test_an_ensemble_wired_to_a_missing_tensor_is_an_export_error(opt_build):
    models = validate_repository(opt_build["repository"])
    check_ensemble(_vision_ensemble(models, "pixel_values"), models)
    with pytest.raises(ExportError, match="is not produced before it"):
        check_ensemble(_vision_ensemble(models, "_no_such_wire"), models)


def test_onnx_graph_has_contract_names_and_dynamic_batch(opt_build):
    path = opt_build["repository"] / "blip2_vision" / "1" / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixel_values"]
    assert [o.name for o in graph.output] == ["query_embeds"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(op.version for op in onnx.load(str(path)).opset_import if op.domain in ("", "ai.onnx")) >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        (out,) = session.run(None, {"pixel_values": np.random.rand(batch, 3, 64, 64).astype(np.float32)})
        assert out.shape == (batch, 8, 64)


def test_manifest_records_sources_versions_and_checksums(opt_build):
    repository = opt_build["repository"]
    manifest = json.loads((repository / "manifest.json").read_text())
    assert manifest["onnx_opset"] >= 17
    assert manifest["onnx_max_abs_diff"] < 1e-4
    assert manifest["shapes"] == {"pixel_values": [-1, 3, 64, 64], "query_embeds": [-1, 8, 64]}
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert "blip2_vision/1/model.onnx" in manifest["files"]
    assert verify_manifest(repository) == []


def test_export_any_declared_image_size_and_native_onnxruntime_backend(small_checkpoint, tmp_path):
    output = tmp_path / "repo"
    manifest = export_repository(
        str(small_checkpoint), output, ExportOptions(vision_backend="onnxruntime"), quiet=True
    )
    assert manifest["shapes"]["pixel_values"] == [-1, 3, 48, 48]
    models = validate_repository(output)
    assert models["blip2_vision"].backend == "onnxruntime"
    assert list(models["blip2_preprocess"].output[0].dims) == [3, 48, 48]
    assert not (output / "blip2_vision" / "1" / "model.py").exists()
    assert (output / "blip2_vision" / "1" / "model.onnx").is_file()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def test_cli_export_errors_are_one_line(small_checkpoint, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("x")
    cases = [
        (["--model", str(small_checkpoint), "--output", str(occupied)], "exists and is not empty"),
        (["--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o1")], "does not exist"),
        (
            ["--model", str(small_checkpoint), "--output", str(tmp_path / "o2"), "--dtype", "fp16"],
            "needs a GPU",
        ),
        (
            ["--model", str(small_checkpoint), "--output", str(tmp_path / "o3"), "--max-batch-size", "0"],
            "at least 1",
        ),
    ]
    for args, fragment in cases:
        result = _cli("export", *args)
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("blip2-triton: error: ") and fragment in last, result.stderr
        assert "Traceback" not in result.stderr


def test_cli_export_with_a_hub_id_offline_says_what_to_pass(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = _cli("export", "--model", "Salesforce/blip2-opt-2.7b", "--output", str(tmp_path / "o"), env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot download 'Salesforce/blip2-opt-2.7b'" in last and "pass a local checkpoint folder" in last


@pytest.mark.server
def test_served_repository_was_moved_and_its_checkpoint_deleted(opt_server, opt_build, sample_images):
    """The live server reads a repository that was moved after export, with the source checkpoint gone."""
    assert opt_server.repository == opt_build["repository"]
    assert not (opt_build["repository"].parent.parent / "checkpoint").exists()
    assert "exported" not in str(opt_server.repository)
    from .triton_requests import infer_concurrently

    image = sample_images[3].read_bytes()
    (outcome,) = infer_concurrently(opt_server.grpc_url, [{"image": image, "prompt": "a photo of"}])
    assert outcome.text == opt_server.reference(image, "a photo of")


def test_bf16_export_keeps_the_vision_graph_fp32_and_the_language_model_bf16(small_checkpoint, tmp_path):
    """ONNX opset 17 has no bf16 Conv and onnxruntime's CPU provider runs no bf16 graph: the vision
    stage of a bf16 export is the bf16 weights in fp32; the language model stays bf16."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    output = tmp_path / "bf16"
    details = export_repository(str(small_checkpoint), output, ExportOptions(dtype="bf16"), quiet=True)
    assert details["onnx_max_abs_diff"] < 1e-4
    graph = onnx.load(str(output / "blip2_vision" / "1" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["dtype"] == "bf16"
    language_model = output / "blip2_stream" / "1" / "language_model" / "config.json"
    assert json.loads(language_model.read_text())["dtype"] == "bfloat16"

    model = (
        Blip2ForConditionalGeneration.from_pretrained(small_checkpoint, dtype=torch.bfloat16).float().eval()
    )
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.get_image_features(pixels, return_dict=True).pooler_output.numpy()
    session = ort.InferenceSession(str(output / "blip2_vision" / "1" / "model.onnx"))
    (actual,) = session.run(None, {"pixel_values": pixels.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_no_template_hard_codes_a_tensor_line():
    """The contract owns tensors: every template's input and output blocks are its placeholders."""
    import re

    from blip2_triton.runtime.contract import MODEL_TENSORS

    templates = sorted(template_dir().glob("*/config*.tmpl"))
    assert {path.parent.name for path in templates} == set(MODEL_TENSORS)
    for path in templates:
        text = path.read_text()
        where = path.relative_to(template_dir()).as_posix()
        assert re.findall(r"data_type|dims:", text) == [], f"{where} hard-codes a tensor line"
        assert re.findall(r"(?m)^(input|output) \[\n(.*)\n\]$", text) == [
            ("input", "${inputs}"),
            ("output", "${outputs}"),
        ], where


def test_a_checkpoint_size_without_a_value_is_an_export_error():
    from blip2_triton.export.configs import tensor_values

    with pytest.raises(
        ExportError, match=r"tensor 'pixel_values': no value for its checkpoint size 'image_height'"
    ):
        tensor_values("blip2_vision", {"image_width": 48, "num_query_tokens": 8, "llm_hidden": 32})
    with pytest.raises(ExportError, match=r"blip2_nope: the contract .* lists no tensors for it"):
        tensor_values("blip2_nope", {})
