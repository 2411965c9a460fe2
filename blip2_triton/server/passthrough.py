"""tritonserver flags an operator passes through ``serve`` (after ``--``), checked against what serve owns.

``blip2-triton serve ... -- --trace-config mode=opentelemetry --log-format=ISO8601`` hands the flags
after ``--`` to tritonserver as they are. Flags that would change what serve manages (where the
server listens, the model repository and its control, readiness, the log serve reads, the admin
key, the response cache an export asked for) are refused with a one-line error naming serve's own
flag, where it has one.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ServerProcessError

# tritonserver flag -> serve's own flag for it ("" where serve decides alone).
MANAGED: dict[str, str] = {
    "--model-repository": "--model-repository",
    "--model-store": "--model-repository",
    "--model-control-mode": "",
    "--load-model": "",
    "--repository-poll-secs": "",
    "--backend-directory": "",
    "--cache-directory": "",
    "--cache-config": "",
    "--response-cache-byte-size": "",
    "--strict-readiness": "",
    "--exit-on-error": "",
    "--exit-timeout-secs": "--drain-timeout",
    "--grpc-address": "--host",
    "--grpc-port": "--grpc-port",
    "--allow-grpc": "",
    "--http-address": "--http-host",
    "--http-port": "--http-port",
    "--allow-http": "--allow-http",
    "--metrics-address": "--host",
    "--metrics-port": "--metrics-port",
    "--allow-metrics": "",
    "--grpc-restricted-protocol": "",
    "--http-restricted-api": "",
    "--log-file": "--log-file",
    "--log-verbose": "--log-verbose",
}


def check_passthrough(flags: Sequence[str]) -> tuple[str, ...]:
    """``flags`` when tritonserver may have them; ``ServerProcessError`` naming the first that conflicts.

    Each flag starts with ``--``; a value may follow it as the next word (``--trace-config
    mode=opentelemetry``) or after ``=``.
    """
    previous_was_flag = False
    for word in flags:
        if not word.startswith("-"):
            if not previous_was_flag:
                raise ServerProcessError(
                    f"tritonserver flags after '--' start with '--': {word!r} follows no flag"
                )
            previous_was_flag = False
            continue
        name = word.partition("=")[0]
        if not name.startswith("--") or name == "--":
            raise ServerProcessError(f"tritonserver flags after '--' start with '--': {word!r}")
        if name in MANAGED:
            own = MANAGED[name]
            hint = f"use serve's {own}" if own else "serve sets it"
            raise ServerProcessError(f"tritonserver flag {name} conflicts with what serve manages ({hint})")
        previous_was_flag = "=" not in word
    return tuple(flags)
