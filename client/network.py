"""How the client reaches a server over a real network: TLS and the headers every call carries.

:class:`NetworkOptions` is checked once (:meth:`NetworkOptions.create`) and turned into
tritonclient's own arguments here, nowhere else: ``ssl`` / ``root_certificates`` /
``private_key`` / ``certificate_chain`` for gRPC, ``ssl`` / ``ssl_options`` / ``insecure`` for the
blocking HTTP client, an ``ssl.SSLContext`` for the asyncio one. Headers go with every call; over
gRPC they are call metadata, whose keys gRPC wants in lower case.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NetworkOptions", "parse_header"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)


@dataclass(frozen=True)
class NetworkOptions:
    """TLS (``tls``; a CA bundle, a client certificate and key; ``insecure``: HTTP only, no
    certificate check) and ``headers`` sent with every call (gRPC: metadata)."""

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def create(
        cls,
        protocol: str,
        *,
        tls: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> NetworkOptions:
        """Checked options; ValueError names the first bad one. ``tls`` None: on when a file is given."""
        files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
        for name, path in files.items():
            if path is not None and not (isinstance(path, str) and Path(path).expanduser().is_file()):
                raise ValueError(f"{name} must be a readable file, got {path!r}")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together (the client certificate and its key)")
        if tls is None:
            tls = any(path is not None for path in files.values()) or bool(insecure)
        if not tls and (any(path is not None for path in files.values()) or insecure):
            raise ValueError("ca_file, cert_file, key_file and insecure need tls")
        if insecure and protocol == "grpc":
            raise ValueError("insecure (no certificate check) is for http only; for grpc pass ca_file")
        return cls(
            tls=bool(tls),
            ca_file=_expanded(ca_file),
            cert_file=_expanded(cert_file),
            key_file=_expanded(key_file),
            insecure=bool(insecure),
            headers=_checked_headers(headers),
        )

    def connect_kwargs(self, protocol: str, *, asynchronous: bool) -> dict[str, Any]:
        """tritonclient's TLS arguments of ``InferenceServerClient`` for the protocol and flavour."""
        if not self.tls:
            return {}
        if protocol == "grpc":
            return {
                "ssl": True,
                "root_certificates": self.ca_file,
                "private_key": self.key_file,
                "certificate_chain": self.cert_file,
            }
        if asynchronous:
            return {"ssl": True, "ssl_context": self.ssl_context()}
        options: dict[str, Any] = {}
        if self.ca_file is not None:
            options["ca_certs"] = self.ca_file
        if self.cert_file is not None:
            options.update(certfile=self.cert_file, keyfile=self.key_file)
        if self.insecure:
            options["cert_reqs"] = ssl.CERT_NONE
        return {"ssl": True, "ssl_options": options, "insecure": self.insecure}

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: the CA bundle (else the system's), the client certificate, verification."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def call_headers(self, protocol: str) -> dict[str, dict[str, str]]:
        """``{"headers": ...}`` for a tritonclient call, or nothing; gRPC metadata keys in lower case."""
        if not self.headers:
            return {}
        if protocol == "grpc":
            return {"headers": {name.lower(): value for name, value in self.headers}}
        return {"headers": dict(self.headers)}


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as ``(name, value)``; ValueError when it is not one header."""
    name, sep, value = text.partition(":")
    if not sep or not _TOKEN.match(name.strip()):
        raise ValueError(f"a header is 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _checked_headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    if not isinstance(headers, Mapping):
        raise ValueError(f"headers must be a mapping of names to values, got {headers!r}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} must have a one-line str value, got {value!r}")
    return tuple(headers.items())


def _expanded(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser())
