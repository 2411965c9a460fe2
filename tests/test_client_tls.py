"""The client over TLS with a client certificate and headers, in front of the real served model.

A CA, a server certificate (localhost, 127.0.0.1) and a client certificate are made here with
``cryptography``. Two TLS-terminating proxies that require the client certificate stand before the
session's tritonserver: a gRPC one (grpcio, every method passed on as raw bytes, unary and
streaming) and an HTTP/1.1 one. Both record the headers (gRPC: metadata) of every call, so the
tests check what arrived, not what was meant to be sent. Texts must equal the transformers
reference, as over plaintext.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blip2_triton.client import AsyncBlip2Client, Blip2Client, Blip2ClientError

pytestmark = pytest.mark.server

TOKEN = "Bearer s3cret-token"
HEADERS = {"Authorization": TOKEN, "X-Tenant": "team-a"}


# -- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts nothing of the above


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    name: str, key, issuer: tuple[x509.Name, object] | None, *, ca: bool = False, server: bool = False
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, certificate: x509.Certificate, key=None) -> tuple[Path, Path | None]:
    cert_path = folder / f"{name}.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return cert_path, None
    key_path = folder / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _certificate("test CA", ca_key, None, ca=True)
    issuer = (ca.subject, ca_key)
    ca_path, _ = _write(folder, "ca", ca)
    other_path, _ = _write(folder, "other-ca", _certificate("other CA", other_key, None, ca=True))
    server = _write(folder, "server", _certificate("localhost", server_key, issuer, server=True), server_key)
    client = _write(folder, "client", _certificate("client", client_key, issuer), client_key)
    return Pki(ca_path, server[0], server[1], client[0], client[1], other_path)  # type: ignore[arg-type]


# -- proxies -------------------------------------------------------------------------------------
@dataclass
class Seen:
    """Headers of every call a proxy passed on: ``(method or path, {name: value})``."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.calls.append((what, headers))

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    def methods(self) -> set[str]:
        with self.lock:
            return {what.rsplit("/", 1)[-1] for what, _ in self.calls}

    def all_carry(self, name: str, value: str) -> bool:
        with self.lock:
            return bool(self.calls) and all(headers.get(name) == value for _, headers in self.calls)


class _GrpcForwarder(grpc.GenericRpcHandler):
    """Any method, as raw bytes, to ``channel``; the caller's metadata recorded and passed on."""

    def __init__(self, channel: grpc.Channel, seen: Seen) -> None:
        self._channel = channel
        self._seen = seen

    def service(self, details: grpc.HandlerCallDetails):
        method = details.method
        metadata = tuple(details.invocation_metadata)
        self._seen.add(method, dict(metadata))
        if method.endswith("/ModelStreamInfer"):
            upstream = self._channel.stream_stream(method)
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: upstream(requests, metadata=metadata)
            )
        unary = self._channel.unary_unary(method)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: unary(request, metadata=metadata, timeout=context.time_remaining())
        )


@pytest.fixture(scope="module")
def grpc_proxy(opt_server, pki) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    channel = grpc.insecure_channel(opt_server.grpc_url)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[_GrpcForwarder(channel, seen)])
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"localhost:{port}", seen
    server.stop(grace=None)
    channel.close()


class _HttpForwarder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient's HTTP clients use it
    upstream: str
    seen: Seen

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        self.seen.add(self.path, {k.lower(): v for k, v in self.headers.items()})
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        connection = http.client.HTTPConnection(self.upstream, timeout=120)
        try:
            passed = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body, headers=passed)
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward


@pytest.fixture(scope="module")
def http_proxy(opt_server, pki) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    handler = type("Handler", (_HttpForwarder,), {"upstream": opt_server.http_url, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"localhost:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _tls(pki: Pki) -> dict[str, str]:
    return {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}


# -- tests ---------------------------------------------------------------------------------------
def test_grpc_over_tls_carries_the_metadata_unary_and_streamed(grpc_proxy, pki, opt_server, sample_images):
    address, seen = grpc_proxy
    image = sample_images[0].read_bytes()
    seen.clear()
    with Blip2Client(f"grpcs://{address}", headers=HEADERS, **_tls(pki)) as client:
        client.wait_until_ready(30)
        assert client.caption(image, max_tokens=10) == opt_server.reference(image, max_tokens=10)
        assert "".join(client.stream_caption(image, max_tokens=10)) == opt_server.reference(
            image, max_tokens=10
        )
    assert {"ServerReady", "ModelReady", "ModelInfer", "ModelStreamInfer"} <= seen.methods()
    assert seen.all_carry("authorization", TOKEN) and seen.all_carry("x-tenant", "team-a")


def test_async_grpc_over_tls(grpc_proxy, pki, opt_server, sample_images):
    address, seen = grpc_proxy
    image = sample_images[1].read_bytes()
    seen.clear()

    async def run() -> tuple[str, str]:
        async with AsyncBlip2Client(address, tls=True, headers=HEADERS, **_tls(pki)) as client:
            pieces = [piece async for piece in client.stream_caption(image, max_tokens=8)]
            return await client.caption(image, max_tokens=8), "".join(pieces)

    unary, streamed = asyncio.run(run())
    assert unary == streamed == opt_server.reference(image, max_tokens=8)
    assert {"ModelInfer", "ModelStreamInfer"} <= seen.methods() and seen.all_carry("authorization", TOKEN)


def test_http_over_tls_carries_the_headers(http_proxy, pki, opt_server, sample_images):
    address, seen = http_proxy
    image = sample_images[2].read_bytes()
    expected = opt_server.reference(image, max_tokens=10)
    seen.clear()
    with Blip2Client(f"https://{address}", protocol="http", headers=HEADERS, **_tls(pki)) as client:
        client.wait_until_ready(30)
        assert client.caption(image, max_tokens=10) == expected
        assert client.caption_batch([image, image], max_tokens=10) == [expected, expected]

    async def run() -> str:
        async with AsyncBlip2Client(f"https://{address}", protocol="http", headers=HEADERS, **_tls(pki)) as c:
            return await c.caption(image, max_tokens=10)

    assert asyncio.run(run()) == expected
    paths = {path for path, _ in seen.calls}
    assert any(p.endswith("/ready") for p in paths) and any(p.endswith("/infer") for p in paths)
    assert seen.all_carry("authorization", TOKEN) and seen.all_carry("x-tenant", "team-a")


def test_an_untrusted_server_certificate_is_refused_unless_insecure(
    http_proxy, grpc_proxy, pki, sample_images
):
    image = sample_images[0].read_bytes()
    grpcs, https = f"grpcs://{grpc_proxy[0]}", f"https://{http_proxy[0]}"
    wrong = {**_tls(pki), "ca_file": str(pki.other_ca)}
    with Blip2Client(grpcs, **wrong) as client:
        assert client.is_ready() is False
    assert "certificate_verify_failed" in _refusal(Blip2Client(grpcs, **wrong), image).lower()
    assert "certificate" in _refusal(Blip2Client(https, protocol="http", **wrong), image).lower()
    with Blip2Client(https, protocol="http", **wrong, insecure=True) as client:
        assert client.caption(image, max_tokens=4)
    no_client_cert = {"ca_file": str(pki.ca)}  # the proxies require one: the handshake fails
    assert _refusal(Blip2Client(https, protocol="http", **no_client_cert), image)
    assert _refusal(Blip2Client(grpcs, **no_client_cert), image)


def _refusal(client: Blip2Client, image: bytes) -> str:
    """The one-line error of a caption ``client`` cannot get."""
    with client, pytest.raises(Blip2ClientError) as info:
        client.caption(image, max_tokens=4)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_the_cli_takes_everything_from_the_environment(grpc_proxy, pki, opt_server, sample_images):
    address, seen = grpc_proxy
    path = sample_images[0]
    env = {
        **os.environ,
        "BLIP2_TRITON_URL": f"grpcs://{address}",
        "BLIP2_TRITON_CA_FILE": str(pki.ca),
        "BLIP2_TRITON_CERT_FILE": str(pki.client_cert),
        "BLIP2_TRITON_KEY_FILE": str(pki.client_key),
        "BLIP2_TRITON_HEADERS": f"Authorization: {TOKEN}\nX-Tenant: team-b",
    }
    seen.clear()
    command = [sys.executable, "-m", "blip2_triton.cli", "caption", str(path), "--max-tokens", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}\t{opt_server.reference(path.read_bytes(), max_tokens=10)}"
    assert seen.all_carry("authorization", TOKEN) and seen.all_carry("x-tenant", "team-b")
    seen.clear()  # --header replaces the environment's headers
    result = subprocess.run(
        [*command, "--header", "X-Tenant: team-c"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert seen.all_carry("x-tenant", "team-c") and not any("authorization" in h for _, h in seen.calls)
    bad = subprocess.run(
        [*command, "--header", "no colon"], capture_output=True, text=True, timeout=120, env=env
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "a header is 'Name: value'" in bad.stderr.strip().splitlines()[-1]
