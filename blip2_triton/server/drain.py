"""Drain a serving tritonserver before stopping it, so that no accepted request is lost.

What tritonserver 2.51 does by itself on SIGTERM/SIGINT (``InferenceServer::Stop``): readiness
turns false, then *every* model's scheduler stops accepting requests at once, then it waits up to
``--exit-timeout-secs`` for the requests already queued or executing. A request to an ensemble is a
chain of requests, one per step: one that is in its first step when the signal comes needs to
enqueue into the next step later, and is refused there ("Server is stopping, scheduler for model
has stopped accepting new inference requests"). Accepted work is lost.

So ``drain`` runs before tritonserver is signalled. It unloads the *entry* models (those no ensemble
uses as a step) through the model-repository API, callers first: the public models of the contract,
then the others. Unloading a model makes Triton (a) refuse new requests to it at once, (b) report it
UNLOADING, which turns ``/v2/health/ready`` and ``is_model_ready`` false, and (c) keep it, and the
steps it calls, until its last in-flight request has been answered. When every entry model is
unloaded nothing is in flight, and tritonserver stops at once.

A refused request gets Triton's answer for a model that is not loaded: NOT_FOUND "Request for unknown
model: '<name>' has no available versions" (Triton 2.51 has no way to answer UNAVAILABLE for one
model while its in-flight requests go on; the SDK treats this answer as retryable).

Models already UNLOADING when the drain begins (a stub recovery that the stop interrupted) are
waited for too. ``check`` is called at every poll: a reason it returns ends the drain at once
(``aborted``), e.g. requests stuck in a stub that died during the drain, which no wait would end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .model_graph import entry_waves, loaded_configs, model_states
from .process import TritonServer

_POLL_S = 0.1


@dataclass
class DrainResult:
    """How a drain went: ``unfinished`` maps a model still unloading at the deadline to its state;
    ``aborted`` is the reason ``check`` gave for ending it early."""

    seconds: float
    waves: list[list[str]]
    unfinished: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None

    @property
    def complete(self) -> bool:
        return not self.unfinished and self.aborted is None


def drain(
    server: TritonServer,
    timeout_s: float,
    *,
    log: Callable[[str], None] = print,
    check: Callable[[Any], str | None] = lambda client: None,
) -> DrainResult:
    """Unload the entry models wave by wave and wait (up to ``timeout_s`` in all) until each is gone."""
    import tritonclient.grpc as grpcclient

    started = time.monotonic()
    deadline = started + timeout_s
    headers = server.admin_grpc_headers
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        unloading = sorted(
            name for name, state in model_states(client, headers).items() if state == "UNLOADING"
        )
        waves = entry_waves(loaded_configs(client, headers))
        result = DrainResult(0.0, waves)
        # (models, whether to unload them): the entry waves, then those already unloading.
        steps = [(wave, True) for wave in waves] + ([(unloading, False)] if unloading else [])
        for wave, unload in steps:
            if unload:
                for name in wave:
                    client.unload_model(
                        name, headers=headers, client_timeout=max(1.0, deadline - time.monotonic())
                    )
            log(f"blip2-triton: draining {', '.join(wave)} (new requests refused, in-flight ones finish)")
            unfinished, aborted = _wait_unloaded(client, headers, wave, deadline, check)
            if unfinished or aborted:
                result.unfinished, result.aborted = unfinished, aborted
                break
    finally:
        client.close()
    result.seconds = time.monotonic() - started
    return result


def _wait_unloaded(
    client,
    headers: dict[str, str] | None,
    names: Iterable[str],
    deadline: float,
    check: Callable[[Any], str | None],
) -> tuple[dict[str, str], str | None]:
    """Poll until none of ``names`` is loaded or unloading. Returns those still so at the deadline
    (with state), or the reason ``check`` gave to stop waiting."""
    pending = set(names)
    while True:
        states = model_states(client, headers)
        pending = {name for name in pending if states.get(name) in ("READY", "UNLOADING", "LOADING")}
        if not pending:
            return {}, None
        reason = check(client)
        if reason is not None:
            return {name: states.get(name, "?") for name in sorted(pending)}, reason
        if time.monotonic() >= deadline:
            return {name: states.get(name, "?") for name in sorted(pending)}, None
        time.sleep(_POLL_S)


# Gauges that count requests inside a server: Triton's queues, and the LLM engine's own.
_IN_FLIGHT_GAUGES = ("nv_inference_pending_request_count", "blip2_active_sequences", "blip2_queued_requests")


def requests_in_flight(metrics_url: str) -> dict[str, int]:
    """Requests queued or running, per gauge of ``_IN_FLIGHT_GAUGES``, from the metrics endpoint."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode("utf-8", errors="replace")
    totals = dict.fromkeys(_IN_FLIGHT_GAUGES, 0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += int(float(line.rsplit(" ", 1)[1]))
    return totals
