"""The one owner of ``blip2-triton serve``'s tritonserver: start, watch, recover, restart, drain, stop.

Everything that changes the server happens on the thread that runs ``Supervisor.run`` (the main
thread: tritonserver's parent-death signal is tied to the thread that started it), one thing at a
time, under the ``Lifecycle`` state. The stub watchdog and the liveness probe run on threads of their
own and only put events on a queue; a signal only sets the stop request, which every long step
checks between its parts.

- A stub died (its model READY): reload its model (``stub_recovery``); if requests are stuck in
  the dead stub, or the reload fails, or stubs die too often: treat it as a dead server.
- tritonserver exited, or the liveness probe found it stuck: ``--on-crash restart`` kills what is
  left of it (process group, stubs, their ``/dev/shm`` regions) and starts it again, at most
  ``max_restarts`` times within ``restart_window_s``, then gives up; ``--on-crash exit`` gives up
  at once. Giving up exits 1.
- Stop requested: drain (``drain.py``) from whatever state it came in, never back to serving; a
  stub that dies meanwhile is not reloaded, and requests stuck in it end the drain (exit 4).

Exit codes: 0 drained (every accepted request was answered); 1 gave up (the server could not be
kept serving); 3 the drain timeout cut accepted requests off; 4 the drain failed (error, tritonserver
died, or requests stuck in a dead stub were cut off).
"""

from __future__ import annotations

import enum
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .drain import drain, requests_in_flight
from .errors import PortInUseError, ServerProcessError
from .lifecycle import Budget, Lifecycle, State
from .liveness import LivenessProbe, ProbeSettings
from .log_parsing import one_line
from .model_graph import model_states, ready_models
from .ports import accepts_connections
from .process import ServerStartAborted, TritonServer
from .process_table import StubProcess, stub_processes
from .shm_privacy import RegionPrivacy
from .stub_recovery import STUCK_GRACE_S, Outcome, instance_gone, recover
from .stub_watchdog import StubExited, StubWatchdog

_TICK_S = 0.1
_PORT_WAIT_S = 10.0


class ExitCode(enum.IntEnum):
    DRAINED = 0
    GAVE_UP = 1
    DRAIN_TIMEOUT = 3
    DRAIN_FAILED = 4


class GiveUp(ServerProcessError):
    """The server cannot be kept serving: serve exits 1 so that its supervisor restarts it."""


@dataclass(frozen=True)
class Policy:
    """What serve does when things go wrong (the ``serve`` flags)."""

    on_crash: str = "restart"  # or "exit"
    on_stub_death: str = "reload"  # or "exit"
    max_restarts: int = 3
    restart_window_s: float = 600.0
    max_stub_recoveries: int = 5
    stub_window_s: float = 600.0
    reload_timeout_s: float = 300.0
    drain_timeout_s: float = 300.0
    stuck_grace_s: float = STUCK_GRACE_S
    # During a drain nothing is served any more, so a dead instance gets longer to go (a sibling
    # instance's stub may take seconds to stop on a busy machine) before it counts as stuck.
    drain_stuck_grace_s: float = 3 * STUCK_GRACE_S
    probe: ProbeSettings = field(default_factory=ProbeSettings)


@dataclass(frozen=True)
class Wedged:
    """The liveness probe found the server stuck (during lifecycle epoch ``epoch``)."""

    reason: str
    epoch: int


class Supervisor:
    """Runs ``server`` under ``policy`` until a stop request (returns an ``ExitCode``) or giving up."""

    def __init__(self, server: TritonServer, policy: Policy, *, log: Callable[[str], None] = print) -> None:
        self.server = server
        self.policy = policy
        self.log = log
        self.lifecycle = Lifecycle()
        self.events: queue.Queue = queue.Queue()
        self.watchdog = StubWatchdog(server, self.events)
        self.probe = LivenessProbe(
            server,
            self.lifecycle,
            policy.probe,
            on_stuck=lambda reason: self.events.put(Wedged(reason, self.lifecycle.epoch)),
            log=log,
        )
        self.privacy = RegionPrivacy(server)
        self.restarts = Budget(policy.max_restarts, policy.restart_window_s)
        stub_limit = policy.max_stub_recoveries if policy.on_stub_death == "reload" else 0
        self.recoveries = Budget(stub_limit, policy.stub_window_s)
        # Dead stubs (of a recovery under way, or during a drain), by model: a drain ends at once if
        # one's instance is not gone ``drain_stuck_grace_s`` after it died (its requests are stuck).
        self._dead: dict[str, StubExited] = {}

    def request_stop(self) -> None:
        """Drain and stop (safe from a signal handler: sets a flag)."""
        self.lifecycle.request_stop()

    def _stopping(self) -> bool:
        return self.lifecycle.stop_requested

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Start the server, serve until a stop request, drain; the exit code. Raises ``GiveUp``."""
        self.privacy.start()
        try:
            try:
                self.server.start(abort=self._stopping)
            except ServerStartAborted:
                return self._drain()
            self.lifecycle.to(State.SERVING)
            self.watchdog.start()  # before "ready": a stub that dies right after is noticed
            on_ready()
            self.probe.start()
            next_track = 0.0
            while not self._stopping():
                try:
                    event = self.events.get(timeout=_TICK_S)
                except queue.Empty:
                    event = None
                if time.monotonic() >= next_track:
                    self.server.track_stubs()
                    next_track = time.monotonic() + 1.0
                if not self.server.is_alive():
                    self._server_failed(
                        f"tritonserver exited unexpectedly with code {self.server.returncode}"
                    )
                elif isinstance(event, Wedged) and event.epoch == self.lifecycle.epoch:
                    self._server_failed(f"tritonserver is stuck: {event.reason}")
                elif isinstance(event, StubExited):
                    self._stub_exited(event)
            return self._drain()
        finally:
            self.probe.stop()
            self.watchdog.stop()
            self.server.stop()
            self.privacy.stop()
            if self.lifecycle.state is not State.STOPPED:
                self.lifecycle.to(State.STOPPED)

    # -- a dead server -----------------------------------------------------------------------------

    def _server_failed(self, reason: str) -> None:
        """tritonserver died or is stuck: restart it (``--on-crash restart``) or give up."""
        self.log(f"blip2-triton: {reason}")
        if self.policy.on_crash == "exit":
            self.server.kill()
            raise GiveUp(f"{reason}; --on-crash exit: giving up (log: {self.server.log_path})")
        self._restart(reason)

    def _restart(self, reason: str) -> None:
        self.lifecycle.to(State.RESTARTING)
        self._dead.clear()
        started = time.monotonic()
        old_pid = self.server.pid
        self.server.kill()  # readiness false, every request in flight ends now, stubs and regions gone
        self.log(f"blip2-triton: killed tritonserver (pid {old_pid}) and its stubs; restarting it")
        while True:
            if self._stopping():
                return
            if not self.restarts.spend():
                raise GiveUp(
                    f"{reason}; already restarted {self.restarts.limit} times within "
                    f"{self.restarts.window_s:g} s: giving up (log: {self.server.log_path})"
                )
            try:
                self._start_again()
                break
            except ServerStartAborted:
                return
            except ServerProcessError as exc:
                self.log(f"blip2-triton: restarting tritonserver failed: {exc}")
        self.lifecycle.to(State.SERVING)
        self.log(
            f"blip2-triton: tritonserver restarted (pid {self.server.pid}) in {time.monotonic() - started:.1f} s; "
            f"ready again ({self.restarts.used()} of {self.restarts.limit} restarts "
            f"within {self.restarts.window_s:g} s used)"
        )

    def _start_again(self) -> None:
        """Start the server on the same ports (a killed server's ports free up within moments)."""
        deadline = time.monotonic() + _PORT_WAIT_S
        while True:
            try:
                self.server.start(abort=self._stopping)
                return
            except PortInUseError:
                if time.monotonic() > deadline or self._stopping():
                    raise
                time.sleep(0.2)

    # -- a dead stub -------------------------------------------------------------------------------

    def _stub_exited(self, event: StubExited) -> None:
        stub = event.stub
        if event.server_pid != self.server.pid or self._replaced(stub):
            return
        if self.lifecycle.state is not State.SERVING:
            return
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.server.grpc_url)
        try:
            ready = stub.model in ready_models(client, self.server.admin_grpc_headers)
        except Exception as exc:  # the server is going: the main loop sees that next
            self.log(f"blip2-triton: stub {stub.instance} exited; the model index is unavailable ({exc})")
            return
        finally:
            client.close()
        if not ready:
            return  # its model was being unloaded: the stub ended with it
        self.log(
            f"blip2-triton: Python backend stub {stub.instance} (pid {stub.pid}) died; "
            f"reloading model '{stub.model}' (unready meanwhile)"
        )
        if self.policy.on_stub_death == "exit":
            self.server.kill()
            raise GiveUp(f"stub {stub.instance} of '{stub.model}' died; --on-stub-death exit: giving up")
        if not self.recoveries.spend():
            self._server_failed(
                f"{self.recoveries.limit + 1} stub deaths within {self.recoveries.window_s:g} s "
                f"(last: {stub.instance})"
            )
            return
        self.lifecycle.to(State.RECOVERING)
        self._dead[stub.model] = event
        result = recover(
            self.server,
            stub.model,
            region=stub.region_path,
            timeout_s=self.policy.reload_timeout_s,
            stop=self._stopping,
            grace_s=self.policy.stuck_grace_s,
        )
        if result.outcome is Outcome.RELOADED:
            self._dead.pop(stub.model, None)
            self.lifecycle.to(State.SERVING)
            self.log(f"blip2-triton: model '{stub.model}' reloaded in {result.seconds:.1f} s; ready again")
        elif result.outcome is Outcome.STOPPED:
            self.log("blip2-triton: stop requested: recovery stopped; draining")
        elif result.outcome is Outcome.STUCK:
            self._server_failed(
                f"requests are stuck in the dead stub ({result.detail}); only a restart of "
                "tritonserver ends them"
            )
        else:
            self._server_failed(result.detail)

    def _replaced(self, stub: StubProcess) -> bool:
        """Whether another live stub runs ``stub``'s instance: the exit ended an old incarnation of a
        reloaded model. Triton never restarts a stub, so a dead instance has no live stub."""
        return any(
            s.instance == stub.instance and s.pid != stub.pid for s in stub_processes(self.server.pid or 0)
        )

    # -- draining ----------------------------------------------------------------------------------

    def _drain(self) -> int:
        previous = self.lifecycle.state
        self.lifecycle.to(State.DRAINING)
        timeout_s = self.policy.drain_timeout_s
        if not self.server.is_alive():
            if previous is State.RESTARTING:
                self.log("blip2-triton: stop requested during a restart: nothing was running")
                return ExitCode.DRAINED
            self.log("blip2-triton: tritonserver is not running: nothing to drain (what it held is lost)")
            return ExitCode.DRAIN_FAILED
        starting = previous in (State.STARTING, State.RESTARTING)
        if starting and not accepts_connections(self.server.client_host, self.server.grpc_port):
            # tritonserver opens gRPC first: with gRPC not up yet, no request was ever accepted.
            self.server.kill()
            self.log("blip2-triton: stop requested before tritonserver took requests: nothing to drain")
            return ExitCode.DRAINED
        self.log(f"blip2-triton: stop requested: draining, at most {timeout_s:g} s (--drain-timeout)")
        try:
            result = drain(self.server, timeout_s, log=self.log, check=self._drain_check)
        except Exception as exc:  # the server may be dying: stop it anyway
            self.log(f"blip2-triton: drain failed ({one_line(str(exc))}); stopping tritonserver")
            self.server.kill()
            return ExitCode.DRAIN_FAILED
        if result.complete:
            self.log(f"blip2-triton: drained in {result.seconds:.1f} s; stopping tritonserver")
            self.server.stop()
            return ExitCode.DRAINED
        unfinished = ", ".join(f"{name} {state}" for name, state in result.unfinished.items())
        if result.aborted is not None:
            self.server.kill()
            self.log(
                f"blip2-triton: drain failed: {result.aborted}; killed tritonserver (still draining: {unfinished})"
            )
            return ExitCode.DRAIN_FAILED
        cut = self._in_flight_description()
        self.server.stop()
        self.log(
            f"blip2-triton: drain timeout ({timeout_s:g} s): cut off {cut}; still draining: {unfinished}"
        )
        return ExitCode.DRAIN_TIMEOUT

    def _drain_check(self, client) -> str | None:
        """At every drain poll: note stub deaths; a reason to stop if requests are stuck in a dead stub.

        A stub that exits while its model is READY died (the drain has not unloaded that model yet);
        one whose model is unloading ended with it."""
        if not self.server.is_alive():
            return f"tritonserver exited with code {self.server.returncode} during the drain"
        headers = self.server.admin_grpc_headers
        states = model_states(client, headers)
        ready = ready_models(client, headers)
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if not isinstance(event, StubExited) or event.server_pid != self.server.pid:
                continue
            if self._replaced(event.stub):
                continue
            model = event.stub.model
            if model not in ready:
                continue
            # The model cannot answer; unload it now (what it held ends with an error, or is stuck:
            # see below). It is never loaded again.
            self._dead.setdefault(model, event)
            self.log(f"blip2-triton: stub {event.stub.instance} died during the drain; unloading '{model}'")
            client.unload_model(model, headers=headers, client_timeout=10)
        now = time.monotonic()
        for model, dead in self._dead.items():
            gone = instance_gone(states, model, dead.stub.region_path)
            if not gone and now - dead.at > self.policy.drain_stuck_grace_s:
                return f"requests are stuck in the dead stub {dead.stub.instance} (pid {dead.stub.pid})"
        return None

    def _in_flight_description(self) -> str:
        try:
            counts = requests_in_flight(self.server.metrics_url)
        except OSError:
            return "the in-flight requests (count unavailable)"
        detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
        total = sum(counts.values())
        return f"{total} in-flight requests ({detail})" if total else "the in-flight requests"
