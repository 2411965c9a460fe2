"""The frontend's own Prometheus metrics (``GET /metrics``), in a registry of its own.

- ``blip2_openai_requests_total{route, status}``: requests answered, by route and HTTP status;
- ``blip2_openai_request_seconds{route}``: from the request's arrival to its last byte (a stream's
  end included);
- ``blip2_openai_streams_open``: streams being sent now.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROUTES = (
    "/v1/models",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/score",
    "/health",
    "/health/live",
    "/metrics",
)
OTHER_ROUTE = "other"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class FrontendMetrics:
    """The counters of one frontend."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "blip2_openai_requests",
            "Requests answered, by route and HTTP status",
            ("route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "blip2_openai_request_seconds",
            "Request latency to the last byte",
            ("route",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.streams_open = Gauge(
            "blip2_openai_streams_open", "Streams being sent now", registry=self.registry
        )

    @staticmethod
    def route(path: str) -> str:
        """The route label of a path (unknown paths share one label)."""
        return path if path in ROUTES else OTHER_ROUTE

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
