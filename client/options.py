"""The constructor options shared by the blocking and the asyncio client, checked once.

Where the server is and how to reach it default to the environment when not passed:
``BLIP2_TRITON_URL`` (``host:port``; ``https://`` or ``grpcs://`` turns TLS on),
``BLIP2_TRITON_PROTOCOL`` (grpc or http), ``BLIP2_TRITON_TLS`` (1/0), ``BLIP2_TRITON_CA_FILE``,
``BLIP2_TRITON_CERT_FILE``, ``BLIP2_TRITON_KEY_FILE``, ``BLIP2_TRITON_INSECURE`` (1: HTTP without a
certificate check) and ``BLIP2_TRITON_HEADERS`` (``Name: value`` lines, sent with every call).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import _tensors
from .network import NetworkOptions, parse_header
from .retry import RetryPolicy

__all__ = ["DEFAULT_PORTS", "ENVIRONMENT", "ClientOptions", "seconds"]

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
ENV_PREFIX = "BLIP2_TRITON_"
ENVIRONMENT = tuple(
    ENV_PREFIX + name
    for name in ("URL", "PROTOCOL", "TLS", "CA_FILE", "CERT_FILE", "KEY_FILE", "INSECURE", "HEADERS")
)
_SECURE_SCHEMES = {"http://": False, "grpc://": False, "https://": True, "grpcs://": True}


@dataclass(frozen=True)
class ClientOptions:
    """Where the server is and how long to wait for it; :meth:`create` checks and normalises."""

    url: str
    protocol: str
    model_name: str
    inference_timeout_s: float
    init_timeout_s: float
    max_concurrency: int
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    network: NetworkOptions = field(default_factory=NetworkOptions)

    @classmethod
    def create(
        cls,
        url: str | None,
        protocol: str | None,
        model_name: str,
        inference_timeout_s: float,
        init_timeout_s: float,
        max_concurrency: int,
        retry: RetryPolicy | None = None,
        *,
        tls: bool | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ClientOptions:
        """Checked options; ValueError names the first bad one. None: the environment's, else the
        default; ``tls=False`` also leaves the environment's TLS files and ``insecure`` unread."""
        environment = _Environment()
        protocol = _tensors.check_protocol(
            protocol if protocol is not None else environment.get("PROTOCOL") or "grpc"
        )
        url, scheme_tls = _host_port(url if url is not None else environment.get("URL"), protocol)
        secure = environment if tls is not False else _Environment(read=False)
        try:
            network = NetworkOptions.create(
                protocol,
                tls=_first(tls, scheme_tls, environment.flag("TLS")),
                ca_file=ca_file if ca_file is not None else secure.get("CA_FILE"),
                cert_file=cert_file if cert_file is not None else secure.get("CERT_FILE"),
                key_file=key_file if key_file is not None else secure.get("KEY_FILE"),
                insecure=bool(_first(insecure, secure.flag("INSECURE"))),
                headers=headers if headers is not None else environment.headers(),
            )
        except ValueError as exc:
            raise ValueError(f"{exc}{environment.named()}") from None
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        inference_timeout_s = seconds("inference_timeout_s", inference_timeout_s)
        init_timeout_s = seconds("init_timeout_s", init_timeout_s)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError(f"retry must be a RetryPolicy, got {retry!r}")
        return cls(
            url,
            protocol,
            model_name,
            inference_timeout_s,
            init_timeout_s,
            max_concurrency,
            retry if retry is not None else RetryPolicy(),
            network,
        )


class _Environment:
    """The ``BLIP2_TRITON_*`` variables, read once; remembers which were used (for error messages)."""

    def __init__(self, read: bool = True) -> None:
        self._values = {
            name.removeprefix(ENV_PREFIX): os.environ[name].strip()
            for name in ENVIRONMENT
            if read and os.environ.get(name, "").strip()
        }
        self._used: list[str] = []

    def get(self, name: str) -> str | None:
        if name in self._values:
            self._used.append(ENV_PREFIX + name)
            return self._values[name]
        return None

    def flag(self, name: str) -> bool | None:
        value = self.get(name)
        if value is None:
            return None
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{ENV_PREFIX}{name} must be 1 or 0, got {value!r}")
        return value.lower() in ("1", "true", "yes")

    def headers(self) -> dict[str, str] | None:
        text = self.get("HEADERS")
        if text is None:
            return None
        try:
            return dict(parse_header(line) for line in text.splitlines() if line.strip())
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}HEADERS: {exc}") from None

    def named(self) -> str:
        """`` (from BLIP2_TRITON_X, ...)`` when any variable was used, else nothing."""
        return f" (from {', '.join(dict.fromkeys(self._used))})" if self._used else ""


def _first(*values: bool | None) -> bool | None:
    return next((value for value in values if value is not None), None)


def seconds(name: str, value: object) -> float:
    """``value`` as a positive, finite number of seconds; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _host_port(url: str | None, protocol: str) -> tuple[str, bool | None]:
    """``host:port`` from what the caller gave (None: the protocol's default), and whether its
    scheme asks for TLS (``https://``, ``grpcs://``; None when it has no scheme)."""
    if url is None:
        return f"localhost:{DEFAULT_PORTS[protocol]}", None
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be 'host:port', got {url!r}")
    url = url.strip()
    for scheme, secure in _SECURE_SCHEMES.items():
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/"), secure
    return url.rstrip("/"), None
