"""The client SDK without a server: tensors, images, prompts, errors, options, the CLI, the twins, fan-out."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import io
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from blip2_triton import cli
from blip2_triton.client import (
    AsyncBlip2Client,
    AsyncChatSession,
    Blip2Client,
    Blip2ClientError,
    ChatSession,
    GenerationSettings,
    InferenceTimeoutError,
    InvalidImageError,
    InvalidRequestError,
    RequestCancelledError,
    ServerError,
    ServerUnavailableError,
    _tensors,
    chat_prompt,
    command,
    image_bytes,
    map_triton_error,
    vqa_prompt,
)
from blip2_triton.client.calls import batch_prompts
from blip2_triton.client.errors import translated_errors
from blip2_triton.client.fan_out import fan_out, fan_out_async
from blip2_triton.client.options import ClientOptions
from blip2_triton.client.prompts import family_from_model_config, llm_family_from_config
from blip2_triton.client.settings import resolve_settings
from blip2_triton.fixtures import samples_dir
from blip2_triton.runtime.contract import GENERATION_INPUT_NAMES, GENERATION_INPUTS, IMAGE, TEXT_INPUT

SAMPLES = samples_dir()

ALL_SETTINGS = GenerationSettings(
    max_tokens=20,
    min_tokens=2,
    beam_width=3,
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    repetition_penalty=1.1,
    length_penalty=0.8,
    no_repeat_ngram_size=3,
    random_seed=2**63 + 5,
)

WIRE_TYPES = {"TYPE_STRING": "BYTES", "TYPE_INT32": "INT32", "TYPE_FP32": "FP32", "TYPE_UINT64": "UINT64"}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- settings ------------------------------------------------------------------------------------
def test_settings_fields_are_the_contract_generation_inputs():
    names = tuple(field.name for field in dataclasses.fields(GenerationSettings))
    assert names == GENERATION_INPUT_NAMES


def test_settings_only_set_fields_are_sent():
    assert GenerationSettings().to_dict() == {}
    assert GenerationSettings(max_tokens=5, temperature=1).to_dict() == {"max_tokens": 5, "temperature": 1}


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GenerationSettings().max_tokens = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 2.5},
        {"max_tokens": "20"},
        {"beam_width": True},
        {"temperature": "hot"},
        {"top_p": [0.5]},
        {"random_seed": 1.0},
    ],
)
def test_settings_reject_wrong_types(kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        GenerationSettings(**kwargs)


def test_settings_accept_numpy_scalars_and_leave_values_to_the_server():
    settings = GenerationSettings(max_tokens=np.int64(0), temperature=np.float32(-1.0), top_k=-3)
    assert settings.to_dict() == {"max_tokens": 0, "temperature": -1.0, "top_k": -3}


def test_settings_seed_must_fit_uint64():
    GenerationSettings(random_seed=2**64 - 1)
    with pytest.raises(ValueError, match="random_seed"):
        GenerationSettings(random_seed=-1)


def test_resolve_settings_applies_keyword_overrides():
    base = GenerationSettings(max_tokens=10, beam_width=2)
    resolved = resolve_settings(base, {"max_tokens": 4, "top_k": None})
    assert resolved == GenerationSettings(max_tokens=4, beam_width=2)
    assert resolve_settings(None, {}) == GenerationSettings()
    assert resolve_settings({"top_p": 0.5}, {"random_seed": 1}) == GenerationSettings(
        top_p=0.5, random_seed=1
    )


def test_resolve_settings_rejects_unknown_keywords():
    with pytest.raises(TypeError, match="max_new_tokens"):
        resolve_settings(None, {"max_new_tokens": 3})
    with pytest.raises(TypeError, match="GenerationSettings"):
        resolve_settings(42, {})  # type: ignore[arg-type]


# -- tensors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensors_for_every_setting(protocol):
    inputs = _tensors.build_inputs(protocol, b"\x89PNG...", "Question: why? Answer:", ALL_SETTINGS)
    by_name = {tensor.name(): tensor for tensor in inputs}
    assert set(by_name) == {IMAGE.name, TEXT_INPUT.name, *GENERATION_INPUT_NAMES}
    for spec in (IMAGE, TEXT_INPUT, *GENERATION_INPUTS):
        tensor = by_name[spec.name]
        assert tensor.datatype() == WIRE_TYPES[spec.triton_type], spec.name
        assert list(tensor.shape()) == [1, 1], spec.name


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tensors_for_a_plain_caption(protocol):
    inputs = _tensors.build_inputs(protocol, b"img", None, GenerationSettings())
    assert [tensor.name() for tensor in inputs] == [IMAGE.name]
    outputs = _tensors.requested_outputs(protocol)
    assert [output.name() for output in outputs] == ["text_output"]


def test_request_arrays_values_and_dtypes():
    arrays = _tensors.request_arrays("é".encode() + b"\x00img", "Question: où? Answer:", ALL_SETTINGS)
    assert arrays["image"].dtype == object and arrays["image"][0, 0] == "é".encode() + b"\x00img"
    assert arrays["text_input"][0, 0] == "Question: où? Answer:".encode()
    for spec in GENERATION_INPUTS:
        array = arrays[spec.name]
        assert array.shape == (1, 1)
        assert array.dtype == np.dtype(spec.numpy_dtype), spec.name
    assert arrays["random_seed"][0, 0] == 2**63 + 5
    assert arrays["temperature"][0, 0] == np.float32(0.7)
    assert arrays["max_tokens"][0, 0] == 20


def test_request_arrays_type_checks():
    with pytest.raises(TypeError, match="image"):
        _tensors.request_arrays("not bytes", None, GenerationSettings())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompt"):
        _tensors.request_arrays(b"x", b"bytes prompt", GenerationSettings())  # type: ignore[arg-type]


def test_grpc_tensor_payload_is_the_serialised_bytes():
    inputs = _tensors.build_inputs("grpc", b"abc", "hi", GenerationSettings(max_tokens=7))
    raw = {tensor.name(): tensor._get_content() for tensor in inputs}
    assert raw["image"] == serialize_byte_tensor(np.array([[b"abc"]], dtype=object)).item()
    assert np.frombuffer(raw["max_tokens"], dtype=np.int32).tolist() == [7]


def test_read_text_from_a_grpc_result():
    from tritonclient.grpc import InferResult, service_pb2

    response = service_pb2.ModelInferResponse()
    output = response.outputs.add()
    output.name, output.datatype = "text_output", "BYTES"
    output.shape.extend([1, 1])
    text = "a red sun over green ground — ünïcode"
    response.raw_output_contents.append(
        serialize_byte_tensor(np.array([[text.encode()]], dtype=object)).item()
    )
    assert _tensors.read_text(InferResult(response)) == text


def test_read_text_from_an_http_result():
    from tritonclient.http import InferResult

    body = json.dumps(
        {"outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1, 1], "data": ["a boat"]}]}
    ).encode()
    assert _tensors.read_text(InferResult.from_response_body(body)) == "a boat"


def test_read_text_rejects_a_missing_output():
    class Empty:
        def as_numpy(self, name):
            return None

    with pytest.raises(ValueError, match="text_output"):
        _tensors.read_text(Empty())


def test_unknown_protocol():
    with pytest.raises(ValueError, match="protocol"):
        _tensors.build_inputs("websocket", b"x", None, GenerationSettings())


# -- images --------------------------------------------------------------------------------------
def test_image_from_path_str_and_path_is_read_as_is():
    path = SAMPLES / "sky_circle.jpg"
    assert image_bytes(path) == path.read_bytes()
    assert image_bytes(str(path)) == path.read_bytes()


def test_image_from_bytes_is_sent_as_is():
    assert image_bytes(b"not even an image") == b"not even an image"
    assert image_bytes(bytearray(b"abc")) == b"abc"
    assert image_bytes(memoryview(b"abc")) == b"abc"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_pil_image_is_encoded_losslessly_as_png(mode):
    image = Image.linear_gradient("L").resize((37, 23)).convert("RGB" if mode != "I;16" else "I")
    image = image.convert(mode) if mode != "I;16" else Image.open(SAMPLES / "gray16_ramp.png")
    data = image_bytes(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == image.size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_missing_image_file(tmp_path):
    with pytest.raises(InvalidImageError, match="not found"):
        image_bytes(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImageError, match="directory"):
        image_bytes(tmp_path)


def test_unsupported_image_object():
    with pytest.raises(InvalidImageError, match="unsupported image type int"):
        image_bytes(3)  # type: ignore[arg-type]
    assert issubclass(InvalidImageError, Blip2ClientError)


# -- prompts -------------------------------------------------------------------------------------
def test_vqa_prompts():
    assert vqa_prompt("opt", "what is this?") == "Question: what is this? Answer:"
    assert vqa_prompt("t5", "what is this?") == "Question: what is this? Short answer:"


def test_chat_prompt_without_history_is_the_vqa_prompt():
    for family in ("opt", "t5"):
        assert chat_prompt(family, [], "why?") == vqa_prompt(family, "why?")


def test_chat_prompt_opt_follows_lavis():
    history = [("what is in the sky?", "a sun"), ("what colour is it?", "red")]
    assert chat_prompt("opt", history, "is it day?") == (
        "Question: what is in the sky? Answer: a sun. Question: what colour is it? Answer: red."
        " Question: is it day? Answer:"
    )


def test_chat_prompt_t5():
    assert (
        chat_prompt("t5", [("a?", "b")], "c?") == "Question: a? Short answer: b. Question: c? Short answer:"
    )


def test_unknown_family():
    with pytest.raises(ValueError, match="llama"):
        vqa_prompt("llama", "q")
    with pytest.raises(ValueError, match="llama"):
        chat_prompt("llama", [], "q")


def test_family_from_grpc_and_http_configs():
    grpc_config = {"config": {"name": "blip2_llm", "parameters": {"llm_family": {"string_value": "t5"}}}}
    http_config = {"name": "blip2_llm", "parameters": {"llm_family": {"string_value": "opt"}}}
    assert family_from_model_config(grpc_config) == "t5"
    assert family_from_model_config(http_config) == "opt"


def test_family_defaults_to_opt_when_absent():
    assert family_from_model_config({"config": {"name": "blip2_llm"}}) == "opt"
    assert family_from_model_config({"parameters": {"device": {"string_value": "cpu"}}}) == "opt"
    assert family_from_model_config({"parameters": {"llm_family": {"string_value": ""}}}) == "opt"


def test_unknown_family_from_the_server_is_a_client_error():
    with pytest.raises(ServerError, match="llm_family"):
        llm_family_from_config({"parameters": {"llm_family": {"string_value": "llama"}}})


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [
        ("StatusCode.INVALID_ARGUMENT", InvalidRequestError, "INVALID_ARGUMENT"),
        ("StatusCode.UNAVAILABLE", ServerUnavailableError, "UNAVAILABLE"),
        ("StatusCode.DEADLINE_EXCEEDED", InferenceTimeoutError, "DEADLINE_EXCEEDED"),
        ("StatusCode.CANCELLED", RequestCancelledError, "CANCELLED"),
        ("StatusCode.INTERNAL", ServerError, "INTERNAL"),
        ("StatusCode.NOT_FOUND", ServerError, "NOT_FOUND"),
        ("400", InvalidRequestError, "400"),
        ("503", ServerUnavailableError, "503"),
        ("504", InferenceTimeoutError, "504"),
        ("500", ServerError, "500"),
    ],
)
def test_error_mapping(status, expected, code):
    exc = InferenceServerException(msg="'max_tokens' must be\n in [1, 512], got 0", status=status)
    mapped = map_triton_error(exc)
    assert type(mapped) is expected
    assert isinstance(mapped, Blip2ClientError)
    assert mapped.message == "'max_tokens' must be in [1, 512], got 0"
    assert str(mapped) == mapped.message
    assert mapped.status == code


def test_error_mapping_without_status():
    assert (
        type(map_triton_error(InferenceServerException("failed to obtain inference response"))) is ServerError
    )
    timeout = map_triton_error(InferenceServerException("Deadline Exceeded"))
    assert type(timeout) is InferenceTimeoutError and timeout.status is None


def test_transport_errors_are_mapped():
    assert type(map_triton_error(ConnectionRefusedError(111, "Connection refused"))) is ServerUnavailableError
    assert type(map_triton_error(TimeoutError())) is InferenceTimeoutError
    assert type(map_triton_error(asyncio.TimeoutError())) is InferenceTimeoutError
    mapped = InvalidRequestError("x")
    assert map_triton_error(mapped) is mapped


def test_translated_errors_chains_and_sets_the_index():
    with pytest.raises(InvalidRequestError) as info, translated_errors(index=4):
        raise InferenceServerException(msg="bad image", status="StatusCode.INVALID_ARGUMENT")
    assert info.value.index == 4
    assert isinstance(info.value.__cause__, InferenceServerException)
    with pytest.raises(KeyError), translated_errors():
        raise KeyError("not a transport error")


# -- options -------------------------------------------------------------------------------------
def test_client_options_defaults_and_urls():
    grpc = ClientOptions.create(None, "grpc", "blip2", 60.0, 30.0, 16)
    assert grpc.url == "localhost:8001"
    http = ClientOptions.create(None, "HTTP", "blip2", 60.0, 30.0, 16)
    assert (http.url, http.protocol) == ("localhost:8000", "http")
    assert ClientOptions.create("http://host:9000/", "http", "blip2", 1, 1, 1).url == "host:9000"


def test_client_options_from_the_environment(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA bundle")
    monkeypatch.setenv("BLIP2_TRITON_URL", "https://gateway.example:443/")
    monkeypatch.setenv("BLIP2_TRITON_PROTOCOL", "http")
    monkeypatch.setenv("BLIP2_TRITON_CA_FILE", str(ca))
    monkeypatch.setenv("BLIP2_TRITON_HEADERS", "Authorization: Bearer x\n\nX-Tenant: a:b")
    options = ClientOptions.create(None, None, "blip2", 1, 1, 1)
    assert (options.url, options.protocol) == ("gateway.example:443", "http")
    assert (options.network.tls, options.network.ca_file) == (True, str(ca))
    assert options.network.call_headers("http") == {
        "headers": {"Authorization": "Bearer x", "X-Tenant": "a:b"}
    }
    assert options.network.call_headers("grpc") == {
        "headers": {"authorization": "Bearer x", "x-tenant": "a:b"}
    }
    assert options.network.connect_kwargs("http", asynchronous=False) == {
        "ssl": True,
        "ssl_options": {"ca_certs": str(ca)},
        "insecure": False,
    }
    explicit = ClientOptions.create("grpcs://host:1", "grpc", "blip2", 1, 1, 1, headers={})
    assert (explicit.url, explicit.protocol, explicit.network.headers) == ("host:1", "grpc", ())
    assert explicit.network.connect_kwargs("grpc", asynchronous=True)["root_certificates"] == str(ca)
    plain = ClientOptions.create("localhost:8001", "grpc", "blip2", 1, 1, 1, tls=False)  # env CA unread
    assert (
        plain.network.tls,
        plain.network.ca_file,
        plain.network.connect_kwargs("grpc", asynchronous=False),
    ) == (
        False,
        None,
        {},
    )


@pytest.mark.parametrize(
    ("environment", "kwargs", "message"),
    [
        (
            {"BLIP2_TRITON_CA_FILE": "/no/such.pem"},
            {},
            "ca_file must be a readable file.*BLIP2_TRITON_CA_FILE",
        ),
        ({"BLIP2_TRITON_HEADERS": "no colon"}, {}, "BLIP2_TRITON_HEADERS: a header is 'Name: value'"),
        ({"BLIP2_TRITON_TLS": "maybe"}, {}, "BLIP2_TRITON_TLS must be 1 or 0"),
        ({}, {"cert_file": __file__}, "cert_file and key_file go together"),
        ({}, {"tls": True, "insecure": True}, "insecure .* is for http only"),
        ({}, {"headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid HTTP header name"),
        ({}, {"headers": {"X-A": "one\ntwo"}}, "one-line str value"),
        ({"BLIP2_TRITON_URL": "http://host:1"}, {"ca_file": __file__}, "need tls"),
    ],
)
def test_client_network_options_rejected(monkeypatch, environment, kwargs, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Blip2Client(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocol": "ws"},
        {"inference_timeout_s": 0},
        {"init_timeout_s": -1.0},
        {"max_concurrency": 0},
        {"model_name": ""},
    ],
)
def test_client_options_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Blip2Client("localhost:1", **kwargs)


def test_batch_prompts():
    assert batch_prompts(None, 2) == [None, None]
    assert batch_prompts("p", 3) == ["p", "p", "p"]
    assert batch_prompts(["a", None], 2) == ["a", None]
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        batch_prompts(["a", "b"], 3)


# -- a server that is not there ------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_closed_port_is_server_unavailable(protocol):
    image = SAMPLES / "sky_circle.jpg"
    with Blip2Client(f"localhost:{closed_port()}", protocol=protocol, init_timeout_s=5) as client:
        assert client.is_ready() is False
        with pytest.raises(ServerUnavailableError):
            client.caption(image)
        with pytest.raises(ServerUnavailableError) as info:
            client.caption_batch([image, image])
        assert info.value.index == 0
        with pytest.raises(ServerUnavailableError, match=r"not ready after 0\.3 s"):
            client.wait_until_ready(0.3)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_closed_port_is_server_unavailable(protocol):
    image = SAMPLES / "sky_circle.jpg"

    async def main():
        async with AsyncBlip2Client(
            f"localhost:{closed_port()}", protocol=protocol, init_timeout_s=5
        ) as client:
            assert await client.is_ready() is False
            with pytest.raises(ServerUnavailableError):
                await client.caption(image)
            with pytest.raises(ServerUnavailableError):
                await client.caption_batch([image, image])

    asyncio.run(main())


def test_closed_client_raises():
    client = Blip2Client("localhost:1")
    client.close()
    client.close()
    with pytest.raises(Blip2ClientError, match="closed"):
        client.caption(b"x")
    assert client.is_ready() is False


def test_generation_keywords_are_checked_before_sending():
    with Blip2Client(f"localhost:{closed_port()}") as client:
        with pytest.raises(TypeError, match="max_new_tokens"):
            client.caption(b"x", max_new_tokens=3)
        with pytest.raises(InvalidImageError):
            client.caption(Path("/nonexistent/image.png"))


# -- CLI -----------------------------------------------------------------------------------------
@pytest.fixture()
def parser():
    parser = argparse.ArgumentParser(prog="blip2-triton")
    command.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_caption_arguments(parser):
    args = parser.parse_args(
        [
            "caption",
            "a.jpg",
            "b.png",
            "--prompt",
            "a photo of",
            "--url",
            "host:1234",
            "--protocol",
            "http",
            "--max-tokens",
            "12",
            "--beam-width",
            "3",
            "--temperature",
            "0.5",
            "--top-p",
            "0.9",
            "--top-k",
            "7",
            "--seed",
            "42",
            "--json",
        ]
    )
    assert args.images == ["a.jpg", "b.png"]
    assert (args.prompt, args.url, args.protocol, args.json) == ("a photo of", "host:1234", "http", True)
    assert command.settings_from_args(args) == GenerationSettings(
        max_tokens=12, beam_width=3, temperature=0.5, top_p=0.9, top_k=7, random_seed=42
    )
    assert args.func is command.run_caption
    assert Blip2ClientError in args.expected_errors


def test_cli_ask_arguments_and_defaults(parser):
    args = parser.parse_args(["ask", "a.jpg", "what is it?"])
    assert (args.image, args.question) == ("a.jpg", "what is it?")
    # url and protocol unset: the SDK takes BLIP2_TRITON_URL / _PROTOCOL, else localhost and grpc
    assert (args.url, args.protocol, args.model, args.json) == (None, None, "blip2", False)
    assert command.settings_from_args(args) == GenerationSettings()
    assert args.func is command.run_ask


@pytest.mark.parametrize(
    "argv",
    [
        ["caption"],
        ["ask", "a.jpg"],
        ["caption", "a.jpg", "--max-tokens", "ten"],
        ["caption", "a", "--protocol", "x"],
    ],
)
def test_cli_usage_errors(parser, argv):
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2


def test_cli_missing_image_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["caption", str(tmp_path / "missing.jpg"), "--url", "localhost:1"]) == 1
    err = capsys.readouterr().err
    assert err == f"blip2-triton: error: image file not found: {tmp_path / 'missing.jpg'}\n"
    assert cli.main(["ask", str(tmp_path), "why?"]) == 1
    assert capsys.readouterr().err == f"blip2-triton: error: image file is not a file: {tmp_path}\n"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cli_unreachable_server_is_a_one_line_error(capsys, protocol):
    image = str(SAMPLES / "sky_circle.jpg")
    argv = ["caption", image, "--url", f"localhost:{closed_port()}", "--protocol", protocol]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"blip2-triton: error: {image}: "), captured.err


def test_empty_batch_sends_nothing():
    with Blip2Client(f"localhost:{closed_port()}") as client:
        assert client.caption_batch([]) == []

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}", protocol="http") as client:
            return await client.caption_batch([])

    assert asyncio.run(main()) == []


def test_cli_flags_are_the_contract_settings(parser):
    argv = ["caption", "a.jpg"]
    for spec in GENERATION_INPUTS:
        argv += ["--" + spec.name.replace("_", "-"), "1"]
    args = parser.parse_args(argv)
    assert command.settings_from_args(args).to_dict() == dict.fromkeys(GENERATION_INPUT_NAMES, 1)
    help_text = parser._subparsers._group_actions[0].choices["caption"].format_help()
    assert all(spec.doc.split()[0] in help_text for spec in GENERATION_INPUTS)


def test_cli_seed_is_an_alias_of_random_seed(parser):
    for flag in ("--seed", "--random-seed"):
        args = parser.parse_args(["ask", "a.jpg", "why?", flag, "7"])
        assert command.settings_from_args(args) == GenerationSettings(random_seed=7)


# -- the twins: same members, one flavour blocking, one awaited --------------------------------------
def _public_members(cls: type) -> dict[str, object]:
    return {
        name: inspect.getattr_static(cls, name)
        for name in dir(cls)
        if not name.startswith("_") and name not in ("close",)
    }


@pytest.mark.parametrize(
    ("blocking", "awaited", "plain"),
    [(Blip2Client, AsyncBlip2Client, {"chat"}), (ChatSession, AsyncChatSession, {"reset"})],
)
def test_sync_and_async_twins_have_the_same_members(blocking, awaited, plain):
    members = _public_members(blocking)
    assert members.keys() == _public_members(awaited).keys()
    for name, member in members.items():
        twin = inspect.getattr_static(awaited, name)
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        parameters = inspect.signature(member).parameters
        assert parameters == inspect.signature(twin).parameters, name
        if name.startswith("stream_"):  # an iterator of pieces: a generator and an async generator
            assert inspect.isasyncgenfunction(twin), name
        else:
            assert inspect.iscoroutinefunction(twin) is (name not in plain), name
        assert not inspect.iscoroutinefunction(member), name


def _family_config(family: str) -> dict:
    return {"config": {"name": "blip2_stream", "parameters": {"llm_family": {"string_value": family}}}}


def test_llm_family_is_read_once_the_same_way_by_both_clients(monkeypatch):
    asked: list[str] = []

    def model_config(model):
        asked.append(model)
        return _family_config("t5")

    async def model_config_async(model):
        return model_config(model)

    with Blip2Client(f"localhost:{closed_port()}") as client:
        monkeypatch.setattr(client.transport, "model_config", model_config)
        assert client.llm_family() == "t5" and client.llm_family() == "t5"

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}") as client:
            monkeypatch.setattr(client.transport, "model_config", model_config_async)
            return await client.llm_family(), await client.llm_family()

    assert asyncio.run(main()) == ("t5", "t5")
    assert asked == ["blip2_stream", "blip2_stream"]  # once per client


def test_llm_family_of_an_older_server_comes_from_blip2_llm(monkeypatch):
    """Exports before the engine moved into blip2_stream named the family on blip2_llm."""
    asked: list[str] = []

    def model_config(model):
        asked.append(model)
        return {"config": {"name": model}} if model == "blip2_stream" else _family_config("t5")

    with Blip2Client(f"localhost:{closed_port()}") as client:
        monkeypatch.setattr(client.transport, "model_config", model_config)
        assert client.llm_family() == "t5"
    assert asked == ["blip2_stream", "blip2_llm"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_chat_serialises_the_image_once_per_session(monkeypatch, protocol):
    serialised: list[bytes] = []
    image_input = _tensors.image_input

    def counting_image_input(protocol, image):
        serialised.append(image)
        return image_input(protocol, image)

    monkeypatch.setattr(_tensors, "image_input", counting_image_input)
    picture = Image.linear_gradient("L").convert("RGB")  # a PIL image: PNG-encoded for the session
    sent = []

    def infer(call, index=None):
        sent.append(call)
        return f"answer {len(sent)}"

    async def infer_async(call, index=None):
        return infer(call, index)

    async def model_config_async(model):
        return _family_config("opt")

    with Blip2Client(f"localhost:{closed_port()}", protocol=protocol) as client:
        monkeypatch.setattr(client.transport, "model_config", lambda model: _family_config("opt"))
        monkeypatch.setattr(client.transport, "infer", infer)
        session = client.chat(picture)
        assert [session.ask(q) for q in ("a?", "b?")] == ["answer 1", "answer 2"]

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}", protocol=protocol) as client:
            monkeypatch.setattr(client.transport, "infer", infer_async)
            monkeypatch.setattr(client.transport, "model_config", model_config_async)
            session = client.chat(picture)
            return [await session.ask("c?"), await session.ask("d?", max_tokens=3)]

    assert asyncio.run(main()) == ["answer 3", "answer 4"]
    assert serialised == [image_bytes(picture)] * 2  # once per session, not once per turn
    first, second, third, fourth = (call.inputs for call in sent)
    assert first[0] is second[0] and third[0] is fourth[0]
    prompts = [inputs[1].name() for inputs in (first, second)]
    assert prompts == ["text_input", "text_input"]
    assert [tensor.name() for tensor in fourth] == ["image", "text_input", "max_tokens"]


# -- fan-out -------------------------------------------------------------------------------------
class _Answer:
    """A fake sent call: the item doubled, or InvalidRequestError for a negative item."""

    def __init__(self, transport, item, index):
        self.transport, self.item, self.index = transport, item, index
        transport.in_flight += 1
        transport.peak = max(transport.peak, transport.in_flight)

    def result(self):
        self.transport.in_flight -= 1
        if self.item < 0:
            raise InvalidRequestError(f"bad item {self.item}", index=self.index)
        return self.item * 2

    def cancel(self):
        self.transport.cancelled += 1


class _FakeTransport:
    def __init__(self):
        self.in_flight = self.peak = self.cancelled = 0

    def check_open(self):
        pass

    def submit(self, call, index):
        return _Answer(self, call, index)

    async def infer(self, call, index=None):
        answer = _Answer(self, call, index)
        await asyncio.sleep(0.001 * (call % 3))  # answers come back out of order
        return answer.result()


def _run_fan_outs(items, **options):
    sync = fan_out(_FakeTransport(), items, lambda item: item, max_concurrency=3, progress=False, **options)
    transport = _FakeTransport()
    awaited = asyncio.run(
        fan_out_async(transport, items, lambda item: item, max_concurrency=3, progress=False, **options)
    )
    return sync, awaited, transport


def test_fan_outs_keep_order_and_the_window():
    items = list(range(20))
    sync, awaited, transport = _run_fan_outs(items)
    assert sync == awaited == [2 * i for i in items]
    assert transport.peak <= 3


def test_fan_outs_raise_the_failed_item_with_its_index():
    for run in (
        lambda: fan_out(_FakeTransport(), [1, 2, -3, 4], lambda i: i, max_concurrency=2, progress=False),
        lambda: asyncio.run(
            fan_out_async(_FakeTransport(), [1, 2, -3, 4], lambda i: i, max_concurrency=2, progress=False)
        ),
    ):
        with pytest.raises(InvalidRequestError, match="bad item -3") as info:
            run()
        assert info.value.index == 2


def test_fan_outs_keep_refused_items_in_their_slots():
    def make(item):
        if item == 5:
            raise InvalidImageError("unreadable")
        return item

    for results in (
        fan_out(_FakeTransport(), [1, -2, 5, 3], make, max_concurrency=2, keep_refused=True),
        asyncio.run(
            fan_out_async(_FakeTransport(), [1, -2, 5, 3], make, max_concurrency=2, keep_refused=True)
        ),
    ):
        assert results[0] == 2 and results[3] == 6
        assert isinstance(results[1], InvalidRequestError) and results[1].index == 1
        assert isinstance(results[2], InvalidImageError) and results[2].index == 2


# -- streaming: reading responses, errors, cancelling (tritonclient faked below the transport) -------
def _stream_result(piece: str | None = None, *, final: bool = False):
    """A real gRPC ``InferResult`` of ``blip2_stream``: one piece of text, or the empty final one."""
    from tritonclient.grpc import InferResult, service_pb2

    response = service_pb2.ModelInferResponse(model_name="blip2_stream")
    if piece is not None:
        output = response.outputs.add()
        output.name, output.datatype = "text_output", "BYTES"
        output.shape.extend([1, 1])
        payload = serialize_byte_tensor(np.array([[piece.encode()]], dtype=object)).item()
        response.raw_output_contents.append(payload)
    if final:
        response.parameters["triton_final_response"].bool_param = True
    return InferResult(response)


PIECES = ["a", " red", " sun", " — ünï"]


def _answers(pieces=PIECES, error=None):
    """What the server sends: each piece, then the final response (or ``error`` after the pieces)."""
    sent = [(_stream_result(piece), None) for piece in pieces]
    return [*sent, (None, error)] if error is not None else [*sent, (_stream_result(final=True), None)]


class _FakeStreamConnection:
    """``tritonclient.grpc.InferenceServerClient`` as a stream uses it; answers from a worker thread."""

    def __init__(self, answers):
        self.answers, self.stopped, self.closed, self.sent = answers, [], False, []

    def start_stream(self, callback):
        self.callback = callback

    def async_stream_infer(self, model, inputs, outputs=None, enable_empty_final_response=False):
        import threading

        self.sent.append((model, enable_empty_final_response))
        threading.Thread(target=lambda: [self.callback(*answer) for answer in self.answers]).start()

    def stop_stream(self, cancel_requests=False):
        self.stopped.append(cancel_requests)

    def close(self):
        self.closed = True


class _FakeAsyncResponses:
    """``tritonclient.grpc.aio``'s stream response iterator: ``__anext__`` and ``cancel``."""

    def __init__(self, answers):
        self.answers, self.cancelled = list(answers), False

    async def __anext__(self):
        await asyncio.sleep(0)
        if not self.answers:
            await asyncio.sleep(3600)  # a stream that says nothing more
        return self.answers.pop(0)

    def cancel(self):
        self.cancelled = True


class _FakeAsyncConnection:
    def __init__(self, answers):
        self.responses, self.requests = _FakeAsyncResponses(answers), []

    def stream_infer(self, requests, stream_timeout=None):
        self.requests.append((requests, stream_timeout))
        return self.responses


def _stream_call(protocol: str = "grpc"):
    from blip2_triton.client.calls import generation_call
    from blip2_triton.runtime.contract import STREAM_MODEL

    image = _tensors.image_input(protocol, b"img")
    return generation_call(protocol, STREAM_MODEL, image, None, GenerationSettings())


def _sync_transport(monkeypatch, connection, **options):
    from blip2_triton.client.transport import Transport

    transport = Transport(ClientOptions.create(f"localhost:{closed_port()}", "grpc", "blip2", 60, 5, 4))
    monkeypatch.setattr(transport, "_connect", lambda asynchronous: connection)
    return transport


def _async_transport(connection):
    from blip2_triton.client.transport import AsyncTransport

    transport = AsyncTransport(ClientOptions.create(f"localhost:{closed_port()}", "grpc", "blip2", 60, 5, 4))
    transport._connection = connection
    return transport


def test_stream_pieces_come_whole_and_the_stream_ends_at_the_final_response(monkeypatch):
    connection = _FakeStreamConnection(_answers())
    assert list(_sync_transport(monkeypatch, connection).stream(_stream_call())) == PIECES
    assert connection.sent == [("blip2_stream", True)]
    assert connection.stopped == [False] and connection.closed  # nothing to cancel

    async def main():
        connection = _FakeAsyncConnection(_answers())
        pieces = [piece async for piece in _async_transport(connection).stream(_stream_call(), timeout_s=7)]
        return pieces, connection

    pieces, connection = asyncio.run(main())
    assert pieces == PIECES and not connection.responses.cancelled
    requests, deadline = connection.requests[0]
    assert deadline == 7.0  # the call's gRPC deadline is the whole stream's

    async def sent():
        return [request async for request in requests]

    ((request,),) = [asyncio.run(sent())]
    assert request["model_name"] == "blip2_stream"
    assert request["parameters"] == {"triton_enable_empty_final_response": True}  # aio drops the keyword


def test_leaving_a_stream_early_cancels_it(monkeypatch):
    connection = _FakeStreamConnection(_answers())
    for piece in _sync_transport(monkeypatch, connection).stream(_stream_call()):  # noqa: B007
        break  # the iterator is collected here
    assert piece == "a" and connection.stopped == [True] and connection.closed
    connection = _FakeStreamConnection(_answers())
    pieces = _sync_transport(monkeypatch, connection).stream(_stream_call())
    next(pieces)
    pieces.close()
    assert connection.stopped == [True]

    async def main():
        broken = _FakeAsyncConnection(_answers())
        async for _ in _async_transport(broken).stream(_stream_call()):
            break
        await asyncio.sleep(0.01)  # the loop closes the abandoned async generator
        waiting = _FakeAsyncConnection(_answers([]))
        waiting.responses.answers.clear()  # no piece will ever come: the task waits

        async def consume():
            return [piece async for piece in _async_transport(waiting).stream(_stream_call())]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return broken.responses.cancelled, waiting.responses.cancelled

    assert asyncio.run(main()) == (True, True)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("unsupported image: not a recognised image format", InvalidRequestError),
        ("'max_tokens' must be in [1, 512], got 0", InvalidRequestError),
        ("server overloaded: 64 requests wait for a slot", ServerUnavailableError),
        ("Exceeds maximum queue size", ServerUnavailableError),
        ("Request timeout expired", ServerUnavailableError),
        ("request cancelled: the client cancelled it", RequestCancelledError),
        ("internal error: RuntimeError: boom", ServerError),
        ("Request for unknown model: 'blip2_stream' is not found", ServerError),
        ("Deadline Exceeded", InferenceTimeoutError),
    ],
)
def test_stream_errors_are_read_from_their_message(monkeypatch, message, expected):
    """A gRPC stream's error has a message and no status code: the message says what it is."""
    from blip2_triton.client.streaming import stream_error

    assert type(stream_error(InferenceServerException(msg=message))) is expected
    connection = _FakeStreamConnection(_answers(["a"], InferenceServerException(msg=message)))
    pieces = _sync_transport(monkeypatch, connection).stream(_stream_call())
    assert next(pieces) == "a"
    with pytest.raises(expected) as info:
        next(pieces)
    assert info.value.message == message and connection.stopped == [True]

    async def main():
        answers = _answers([], InferenceServerException(msg=message))
        return [
            piece async for piece in _async_transport(_FakeAsyncConnection(answers)).stream(_stream_call())
        ]

    with pytest.raises(expected):
        asyncio.run(main())


def test_a_stream_status_code_wins_over_its_message():
    from blip2_triton.client.streaming import stream_error

    error = InferenceServerException(msg="Socket closed", status="StatusCode.UNAVAILABLE")
    assert type(stream_error(error)) is ServerUnavailableError


def test_grpc_aio_errors_are_mapped_by_their_code():
    """``tritonclient.grpc.aio``'s stream raises grpc's own errors, not InferenceServerException."""
    import grpc

    for code, expected in (
        (grpc.StatusCode.DEADLINE_EXCEEDED, InferenceTimeoutError),
        (grpc.StatusCode.UNAVAILABLE, ServerUnavailableError),
        (grpc.StatusCode.CANCELLED, RequestCancelledError),
        (grpc.StatusCode.INTERNAL, ServerError),
    ):
        error = grpc.aio.AioRpcError(
            code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Deadline\nExceeded"
        )
        mapped = map_triton_error(error)
        assert type(mapped) is expected and mapped.status == code.name
        assert mapped.message == "Deadline Exceeded"
        with pytest.raises(expected), translated_errors():
            raise error


def test_a_stream_that_says_nothing_times_out_and_is_cancelled(monkeypatch):
    connection = _FakeStreamConnection([])
    pieces = _sync_transport(monkeypatch, connection).stream(_stream_call(), timeout_s=0.2)
    with pytest.raises(InferenceTimeoutError, match=r"within 0\.2 s"):
        list(pieces)
    assert connection.stopped == [True] and connection.closed


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf"), True, "5"])
def test_stream_timeouts_are_checked_before_sending(timeout_s):
    with Blip2Client(f"localhost:{closed_port()}") as client, pytest.raises(ValueError, match="timeout_s"):
        client.stream_caption(SAMPLES / "sky_circle.jpg", timeout_s=timeout_s)


def test_streaming_over_http_says_it_needs_grpc():
    from blip2_triton.client import StreamingNotSupportedError

    image = SAMPLES / "sky_circle.jpg"
    with (
        Blip2Client(f"localhost:{closed_port()}", protocol="http") as client,
        pytest.raises(StreamingNotSupportedError, match="streaming needs gRPC"),
    ):
        client.stream_caption(image)  # at once, before anything is sent

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}", protocol="http") as client:
            return [piece async for piece in client.stream_caption(image)]

    with pytest.raises(StreamingNotSupportedError, match="streaming needs gRPC"):
        asyncio.run(main())
    assert issubclass(StreamingNotSupportedError, Blip2ClientError)


def test_stream_from_an_unreachable_server_is_server_unavailable():
    image = SAMPLES / "sky_circle.jpg"
    with Blip2Client(f"localhost:{closed_port()}") as client, pytest.raises(ServerUnavailableError):
        list(client.stream_caption(image))

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}") as client:
            return [piece async for piece in client.stream_caption(image)]

    with pytest.raises(ServerUnavailableError):
        asyncio.run(main())


def _chat_with_stream(monkeypatch, client, answers_of):
    """Chat sessions of ``client`` whose streams answer ``answers_of(call)`` (family: OPT)."""
    sent = []

    def stream(call, timeout_s=None):
        sent.append(call)
        connection = _FakeStreamConnection(answers_of(call))
        transport = _sync_transport(monkeypatch, connection)
        return transport.stream(call)

    async def stream_async(call, timeout_s=None):
        sent.append(call)
        async for piece in _async_transport(_FakeAsyncConnection(answers_of(call))).stream(call):
            yield piece

    async def model_config_async(model):
        return _family_config("opt")

    monkeypatch.setattr(
        client.transport, "stream", stream_async if isinstance(client, AsyncBlip2Client) else stream
    )
    config = (
        model_config_async if isinstance(client, AsyncBlip2Client) else (lambda model: _family_config("opt"))
    )
    monkeypatch.setattr(client.transport, "model_config", config)
    return sent


def test_chat_stream_records_the_turn_once_the_stream_is_used_up(monkeypatch):
    with Blip2Client(f"localhost:{closed_port()}") as client:
        sent = _chat_with_stream(monkeypatch, client, lambda call: _answers())
        chat = client.chat(SAMPLES / "sky_circle.jpg")
        pieces = chat.ask("what is it?", stream=True)
        assert chat.history == ()  # nothing yet: the answer is still coming
        assert "".join(pieces) == "".join(PIECES)
        assert chat.history == (("what is it?", "".join(PIECES)),)
        for _ in chat.ask("and now?", stream=True):
            break  # left early: cancelled, not recorded
        assert chat.history == (("what is it?", "".join(PIECES)),)
        assert [call.model for call in sent] == ["blip2_stream", "blip2_stream"]
        second_prompt = sent[1].inputs[1]._get_content().decode("utf-8", "replace")
        assert "".join(PIECES) in second_prompt  # the recorded turn is in the next prompt

    async def main():
        async with AsyncBlip2Client(f"localhost:{closed_port()}") as client:
            _chat_with_stream(monkeypatch, client, lambda call: _answers())
            chat = client.chat(SAMPLES / "sky_circle.jpg")
            pieces = [piece async for piece in await chat.ask("what is it?", stream=True)]
            async for _ in await chat.ask("and now?", stream=True):
                break
            return pieces, chat.history

    pieces, history = asyncio.run(main())
    assert pieces == PIECES and history == (("what is it?", "".join(PIECES)),)
