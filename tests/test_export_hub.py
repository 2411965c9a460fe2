"""``export --revision`` against a model hub: a local stub of the hub's HTTP API, reached as a proxy.

``HF_ENDPOINT`` names a host that does not resolve (``hub.invalid``) and ``HTTP_PROXY`` points at
the stub, so every request that arrives came through the proxy settings: the revision check
(``huggingface_hub``'s ``model_info``) and every file ``from_pretrained`` downloads. The stub
serves a tiny checkpoint at one commit, knows the tag ``v1`` and answers like the hub for unknown
revisions, repositories and files. For an ``https://`` endpoint it is ``HTTPS_PROXY``: it records
the client's CONNECT and refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

REPO = "tiny-org/blip2-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAGS = {"v1": COMMIT, "main": COMMIT, COMMIT: COMMIT}
ENDPOINT = "http://hub.invalid"
CLI = [sys.executable, "-m", "blip2_triton.cli"]


class StubHub(ThreadingHTTPServer):
    """The hub's model API for one repository, recording the path of every request."""

    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder = folder
        self.requests: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: StubHub

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_CONNECT(self) -> None:  # an https:// endpoint through HTTPS_PROXY: recorded, then refused
        self.server.requests.append(f"CONNECT {self.path}")
        self._send(403, b"", True)

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)  # a proxied request carries the whole URL
        self.server.requests.append(path)
        if path.startswith(f"/api/models/{REPO}"):
            rest = path.removeprefix(f"/api/models/{REPO}")
            revision = rest.removeprefix("/revision/") if rest.startswith("/revision/") else "main"
            if rest and not rest.startswith("/revision/"):
                return self._error(404, "EntryNotFound")  # tree listings: nothing extra
            if revision not in TAGS:
                return self._error(404, "RevisionNotFound")
            files = [{"rfilename": p.name} for p in sorted(self.server.folder.iterdir())]
            return self._send(200, json.dumps({"id": REPO, "sha": COMMIT, "siblings": files}).encode(), body)
        if path.startswith("/api/models/"):
            return self._error(404, "RepoNotFound")
        prefix = f"/{REPO}/resolve/"
        if not path.startswith(prefix):
            return self._error(404, "RepoNotFound")
        revision, _, name = path.removeprefix(prefix).partition("/")
        if revision not in TAGS:
            return self._error(404, "RevisionNotFound")
        file = self.server.folder / name
        if not file.is_file():
            return self._error(404, "EntryNotFound")
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        self._send(200, data, body, {"X-Repo-Commit": TAGS[revision], "ETag": f'"{etag}"'})

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}).encode(), True, {"X-Error-Code": code})

    def _send(self, status: int, data: bytes, body: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[StubHub]:
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "checkpoint", "opt")
    server = StubHub(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _export(hub: StubHub, hf_home: Path, output: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **{k: v for k, v in os.environ.items() if k.upper() not in ("NO_PROXY", "HF_HUB_OFFLINE")},
        "HF_ENDPOINT": ENDPOINT,
        "HTTP_PROXY": f"http://127.0.0.1:{hub.server_address[1]}",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1",
        **env,
    }
    command = [*CLI, "export", "--model", REPO, "--output", str(output), "--quiet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def _last_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_export_at_a_tag_records_the_commit_then_exports_offline_from_the_cache(hub, tmp_path):
    hub.requests.clear()
    result = _export(hub, tmp_path / "hf", tmp_path / "online", "--revision", "v1")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "online" / "manifest.json").read_text())
    assert (manifest["source"], manifest["revision"], manifest["hub_commit"]) == (REPO, "v1", COMMIT)
    assert f"/api/models/{REPO}/revision/v1" in hub.requests  # the check went through the proxy
    downloads = [p for p in hub.requests if "/resolve/" in p]
    assert downloads and all(f"/resolve/{COMMIT}/" in p for p in downloads)  # every file at one commit

    hub.requests.clear()  # the hub disabled: the cached commit of the tag, no request
    result = _export(hub, tmp_path / "hf", tmp_path / "offline", "--revision", "v1", HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "offline" / "manifest.json").read_text())["hub_commit"] == COMMIT
    assert hub.requests == []


def test_a_local_folder_records_no_commit(hub, tmp_path):
    from blip2_triton.export.hub import resolve_source

    source = resolve_source(str(hub.folder))
    assert (source.identity(), source.pretrained_kwargs()) == ({"revision": None, "hub_commit": None}, {})
    with pytest.raises(Exception, match="--revision is for hub ids"):
        resolve_source(str(hub.folder), "v1")


def test_hub_errors_are_one_line(hub, tmp_path):
    line = _last_line(_export(hub, tmp_path / "hf", tmp_path / "o1", "--revision", "v9"))
    assert f"the hub model '{REPO}' has no revision 'v9'" in line
    unreachable = {"HTTP_PROXY": "http://127.0.0.1:9"}  # a closed port: the proxy refuses
    line = _last_line(_export(hub, tmp_path / "empty", tmp_path / "o2", **unreachable))
    assert f"cannot download '{REPO}': the model hub ({ENDPOINT}) cannot be reached" in line
    assert "pass a local checkpoint folder" in line


def test_an_https_hub_is_asked_through_https_proxy(hub, tmp_path):
    """The hub's real scheme: the check goes to HTTPS_PROXY (a CONNECT the stub records and refuses)."""
    hub.requests.clear()
    proxy = f"http://127.0.0.1:{hub.server_address[1]}"
    secure = {"HF_ENDPOINT": "https://hub.invalid", "HTTPS_PROXY": proxy, "HTTP_PROXY": ""}
    line = _last_line(_export(hub, tmp_path / "empty", tmp_path / "o", **secure))
    assert hub.requests and hub.requests[0] == "CONNECT hub.invalid:443"
    assert f"the model hub (https://hub.invalid) cannot be reached through the proxy {proxy}" in line
