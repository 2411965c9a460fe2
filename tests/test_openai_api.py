"""The OpenAI-compatible frontend against real served models, driven by the real ``openai`` package.

Servers: the session's tiny OPT (``opt_server``) and tiny Flan-T5 (``t5_server``) behind standalone
``blip2-triton openai`` processes (auth off); a slow one-slot OPT started by ``blip2-triton serve
--openai-port`` (auth on, http image URLs from 127.0.0.1 allowed) for disconnects, overload and the
drain; a tiny retrieval export for embeddings and scores.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from blip2_triton.client import Blip2Client
from blip2_triton.openai_api.served_model import load_served_model
from blip2_triton.server import free_port

from .conftest import start_server
from .serve_helpers import start_serve

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-17"
LONG_TOKENS = 120  # on the slow model: long enough to leave, to fill the engine, to drain


# -- helpers -------------------------------------------------------------------------------------


def data_url(image: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(image).decode()}"


def user(image_url: str | None, text: str | None = None) -> dict:
    parts = [] if image_url is None else [{"type": "image_url", "image_url": {"url": image_url}}]
    if text is not None:
        parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


class Frontend:
    """A ``blip2-triton openai`` process on a free port."""

    def __init__(self, triton_url: str, repository: Path, log: Path, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "blip2_triton.cli", "openai", f"--triton-url={triton_url}"]
        command += [f"--model-repository={repository}", f"--port={self.port}", *flags]
        self.log = log
        self.repository = repository
        self.process = subprocess.Popen(
            command, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        wait_live(self.url, self.process, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_live(url: str, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"frontend exited: {log.read_text() if log else ''}")
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"frontend at {url} never came up")


def counter(text: str, name: str, **labels: str) -> float:
    """A Prometheus sample's value from an exposition text (0 when absent)."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def engine_cancelled(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        return counter(response.read().decode(), "blip2_requests_cancelled_total", model="blip2_stream")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(sample_images) -> list[bytes]:
    return [path.read_bytes() for path in sample_images[:4]]


@pytest.fixture(scope="module")
def opt_api(opt_server, tmp_path_factory):
    """The standalone frontend before the session's tiny OPT server; auth off."""
    log = tmp_path_factory.mktemp("openai") / "frontend.log"
    frontend = Frontend(opt_server.grpc_url, opt_server.repository, log)
    frontend.model = load_served_model(opt_server.repository)
    try:
        yield frontend
    finally:
        frontend.stop()


@pytest.fixture(scope="module")
def client(opt_api):
    return openai.OpenAI(base_url=f"{opt_api.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def sdk(opt_server):
    with Blip2Client(opt_server.grpc_url, inference_timeout_s=120) as connected:
        yield connected


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """``blip2-triton serve --openai-port`` on an 8 x 512 OPT with ONE slot and a queue of one
    (a long answer takes a while); the API key on; http image URLs from 127.0.0.1 allowed."""
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    base = tmp_path_factory.mktemp("openai_slow")
    checkpoint = build_tiny_checkpoint(
        base / "slow-opt", "opt", image_size=64, llm_hidden=512, llm_layers=8, llm_context=1024
    )
    options = ExportOptions(max_batch_size=8, max_active_sequences=1, max_queued_requests=1)
    export_repository(str(checkpoint), base / "repository", options, quiet=True)
    port = free_port()
    served = start_serve(
        base / "repository",
        base,
        f"--openai-port={port}",
        "--openai-allow-image-host=127.0.0.1",
        "--probe-interval=0",
        env={"BLIP2_TRITON_API_KEY": KEY},
    )
    try:
        served.wait_ready()
        served.api_url = f"http://127.0.0.1:{port}"
        served.model_id = load_served_model(base / "repository").id
        served.repository = base / "repository"
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def slow_client(slow):
    return openai.OpenAI(base_url=f"{slow.api_url}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def retrieval_api(tmp_path_factory):
    """A tiny retrieval export, served, with its frontend; and the SDK on the same server."""
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    base = tmp_path_factory.mktemp("openai_retrieval")
    checkpoint = build_tiny_checkpoint(base / "tiny-itm", "retrieval", image_size=64)
    export_repository(str(checkpoint), base / "repository", ExportOptions(max_batch_size=8), quiet=True)
    server = start_server(base / "repository", base / "server.log")
    frontend = None
    try:
        frontend = Frontend(server.grpc_url, base / "repository", base / "frontend.log")
        frontend.grpc_url = server.grpc_url
        yield frontend
    finally:
        if frontend is not None:
            frontend.stop()
        server.stop()


# -- models, chat, streams -------------------------------------------------------------------------


def test_models_names_the_checkpoint(client, opt_api):
    (card,) = client.models.list().data
    assert card.id == opt_api.model.id == "checkpoint"  # the tiny checkpoint's folder name
    assert card.model_extra["family"] == "opt" and card.model_extra["capability"] == "generate"
    assert client.models.retrieve(card.id).id == card.id


def test_chat_answers_equal_the_sdks(client, opt_api, sdk, images):
    """Caption, question, a three-turn chat, beam search and seeded sampling: the SDK's texts."""
    model = opt_api.model.id
    image = images[0]
    url = data_url(image)
    caption = client.chat.completions.create(model=model, messages=[user(url)], max_tokens=12)
    assert caption.choices[0].message.content == sdk.caption(image, max_tokens=12)
    asked = client.chat.completions.create(model=model, messages=[user(url, "what is it?")], max_tokens=8)
    assert asked.choices[0].message.content == sdk.ask(image, "what is it?", max_tokens=8)

    session = sdk.chat(image)
    messages = []
    for question in ("what is it?", "what colour is it?", "is it big?"):
        messages.append(user(url, question) if not messages else {"role": "user", "content": question})
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=6)
        text = answer.choices[0].message.content
        assert text == session.ask(question, max_tokens=6)
        messages.append({"role": "assistant", "content": text})

    beams = client.chat.completions.create(
        model=model, messages=[user(url)], max_tokens=8, extra_body={"beam_width": 3}
    )
    assert beams.choices[0].message.content == sdk.caption(image, max_tokens=8, beam_width=3)
    sampled = client.chat.completions.create(
        model=model, messages=[user(url)], max_tokens=8, temperature=0.9, top_p=0.9, seed=7
    )
    expected = sdk.caption(image, max_tokens=8, temperature=0.9, top_p=0.9, random_seed=7)
    assert sampled.choices[0].message.content == expected


def test_usage_counts_image_and_prompt_tokens_as_the_server(client, opt_api, opt_server, images):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(opt_server.repository / "blip2_stream" / "1" / "tokenizer")
    question = "what colour is the large object?"
    answer = client.chat.completions.create(
        model=opt_api.model.id, messages=[user(data_url(images[1]), question)], max_tokens=5
    )
    image_tokens = opt_api.model.image_tokens
    prompt_ids = tokenizer(f"Question: {question} Answer:")["input_ids"]
    assert answer.usage.prompt_tokens == image_tokens + len(prompt_ids)
    assert answer.usage.prompt_tokens_details.image_tokens == image_tokens
    text = answer.choices[0].message.content
    completion = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    # a random model's pieces may tokenise back into more tokens than it generated: capped
    assert answer.usage.completion_tokens == min(completion, 5)
    assert answer.choices[0].finish_reason == ("length" if completion >= 5 else "stop")


def test_stream_chunks_join_to_the_unary_text(client, opt_api, images):
    model = opt_api.model.id
    messages = [user(data_url(images[2]), "what is in the picture?")]
    unary = client.chat.completions.create(model=model, messages=messages, max_tokens=20)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([p for p in pieces if p]) > 1  # text as it comes, not one lump
    assert "".join(pieces) == unary.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [unary.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == unary.usage
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_async_client_and_several_choices(opt_api, sdk, images):
    """AsyncOpenAI; n=3 sampled with a seed: choice i is the SDK's text with seed + i."""

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{opt_api.url}/v1", api_key="x", max_retries=0) as aclient:
            settings = {"max_tokens": 8, "temperature": 1.0, "seed": 11}
            answer = await aclient.chat.completions.create(
                model=opt_api.model.id, messages=[user(data_url(images[3]))], n=3, **settings
            )
            stream = await aclient.chat.completions.create(
                model=opt_api.model.id, messages=[user(data_url(images[3]))], stream=True, **settings
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return answer, streamed

    answer, streamed = asyncio.run(main())
    texts = [choice.message.content for choice in answer.choices]
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert texts == [
        sdk.caption(images[3], max_tokens=8, temperature=1.0, random_seed=11 + index) for index in range(3)
    ]
    assert streamed == texts[0]


def test_stop_strings_end_the_text_before_them(client, opt_api, images):
    model = opt_api.model.id
    messages = [user(data_url(images[0]))]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=20).choices[0]
    text = full.message.content
    assert len(text) > 4
    stop = text[3:5]
    cut = client.chat.completions.create(model=model, messages=messages, max_tokens=20, stop=[stop, "\u2603"])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


# -- bad input: status and message ------------------------------------------------------------------


def _post(url: str, path: str, body: object, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{url}{path}", content=content, headers={"content-type": "application/json", **headers}, timeout=120
    )


def test_every_bad_request_gets_its_status_and_message(opt_api, images):
    model = opt_api.model.id
    url = data_url(images[0])
    not_an_image = data_url(b"hello, not an image")
    over = "data:image/png;base64," + "A" * ((32 * 1024 * 1024 + 2) // 3 * 4 + 4)
    cases = [
        ({"model": model, "messages": [user(None, "hi")]}, 400, "BLIP-2 needs an image"),
        ({"model": model, "messages": [user(url), user(url)]}, 400, "expected an assistant message"),
        (
            {
                "model": model,
                "messages": [{"role": "user", "content": [*user(url)["content"], *user(url)["content"]]}],
            },
            400,
            "one image per conversation, got 2",
        ),
        ({"model": model, "messages": [user("data:image/png;base64,@@@")]}, 400, "base64 is not valid"),
        ({"model": model, "messages": [user("data:text/plain;base64,aGVsbG8=")]}, 400, "not image/*"),
        ({"model": model, "messages": [user(not_an_image)]}, 400, "image"),
        ({"model": model, "messages": [user(over)]}, 400, "over 33554432 bytes"),
        ({"model": model, "messages": [user("https://example.com/cat.png")]}, 400, "not allowed"),
        ({"model": "gpt-4o", "messages": [user(url)]}, 400, "model 'gpt-4o' is not served here"),
        ({"model": model, "messages": [user(url)], "max_tokens": 0}, 400, "max_tokens"),
        ({"model": model, "messages": [user(url)], "temperature": -1}, 400, "temperature"),
        ({"model": model, "messages": [user(url)], "extra": 1, "beam_width": 99}, 400, "beam_width"),
        ({"model": model, "messages": [user(url)], "n": 9}, 400, "n must be 1 ... 8"),
        ({"model": model, "messages": [user(url)], "n": 2, "stream": True}, 400, "n must be 1 with stream"),
        ({"model": model, "messages": [user(url)], "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        (
            {"model": model, "messages": [{"role": "system", "content": "be nice"}, user(url)]},
            400,
            "no system message",
        ),
        (
            {"model": model, "messages": [user(url)], "tools": [{"type": "function"}]},
            400,
            "tools is not supported",
        ),
        ({"model": model, "messages": [user(url)], "seed": -1}, 400, "random_seed"),
        ({"model": model, "messages": []}, 400, "messages"),
        ({"model": model}, 400, "messages: Field required"),
        (b"{not json", 400, "the request body is not valid JSON"),
        ({"model": model, "input": "a cat"}, 400, "embeddings need a retrieval repository"),
    ]
    for body, status, fragment in cases:
        path = "/v1/embeddings" if isinstance(body, dict) and "input" in body else "/v1/chat/completions"
        answer = _post(opt_api.url, path, body)
        error = answer.json()["error"]
        where = json.dumps(body)[:120] if isinstance(body, dict) else body
        assert answer.status_code == status, (where, answer.text[:300])
        assert fragment in error["message"], (where, error)
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
        assert "Traceback" not in answer.text
    # the openai package raises its own classes for them
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        openai.OpenAI(base_url=f"{opt_api.url}/v1", api_key="x").chat.completions.create(
            model=model, messages=[user(url)], max_tokens=100000
        )


def test_a_body_over_the_limit_is_refused_unread(opt_api):
    """413 on the Content-Length alone: the server answers before a byte of the body is sent."""
    with socket.create_connection(("127.0.0.1", opt_api.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999\r\n\r\n"
        )
        head = b""
        while not head.endswith(b"}}"):  # the status line and headers, then the JSON error
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
        head = head.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "request body is over" in head


def test_health_and_metrics(opt_api, client, images):
    assert httpx.get(f"{opt_api.url}/health", timeout=10).json()["ready"] is True
    before = httpx.get(f"{opt_api.url}/metrics", timeout=10).text
    client.chat.completions.create(model=opt_api.model.id, messages=[user(data_url(images[0]))], max_tokens=2)
    _post(opt_api.url, "/v1/chat/completions", {"model": "nope", "messages": [user(data_url(images[0]))]})
    after = httpx.get(f"{opt_api.url}/metrics", timeout=10).text
    for status in ("200", "400"):
        labels = {"route": "/v1/chat/completions", "status": status}
        assert (
            counter(after, "blip2_openai_requests_total", **labels)
            == counter(before, "blip2_openai_requests_total", **labels) + 1
        )
    assert counter(after, "blip2_openai_request_seconds_count", route="/v1/chat/completions") > 0
    assert "blip2_openai_streams_open 0.0" in after


# -- the README's curl examples ----------------------------------------------------------------------


def _readme_curls() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## OpenAI-compatible API") :]
    block = section[
        section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)
    ]
    return [
        command for command in block.replace("\\\n", " ").splitlines() if command.strip().startswith("curl")
    ]


def test_the_readme_curl_examples_run(opt_api, images, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(images[0])
    commands = _readme_curls()
    assert len(commands) >= 3
    env = {
        **os.environ,
        "API": f"{opt_api.url}/v1",
        "MODEL": opt_api.model.id,
        "IMAGE": str(image),
        "KEY": "unused",
    }
    outputs = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    assert json.loads(outputs[0])["data"][0]["id"] == opt_api.model.id
    assert json.loads(outputs[1])["choices"][0]["message"]["content"]
    assert outputs[2].rstrip().endswith("data: [DONE]")


# -- Flan-T5: the same routes on the session's tiny T5 server ----------------------------------------


def test_flan_t5_chat_and_stream_equal_the_sdks(t5_server, images, tmp_path):
    """A caption, a two-turn chat (T5's ``Short answer:`` template) and a stream: the SDK's texts."""
    frontend = Frontend(t5_server.grpc_url, t5_server.repository, tmp_path / "t5-frontend.log")
    try:
        client = openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="x", max_retries=0)
        (card,) = client.models.list().data
        assert card.model_extra["family"] == "t5"
        url = data_url(images[1])
        with Blip2Client(t5_server.grpc_url, inference_timeout_s=120) as sdk:
            caption = client.chat.completions.create(model=card.id, messages=[user(url)], max_tokens=8)
            assert caption.choices[0].message.content == sdk.caption(images[1], max_tokens=8)
            session, messages = sdk.chat(images[1]), []
            for question in ("what is it?", "what colour is it?"):
                messages.append(
                    user(url, question) if not messages else {"role": "user", "content": question}
                )
                text = client.chat.completions.create(model=card.id, messages=messages, max_tokens=6)
                text = text.choices[0].message.content
                assert text == session.ask(question, max_tokens=6)
                messages.append({"role": "assistant", "content": text})
            assert session.prompt_for("why?").endswith("Question: why? Short answer:")
        streamed = client.chat.completions.create(
            model=card.id, messages=messages[:1], max_tokens=6, stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == messages[1]["content"]
        )
    finally:
        frontend.stop()


# -- serve --openai-port: auth, http images, disconnects, overload, drain ----------------------------


def test_auth_is_on_with_a_key(slow, images):
    body = {"model": slow.model_id, "messages": [user(data_url(images[0]))], "max_tokens": 2}
    assert _post(slow.api_url, "/v1/chat/completions", body).status_code == 401
    wrong = _post(slow.api_url, "/v1/chat/completions", body, authorization="Bearer nope")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert _post(slow.api_url, "/v1/chat/completions", body, authorization=f"Bearer {KEY}").status_code == 200
    assert httpx.get(f"{slow.api_url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{slow.api_url}/health", timeout=10).status_code == 200  # probes need no key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{slow.api_url}/v1", api_key="nope", max_retries=0).models.list()


class _Images(http.server.BaseHTTPRequestHandler):
    image = b""

    def do_GET(self):
        if self.path == "/photo.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_http_image_urls_from_allowed_hosts(slow, slow_client, images):
    _Images.image = images[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        by_url = slow_client.chat.completions.create(
            model=slow.model_id, messages=[user(f"http://127.0.0.1:{port}/photo.png")], max_tokens=4
        )
        by_data = slow_client.chat.completions.create(
            model=slow.model_id, messages=[user(data_url(images[1]))], max_tokens=4
        )
        assert by_url.choices[0].message.content == by_data.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="answered HTTP 404"):
            slow_client.chat.completions.create(
                model=slow.model_id, messages=[user(f"http://127.0.0.1:{port}/missing.png")], max_tokens=4
            )
        with pytest.raises(openai.BadRequestError, match="'localhost' is not allowed"):
            slow_client.chat.completions.create(
                model=slow.model_id, messages=[user(f"http://localhost:{port}/photo.png")], max_tokens=4
            )
    finally:
        server.shutdown()


def _stream_request(slow, image: bytes) -> dict:
    return {
        "model": slow.model_id,
        "messages": [user(data_url(image))],
        "max_tokens": LONG_TOKENS,
        "min_tokens": LONG_TOKENS,
        "stream": True,
    }


def _stream_chat(slow, body: dict):
    """A streamed chat completion on the slow server (a context manager: leaving it closes it)."""
    url = f"{slow.api_url}/v1/chat/completions"
    return httpx.stream("POST", url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=120)


def test_a_client_that_leaves_a_stream_frees_the_slot(slow, slow_client, images):
    """One slot: after a client drops a long stream, a short request is not held back by it,
    and the engine counts the stream cancelled."""
    headers = {"authorization": f"Bearer {KEY}"}
    short = {"model": slow.model_id, "messages": [user(data_url(images[2]))], "max_tokens": 3}
    _post(slow.api_url, "/v1/chat/completions", short, **headers)  # warm
    started = time.monotonic()
    with _stream_chat(slow, _stream_request(slow, images[2])) as full:
        assert sum(1 for line in full.iter_lines() if line.startswith("data:")) > LONG_TOKENS // 2
    long_s = time.monotonic() - started
    before = engine_cancelled(slow.metrics_url)
    with _stream_chat(slow, _stream_request(slow, images[2])) as left:
        lines = left.iter_lines()
        assert next(lines).startswith("data:")
    # the connection is closed: the frontend cancels the gRPC stream, the engine frees the slot
    started = time.monotonic()
    assert _post(slow.api_url, "/v1/chat/completions", short, **headers).status_code == 200
    after_s = time.monotonic() - started
    deadline = time.monotonic() + 20
    while engine_cancelled(slow.metrics_url) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    print(f"\nlong stream {long_s:.2f} s; a 3-token request right after a client left one: {after_s:.2f} s")
    assert engine_cancelled(slow.metrics_url) >= before + 1
    assert after_s < long_s / 2


def test_a_stop_string_ends_a_stream_and_its_request(slow, slow_client, images):
    """The streamed text ends before the stop string, and the request is cancelled in the engine."""
    messages = [user(data_url(images[1]))]
    text = (
        slow_client.chat.completions.create(model=slow.model_id, messages=messages, max_tokens=30)
        .choices[0]
        .message.content
    )
    stop = text[6:8]
    before = engine_cancelled(slow.metrics_url)
    chunks = list(
        slow_client.chat.completions.create(
            model=slow.model_id, messages=messages, max_tokens=30, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    deadline = time.monotonic() + 20
    while engine_cancelled(slow.metrics_url) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert engine_cancelled(slow.metrics_url) >= before + 1


def test_a_full_engine_is_429_with_retry_after(slow, images):
    """One slot, a queue of one: of eight long requests sent at once, the engine takes the first
    two and refuses the others at once (at acceptance, before their images are encoded): 429 with
    Retry-After and the server's message."""
    headers = {"authorization": f"Bearer {KEY}"}
    body = {**_stream_request(slow, images[0]), "stream": False}
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(_post(slow.api_url, "/v1/chat/completions", body, **headers))
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(200) >= 2 and 429 in statuses and set(statuses) <= {200, 429}, statuses
    refused = next(answer for answer in answers if answer.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["message"].startswith("server overloaded")
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_a_request_past_the_timeout_is_504_and_cancelled(slow, images, tmp_path):
    """A frontend with a 0.2 s request timeout: a 512-token answer is cut off with 504, and the
    engine counts the request cancelled (its deadline reached the server)."""
    frontend = Frontend(slow.grpc_url, slow.repository, tmp_path / "frontend.log", "--request-timeout=0.2")
    try:
        before = engine_cancelled(slow.metrics_url)
        body = {**_stream_request(slow, images[1]), "max_tokens": 512, "min_tokens": 512, "stream": False}
        late = _post(frontend.url, "/v1/chat/completions", body)
        assert late.status_code == 504, late.text[:300]
        assert late.json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 30
        while engine_cancelled(slow.metrics_url) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert engine_cancelled(slow.metrics_url) >= before + 1
    finally:
        frontend.stop()


def test_serve_drains_the_frontend_too(slow, images):
    """SIGTERM to serve: a stream in flight through the frontend ends whole; a request sent during
    the drain is refused 503 with Retry-After (never a hang or a reset); then serve and the frontend exit."""
    headers = {"authorization": f"Bearer {KEY}"}
    pieces: list[str] = []
    with _stream_chat(
        slow, {**_stream_request(slow, images[3]), "max_tokens": 200, "min_tokens": 200}
    ) as stream:
        lines = stream.iter_lines()
        pieces.append(next(lines))
        slow.process.send_signal(signal.SIGTERM)
        slow.wait_stderr("draining blip2 (", timeout_s=30)  # the public model is unloading
        deadline = time.monotonic() + 10
        while httpx.get(f"{slow.api_url}/health", timeout=5).status_code != 503:  # readiness follows Triton's
            assert time.monotonic() < deadline, "the frontend's /health never said not ready"
            time.sleep(0.05)
        refused = _post(
            slow.api_url,
            "/v1/chat/completions",
            {"model": slow.model_id, "messages": [user(data_url(images[0]))], "max_tokens": 2},
            **headers,
        )
        pieces.extend(line for line in lines if line)  # events are separated by empty lines
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "5"
    assert pieces[-1] == "data: [DONE]" and sum(1 for p in pieces if '"content"' in p) > LONG_TOKENS // 2
    assert slow.process.wait(timeout=120) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{slow.api_url}/health/live", timeout=5)


# -- retrieval: embeddings and scores --------------------------------------------------------------


def test_embeddings_and_scores_equal_the_sdks(retrieval_api, images):
    model = load_served_model(retrieval_api.repository)
    client = openai.OpenAI(base_url=f"{retrieval_api.url}/v1", api_key="x", max_retries=0)
    (card,) = client.models.list().data
    assert card.id == model.id == "tiny-itm" and card.model_extra["capability"] == "retrieve"
    texts = ["a red circle", "two blue squares"]
    with Blip2Client(retrieval_api.grpc_url) as sdk:
        expected_texts = sdk.embed_texts(texts)
        expected_image = sdk.embed_images([images[0]])[0]
        expected_scores = [sdk.match(images[0], text) for text in texts]
    answer = client.embeddings.create(model=model.id, input=texts)  # the package asks for base64
    got = np.array([item.embedding for item in answer.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected_texts, atol=1e-6)
    assert answer.usage.prompt_tokens == sum(model.count_text(t, special_tokens=True) for t in texts)
    floats = _post(
        retrieval_api.url,
        "/v1/embeddings",
        {"model": model.id, "input": [data_url(images[0])], "encoding_format": "float"},
    ).json()
    item = floats["data"][0]
    assert item["shape"] == list(expected_image.shape)
    np.testing.assert_allclose(np.array(item["embedding"]).reshape(item["shape"]), expected_image, atol=1e-6)
    scored = _post(
        retrieval_api.url, "/v1/score", {"model": model.id, "image": data_url(images[0]), "texts": texts}
    ).json()
    for row, (itm, itc) in zip(scored["data"], expected_scores, strict=True):
        assert row["itm_score"] == pytest.approx(itm, abs=1e-6) and row["itc_score"] == pytest.approx(
            itc, abs=1e-6
        )
    refused = _post(
        retrieval_api.url,
        "/v1/chat/completions",
        {"model": model.id, "messages": [user(data_url(images[0]))]},
    )
    assert refused.status_code == 400 and "does not generate" in refused.json()["error"]["message"]
    bad = _post(retrieval_api.url, "/v1/embeddings", {"model": model.id, "input": ["ok", ""]})
    assert bad.status_code == 400 and "input[1] is empty" in bad.json()["error"]["message"]
