"""The constructor options shared by the blocking and the asyncio client, checked once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import _tensors
from .retry import RetryPolicy

__all__ = ["DEFAULT_PORTS", "ClientOptions", "seconds"]

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


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

    @classmethod
    def create(
        cls,
        url: str | None,
        protocol: str,
        model_name: str,
        inference_timeout_s: float,
        init_timeout_s: float,
        max_concurrency: int,
        retry: RetryPolicy | None = None,
    ) -> ClientOptions:
        """Checked options; ValueError names the first bad one."""
        protocol = _tensors.check_protocol(protocol)
        url = _host_port(url, protocol)
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
        )


def seconds(name: str, value: object) -> float:
    """``value`` as a positive, finite number of seconds; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _host_port(url: str | None, protocol: str) -> str:
    """``host:port`` from what the caller gave: None (the protocol's default), a scheme is dropped."""
    if url is None:
        return f"localhost:{DEFAULT_PORTS[protocol]}"
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be 'host:port', got {url!r}")
    url = url.strip()
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            if scheme == "https://":
                raise ValueError("https is not supported by this client; pass 'host:port'")
            url = url[len(scheme) :]
    return url.rstrip("/")
