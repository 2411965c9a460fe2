"""Secure defaults of ``blip2-triton serve``, against a real tritonserver.

Loopback only, gRPC only unless asked, and the model-repository, shared-memory, logging and trace
APIs behind the admin key; health, metadata, statistics and inference stay open.
"""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from blip2_triton.server.access import ADMIN_KEY_ENV, AdminKey, check_key, resolve_admin_key
from blip2_triton.server.errors import ServerProcessError

from .serve_helpers import double_repository, infer_double, start_serve
from .triton_requests import batch_statistics

KEY = "test-admin-key-0123456789abcdef"


def test_generated_key_is_private_and_random(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "admin-key.8001"
    first = resolve_admin_key(key_file, environ={})
    assert key_file.read_text().strip() == first.value
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.source == str(key_file)
    second = resolve_admin_key(key_file, environ={})
    assert second.value != first.value and len(second.value) >= 32
    assert first.value not in repr(first)


def test_key_from_environment_is_checked(tmp_path: Path) -> None:
    key = resolve_admin_key(tmp_path / "unused", environ={ADMIN_KEY_ENV: KEY})
    assert key == AdminKey(KEY, f"${ADMIN_KEY_ENV}")
    assert not (tmp_path / "unused").exists()
    for bad in ("short", "has:colon-0123456789", "has=equals-0123456789", "a key with spaces 01234"):
        with pytest.raises(ServerProcessError, match=ADMIN_KEY_ENV):
            check_key(bad)


def test_restricted_flags() -> None:
    args = AdminKey(KEY, "test").server_args()
    group = f"model-repository,shared-memory,logging,trace:admin-key={KEY}"
    assert args == [f"--grpc-restricted-protocol={group}", f"--http-restricted-api={group}"]


def _http(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.server
def test_serve_defaults_loopback_grpc_only(tmp_path: Path) -> None:
    served = start_serve(double_repository(tmp_path), tmp_path, "--admin-key-file", str(tmp_path / "key"))
    try:
        text = served.wait_ready()
        assert "HTTP     off (--allow-http)" in text
        assert f"need the admin key ({tmp_path / 'key'})" in text
        log = served.log_file.read_text()
        assert f'Started GRPCInferenceService at 127.0.0.1:{served.grpc_port}"' in log
        assert f'Started Metrics Service at 127.0.0.1:{served.metrics_port}"' in log
        assert "Started HTTPService" not in log
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://{served.http_url}/v2/health/ready", timeout=5)
        key = AdminKey((tmp_path / "key").read_text().strip(), "file")
        client = grpcclient.InferenceServerClient(served.grpc_url)
        try:
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_log_settings()
            assert client.get_log_settings(headers=key.grpc_headers).settings["log_info"].bool_param
        finally:
            client.close()
    finally:
        assert served.stop() == 0


@pytest.mark.server
def test_admin_apis_need_the_key_and_inference_stays_open(tmp_path: Path) -> None:
    served = start_serve(double_repository(tmp_path), tmp_path, "--allow-http", env={ADMIN_KEY_ENV: KEY})
    try:
        assert f"need the admin key (${ADMIN_KEY_ENV})" in served.wait_ready()
        key = AdminKey(KEY, "env")
        client = grpcclient.InferenceServerClient(served.grpc_url)
        try:
            for call in (
                lambda **kw: client.get_log_settings(**kw),
                lambda **kw: client.update_log_settings({"log_verbose_level": 0}, **kw),
                lambda **kw: client.get_trace_settings(**kw),
                lambda **kw: client.get_model_repository_index(**kw),
                lambda **kw: client.unload_model("double", **kw),
                lambda **kw: client.get_system_shared_memory_status(**kw),
            ):
                with pytest.raises(InferenceServerException) as refused:
                    call()
                assert "expecting header 'triton-grpc-protocol-admin-key'" in refused.value.message()
                with pytest.raises(InferenceServerException, match="restricted"):
                    call(headers={"triton-grpc-protocol-admin-key": "wrong-key-0123456789"})
            assert client.get_log_settings(headers=key.grpc_headers).settings["log_info"].bool_param
            assert client.update_log_settings({"log_verbose_level": 0}, headers=key.grpc_headers)
            index = client.get_model_repository_index(headers=key.grpc_headers)
            assert [m.name for m in index.models] == ["double"]
            # Open: health, metadata, config, statistics, inference.
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("double")
            assert client.get_model_metadata("double").name == "double"
            assert client.get_model_config("double").config.max_batch_size == 8
            np.testing.assert_array_equal(infer_double(served.grpc_url, [1.5, -2.0]), [[3.0, -4.0]])
            assert batch_statistics(served.grpc_url, "double", at_least=1)[0] == 1
        finally:
            client.close()

        base = f"http://{served.http_url}"
        assert _http(f"{base}/v2/logging") == 403
        assert _http(f"{base}/v2/logging", {"admin-key": "wrong-key-0123456789"}) == 403
        assert _http(f"{base}/v2/logging", key.http_headers) == 200
        assert _http(f"{base}/v2/trace/setting") == 403
        assert _http(f"{base}/v2/health/ready") == 200
        assert _http(f"{base}/v2/models/double") == 200
        body = json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
        ).encode()
        request = urllib.request.Request(f"{base}/v2/models/double/infer", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["outputs"][0]["data"] == [2.0, 4.0]
        assert _http(served.metrics_url) == 200
    finally:
        assert served.stop() == 0
