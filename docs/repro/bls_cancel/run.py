"""Cancel storm against decoupled Python models on tritonserver 2.51; prints what became of the server.

    .venv/bin/python docs/repro/bls_cancel/run.py VARIANT [--runs 5] [--streams 1000] [--time-limit 60]

Each run: copy models/ with the variant's parameters (VARIANTS below) into a temporary repository,
start one tritonserver (blip2_triton.server.process.TritonServer, 127.0.0.1, free ports), let 8
client threads open gRPC streams and cancel each 0-100 ms after sending (stop_stream(
cancel_requests=True); --client aio: the asyncio client's task cancel; --client aio-keep: the same
streams, not cancelled, read to their end: a control for the load) until --streams streams or
--time-limit s; wait up to --drain-timeout s for the stubs to finish the backlog; probe with one
uncancelled stream. A run reports every problem seen:
  crash      - tritonserver died (signal, and the top of Triton's backtrace, symbolized)
  stub died  - a Python-backend stub process died (glibc's heap-corruption message from the log)
  hang       - the server is alive but the probe got no FINAL response in --probe-timeout s (or
               an error instead)
  stuck      - the stubs still had threads in flight after --drain-timeout s
  bad data   - the front read a BLS response it could not parse (logged "front serve: ...")
Server logs (and gdb stacks of stuck servers with --stacks) stay in --logs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the project root, for blip2_triton
from blip2_triton.server.process import TritonServer  # noqa: E402

# variant: (model the clients call, front parameters, worker parameters)
BLS = dict(source="async_exec")
OTHER = dict(final_from="other")  # a second thread sends the end while the streaming thread sends
LOCKED = dict(final_from="other", send_lock="true")  # the same, every send of a stream under one lock
DRAIN = dict(BLS, read_to_end="true")  # the front reads every BLS iterator to its end
KEEP = dict(DRAIN, keep_iterators_s="5")  # ... and holds it 5 s more before dropping it
VARIANTS = {
    # -- no BLS: clients call the worker directly / the front makes its own pieces
    "direct-final": ("worker", {}, dict(after_cancel="final")),
    "direct-send": ("worker", {}, dict(after_cancel="send")),  # sends everything after the cancel
    "direct-other": ("worker", {}, dict(OTHER, after_cancel="final")),
    "direct-other-locked": ("worker", {}, dict(LOCKED, after_cancel="final")),
    # a thread asks is_cancelled() until 0.5 s after the stream's FINAL (20-piece streams: many end
    # before their client cancels), and its control without that thread
    "direct-poll-after-end": ("worker", {}, dict(after_cancel="final", pieces="20", poll_after_end_s="0.5")),
    "direct-final-short": ("worker", {}, dict(after_cancel="final", pieces="20")),
    "local-error": ("front", dict(source="local", after_cancel="error"), {}),
    # -- BLS front -> worker (the worker always streams all its pieces: 2.51 cannot cancel a BLS
    #    request); the front stops reading on a cancel and drops the iterator (H1) ...
    "bls-stop-error": ("front", dict(BLS, after_cancel="error"), {}),
    "bls-stop-error-exec": ("front", dict(source="exec", after_cancel="error"), {}),
    "bls-stop-final": ("front", dict(BLS, after_cancel="final"), {}),  # H2: only the FINAL flag
    "bls-stop-nothing": ("front", dict(BLS, after_cancel="nothing"), {}),  # H2: nothing at all
    # ... or reads every iterator to its end
    "bls-drain-error": ("front", dict(DRAIN, after_cancel="error"), {}),
    "bls-drain-final": ("front", dict(DRAIN, after_cancel="final"), {}),
    "bls-send": ("front", dict(DRAIN, after_cancel="send"), {}),  # H2: forwards everything after cancel
    "bls-drain-final-keep": ("front", dict(KEEP, after_cancel="final"), {}),
    "bls-send-keep": ("front", dict(KEEP, after_cancel="send"), {}),
    # -- the project's pattern: on a cancel the front also sends the worker a control request; the
    #    worker's end is sent by the thread running it, maybe while its streaming thread sends
    "project": ("front", dict(BLS, after_cancel="error", stop_worker="true"), OTHER),
    "project-worker-stream": ("front", dict(BLS, after_cancel="error", stop_worker="true"), {}),
    "project-drain": ("front", dict(DRAIN, after_cancel="error", stop_worker="true"), OTHER),
    "project-keep": ("front", dict(KEEP, after_cancel="error", stop_worker="true"), OTHER),
    "project-fixed": ("front", dict(KEEP, after_cancel="error", stop_worker="true"), LOCKED),
}


def write_repository(root: Path, front: dict[str, str], worker: dict[str, str]) -> None:
    """models/ copied to ``root`` with the given config parameters replaced."""
    shutil.copytree(HERE / "models", root, symlinks=False)
    for model, params in (("front", front), ("worker", worker)):
        config = root / model / "config.pbtxt"
        text = config.read_text()
        for key, value in params.items():
            pattern = rf'(parameters {{ key: "{key}" value: {{ string_value: )"[^"]*"'
            text, count = re.subn(pattern, rf'\1"{value}"', text)
            assert count == 1, f"{model}: no parameter {key}"
        config.write_text(text)


def prompt() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("PROMPT", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello"], dtype=np.object_))
    return tensor


class Storm:
    """Streams opened and cancelled by several client threads, bounded in count and time."""

    def __init__(self, server: TritonServer, model: str, streams: int, time_limit: float) -> None:
        self.server, self.model, self.streams = server, model, streams
        self.deadline = time.monotonic() + time_limit
        self.sent = 0
        self.lock = threading.Lock()

    def take(self) -> bool:
        """One more stream allowed? (count, time, and the server still alive)"""
        with self.lock:
            if self.sent >= self.streams or time.monotonic() > self.deadline or not self.server.is_alive():
                return False
            self.sent += 1
            return True

    def thread_client(self, seed: int) -> None:
        rng = random.Random(seed)
        client = grpcclient.InferenceServerClient(self.server.grpc_url)
        try:
            while self.take():
                client.start_stream(callback=lambda result, error: None, stream_timeout=30)
                client.async_stream_infer(self.model, [prompt()])
                time.sleep(rng.uniform(0.0, 0.1))
                client.stop_stream(cancel_requests=True)
        except Exception as exc:  # the server went away under us
            print(f"  client {seed}: {type(exc).__name__}: {str(exc)[:120]}")
        finally:
            client.close()

    async def aio_client(self, seed: int, keep: bool) -> None:
        import tritonclient.grpc.aio as aioclient

        rng = random.Random(seed)
        async with aioclient.InferenceServerClient(self.server.grpc_url) as client:

            async def one_stream() -> None:
                async def requests():
                    yield {"model_name": self.model, "inputs": [prompt()]}

                async for _ in client.stream_infer(requests(), stream_timeout=30):
                    pass

            kept = []
            while self.take():
                task = asyncio.ensure_future(one_stream())
                await asyncio.sleep(rng.uniform(0.0, 0.1))
                if keep:
                    kept.append(task)
                else:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if kept:  # each stream is bounded by its stream_timeout
                await asyncio.gather(*kept, return_exceptions=True)

    def run(self, threads: int, kind: str) -> None:
        if kind.startswith("aio"):

            async def main():
                clients = (self.aio_client(i, keep=kind == "aio-keep") for i in range(threads))
                await asyncio.gather(*clients, return_exceptions=True)

            asyncio.run(main())
            return
        workers = [
            threading.Thread(target=self.thread_client, args=(i,), daemon=True) for i in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def stubs(pgid: int) -> dict[int, tuple[str, int]]:
    """The live Python-backend stubs of the server's group: pid -> (model, threads)."""
    import os

    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or entry.name == str(pgid) or os.getpgid(int(entry.name)) != pgid:
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie: died
            args = (entry / "cmdline").read_bytes().split(b"\0")
            model = Path(args[1].decode()).parent.parent.name if len(args) > 1 else "?"
            found[int(entry.name)] = (model, len(list((entry / "task").iterdir())))
        except (OSError, IndexError):
            continue
    return found


def drain(server: TritonServer, idle: dict[int, tuple[str, int]], timeout: float) -> str:
    """Wait until the stubs are back to their idle thread count: the storm's backlog is served."""
    started = time.monotonic()
    baseline = sum(threads for _, threads in idle.values())
    while server.is_alive():
        threads = sum(t for _, t in stubs(server.pid).values())
        if threads <= baseline + 2:
            return f"drained in {time.monotonic() - started:.0f} s"
        if time.monotonic() - started > timeout:
            return f"stuck ({threads} stub threads after {timeout:.0f} s)"
        time.sleep(1.0)
    return "server gone"


def probe(server: TritonServer, model: str, timeout: float) -> str | None:
    """One stream, not cancelled: None if it reaches its FINAL response in ``timeout`` s, else why not."""
    answer: list[str | None] = []
    done = threading.Event()

    def callback(result, error):
        if error is not None:
            answer.append(f"error: {str(error)[:100]}")
            done.set()
        elif result.get_response().parameters["triton_final_response"].bool_param:
            answer.append(None)
            done.set()

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=callback, stream_timeout=timeout + 5)
        client.async_stream_infer(model, [prompt()], enable_empty_final_response=True)
        if not done.wait(timeout):
            return "no answer"
        client.stop_stream(cancel_requests=True)
        return answer[0]
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    finally:
        client.close()


def dump_stacks(pgid: int, path: Path) -> None:
    """gdb's `thread apply all bt` of every process of the server's group (server and stubs)."""
    import os
    import subprocess

    with open(path, "w") as out:
        for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != pgid:
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.write(f"===== pid {entry.name}: {cmd[:200]}\n")
            out.flush()
            subprocess.run(
                ["gdb", "-p", entry.name, "-batch", "-ex", "thread apply all bt"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
    print(f"  stacks in {path}")


class Symbols:
    """Names for the raw addresses of Triton's backtrace, from the server's /proc/PID/maps (read
    while it ran) and the libraries' symbol tables (``nm``: libtriton_python.so keeps its .symtab)."""

    def __init__(self, maps: str) -> None:
        self.maps = []  # (start, end, file offset, path)
        for line in maps.splitlines():
            parts = line.split()
            if len(parts) >= 6 and parts[5].startswith("/"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                self.maps.append((start, end, int(parts[2], 16), parts[5]))
        self.tables: dict[str, list[tuple[int, str]]] = {}

    def table(self, path: str) -> list[tuple[int, str]]:
        import subprocess

        if path not in self.tables:
            out = subprocess.run(["nm", "-C", "--defined-only", path], capture_output=True, text=True).stdout
            rows = []
            for line in out.splitlines():
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[1] in "tTwW":
                    rows.append((int(parts[0], 16), parts[2]))
            self.tables[path] = sorted(rows)
        return self.tables[path]

    def name(self, address: int) -> str | None:
        import bisect

        for start, end, offset, path in self.maps:
            if start <= address < end:
                table = self.table(path)
                i = bisect.bisect_right(table, (address - start + offset, "\uffff")) - 1
                return table[i][1] if i >= 0 else None
        return None

    def frame(self, line: str) -> str:
        """'5# 0x7F... in /x/libtriton_python.so' -> '5# <function> (libtriton_python.so)'."""
        match = re.match(r"\s*(\d+)# (?:0x([0-9A-Fa-f]+)|(\S+)) in (\S+)", line)
        if not match:
            return line.strip()
        index, address, symbol, path = match.groups()
        if symbol is None:
            symbol = self.name(int(address, 16)) or "0x" + address
        symbol = re.sub(r"\(.*\)", "()", symbol)[:110]
        return f"{index}# {symbol} ({Path(path).name})"


def crash_summary(log: str, symbols: Symbols, frames: int = 8) -> str:
    """The signal and the first frames of Triton's backtrace (symbolized), or the abort message."""
    lines = log.splitlines()
    why = [line.strip() for line in lines if "terminate called" in line or "what():" in line][:2]
    for i, line in enumerate(lines):
        if "Signal (" in line and "Signal (2)" not in line and "Signal (15)" not in line:
            trace = [symbols.frame(f) for f in lines[i + 1 : i + 40] if re.match(r"\s*\d+#", f)]
            # the signal handler, libc, libstdc++ and the unwinder say nothing about the cause
            trace = [
                f
                for f in trace
                if not re.search(r"libc\.so|libstdc\+\+|libgcc_s|^\d+# triton::server::\(\)", f)
            ]
            trace = trace[:frames]
            return "\n    ".join([*why, line.strip()]) + "\n      " + "\n      ".join(trace)
    for pattern in ("terminate called", "what():", "malloc", "double free", "corrupted"):
        for line in lines:
            if pattern in line:
                return line.strip()
    return "(no backtrace in the log)"


def one_run(variant: str, index: int, args) -> tuple[list[str], str]:
    """One storm on a fresh server: (problems seen, report line)."""
    model, front, worker = VARIANTS[variant]
    log_file = Path(args.logs) / variant / f"run{index}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="bls_cancel_") as tmp:
        repository = Path(tmp) / "models"
        write_repository(repository, front, worker)
        server = TritonServer.on_free_ports(repository, log_file=log_file, startup_timeout_s=120)
        server.start()
        idle = stubs(server.pid)
        maps = Path(f"/proc/{server.pid}/maps").read_text()
        log_file.with_suffix(".maps").write_text(maps)  # to symbolize the log's backtrace later
        symbols = Symbols(maps)
        problems = []
        try:
            storm = Storm(server, model, args.streams, args.time_limit)
            started = time.monotonic()
            storm.run(args.threads, args.client)
            elapsed = time.monotonic() - started
            drained = drain(server, idle, args.drain_timeout)
            if drained.startswith("stuck"):
                problems.append("stuck")
            failed = probe(server, model, args.probe_timeout) if server.is_alive() else None
            if failed is not None:
                problems.append("hang" if server.is_alive() else "crash")
                drained += f"; probe: {failed}"
            if not server.is_alive() and "crash" not in problems:
                problems.append("crash")
            dead = sorted(name for pid, (name, _) in idle.items() if pid not in stubs(server.pid))
            if dead and server.is_alive():
                problems.append("stub died")
            if args.stacks and server.is_alive() and ({"hang", "stuck"} & set(problems)):
                dump_stacks(server.pid, log_file.with_suffix(".stacks.txt"))
        finally:
            server.stop(timeout_s=10)
    log = server.log_text()
    if "crash" not in problems and re.search(r"Signal \((11|6)\) received", log):
        problems.append("crash")  # after the probe, before or during the shutdown
    heap = [
        line.strip()
        for line in log.splitlines()
        if re.match(r"(malloc|free|double free|corrupted|munmap)", line)
    ]
    if heap and "stub died" not in problems:
        problems.append("stub died")
    if re.search(r"front serve: (?!RuntimeError)", log):
        problems.append("bad data")
    counts = "; ".join(re.findall(r"(\w+ counts: \{[^}]*\})", log)) or "no counts (finalize not reached)"
    stuck_models = [m for m in ("front", "worker") if f"successfully unloaded '{m}'" not in log]
    unload = (
        f"; not unloaded at exit: {', '.join(stuck_models)}"
        if stuck_models and "crash" not in problems
        else ""
    )
    line = (
        f"{variant} run {index}: {', '.join(problems) or 'ok'}; {storm.sent} streams in {elapsed:.1f} s; "
        f"{drained}{unload}; {counts}"
    )
    if "crash" in problems:
        line += "\n    " + crash_summary(log, symbols)
    for message in heap[:2]:
        line += f"\n    stub: {message}"
    for message in re.findall(r"front serve: [^\n]*", log)[:2]:
        line += f"\n    {message[:160]}"
    return problems, line


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--streams", type=int, default=1000, help="streams per run (all cancelled)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds of storm per run")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--client", choices=("thread", "aio", "aio-keep"), default="thread")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the backlog")
    parser.add_argument("--probe-timeout", type=float, default=30.0)
    parser.add_argument("--stacks", action="store_true", help="on a hang, dump gdb stacks next to the log")
    parser.add_argument("--logs", default=str(Path(tempfile.gettempdir()) / "bls_cancel_logs"))
    args = parser.parse_args()
    seen = []
    for index in range(1, args.runs + 1):
        problems, line = one_run(args.variant, index, args)
        print(line, flush=True)
        seen.append(problems)
    tally = {p: sum(p in run for run in seen) for p in ("crash", "stub died", "hang", "stuck", "bad data")}
    print(
        f"SUMMARY {args.variant} client={args.client}: runs={args.runs} "
        + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in tally.items())
        + f" clean={sum(not run for run in seen)}"
    )


if __name__ == "__main__":
    main()
