"""Reload the model of a dead Python-backend stub, or find that only a restart can end its requests.

What Triton 2.51 does with the requests a dead stub held (measured, and read in python_backend
r24.10): nothing. The backend creates a response factory per request and frees it only when the
stub says so; a dead stub never does, so those requests, the BLS callers waiting on them, and the
model instance they hold (its stub's ``/dev/shm`` region, the callers' old stubs) stay forever; the
clients wait for their own deadline. Killing more stubs does not help (their requests stay too).
Only stopping tritonserver ends them (the clients then get UNAVAILABLE at once).

So a recovery unloads the dead model and the contract's BLS callers of it, and waits up to
``STUCK_GRACE_S`` for the dead instance to be gone: its model unloaded, or at least its ``/dev/shm``
region removed (tritonserver removes it when it destroys the instance, which it does only once no
request holds it; a sibling instance may take longer to stop). Gone: load the model and the callers
again. Not gone: requests are stuck in it, and the supervisor restarts tritonserver. A stop request
is honoured between steps.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .model_graph import CALLERS, callers, loaded_configs, model_states, ready_models
from .process import TritonServer

# A dead stub's model that held no request unloads in about a second (1.0-1.2 s measured on a busy
# 2-core machine); one that held requests never does.
STUCK_GRACE_S = 5.0
_POLL_S = 0.1


class Outcome(enum.Enum):
    RELOADED = "reloaded"
    STUCK = "stuck"  # requests are stuck in the dead stub: restart tritonserver
    STOPPED = "stopped"  # a stop was requested between two steps
    FAILED = "failed"


@dataclass
class RecoveryResult:
    outcome: Outcome
    seconds: float
    unloaded: list[str] = field(default_factory=list)
    detail: str = ""


def instance_gone(states: dict[str, str], model: str, region: Path | None) -> bool:
    """Whether a dead stub's instance is gone: its model unloaded, or its region removed."""
    if states.get(model) not in ("READY", "LOADING", "UNLOADING"):
        return True
    return region is not None and not region.exists()


def wait_gone(
    client,
    headers: dict[str, str] | None,
    model: str,
    region: Path | None,
    grace_s: float,
    stop: Callable[[], bool],
) -> bool:
    """Poll until the dead instance is gone (``instance_gone``); False if not within ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while True:
        if instance_gone(model_states(client, headers), model, region):
            return True
        if time.monotonic() >= deadline or stop():
            return False
        time.sleep(_POLL_S)


def recover(
    server: TritonServer,
    model: str,
    *,
    region: Path | None,
    timeout_s: float,
    stop: Callable[[], bool],
    grace_s: float = STUCK_GRACE_S,
) -> RecoveryResult:
    """Unload ``model`` (a stub of it died; ``region`` was that stub's) and its BLS callers, check
    that nothing is stuck in the dead instance, and load them again."""
    import tritonclient.grpc as grpcclient

    headers = server.admin_grpc_headers
    client = grpcclient.InferenceServerClient(server.grpc_url)
    started = time.monotonic()

    def remaining() -> float:
        return max(1.0, timeout_s - (time.monotonic() - started))

    def result(outcome: Outcome, unloaded: list[str], detail: str = "") -> RecoveryResult:
        return RecoveryResult(outcome, time.monotonic() - started, unloaded, detail)

    try:
        configs = loaded_configs(client, headers)
        # Callers first, level by level (a caller before what it calls); loaded again the other way.
        front = sorted((name for name in callers(configs) if name != model), key=CALLERS.index)
        unloaded = [*front, model]
        for name in unloaded:
            client.unload_model(name, headers=headers, client_timeout=remaining())
        if not wait_gone(client, headers, model, region, grace_s, stop):
            if stop():
                return result(Outcome.STOPPED, unloaded)
            return result(
                Outcome.STUCK, unloaded, f"'{model}' still unloading {grace_s:g} s after its stub died"
            )
        for name in [model, *reversed(front)]:
            if stop():
                return result(Outcome.STOPPED, unloaded)
            client.load_model(name, headers=headers, client_timeout=remaining())
        for name in sorted(set(configs) - ready_models(client, headers)):
            if stop():
                return result(Outcome.STOPPED, unloaded)
            client.load_model(name, headers=headers, client_timeout=remaining())
        for name in configs:
            if not client.is_model_ready(name):
                return result(
                    Outcome.FAILED, unloaded, f"model '{name}' is not ready after reloading '{model}'"
                )
        return result(Outcome.RELOADED, unloaded)
    except Exception as exc:  # any failure to reload means: restart tritonserver
        return result(Outcome.FAILED, [], f"reloading '{model}' failed: {exc}")
    finally:
        client.close()
