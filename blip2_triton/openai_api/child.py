"""The frontend as a child process of ``blip2-triton serve --openai-port``: start, wait, stop.

The child runs ``blip2-triton openai`` against serve's tritonserver; it gets SIGTERM if serve dies
(``PR_SET_PDEATHSIG``). serve stops it after tritonserver has drained: during the drain the
frontend still answers, and what Triton refuses then (the model unloading, then Triton gone) it
answers 503 with ``Retry-After``, while ``/health`` says not ready.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from blip2_triton.command_errors import CommandError

from .config import API_KEY_ENV

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1


def _preexec(parent_pid: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class FrontendChild:
    """One ``blip2-triton openai`` process."""

    def __init__(self, triton_url: str, repository: Path, host: str, port: int, flags: Sequence[str]) -> None:
        self.host = host
        self.port = port
        self.command = [
            sys.executable,
            "-m",
            "blip2_triton.cli",
            "openai",
            f"--triton-url={triton_url}",
            f"--model-repository={repository}",
            f"--host={host}",
            f"--port={port}",
            *flags,
        ]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start it and wait until it answers ``/health/live``; CommandError if it exits first."""
        parent = os.getpid()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, preexec_fn=lambda: _preexec(parent)
        )
        deadline = time.monotonic() + timeout_s
        while not self._live():
            if self.process.poll() is not None:
                raise CommandError(
                    f"the OpenAI frontend exited with code {self.process.returncode} (see above)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise CommandError(
                    f"the OpenAI frontend did not answer on port {self.port} within {timeout_s:g} s"
                )
            time.sleep(_POLL_S)

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/live", timeout=1) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (uvicorn answers what it holds, then exits), SIGKILL after ``timeout_s``."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """``serve``'s flags for the frontend beside tritonserver."""
    parser.add_argument(
        "--openai-port",
        type=int,
        metavar="PORT",
        help="also serve the OpenAI API on PORT (blip2-triton openai, on --host; "
        f"API key from ${API_KEY_ENV}); stopped after the drain",
    )
    parser.add_argument(
        "--openai-allow-image-host",
        action="append",
        default=[],
        metavar="HOST",
        help="image_url may be an http(s) URL on HOST (repeat for more)",
    )


def for_serve(args: argparse.Namespace, grpc_port: int) -> FrontendChild | None:
    """The frontend ``serve``'s flags ask for (None without ``--openai-port``); its port checked now."""
    from blip2_triton.server.ports import port_in_use

    if args.openai_port is None:
        return None
    if port_in_use(args.openai_port):
        raise CommandError(f"port {args.openai_port} is in use (--openai-port)")
    grpc_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    flags = [f"--allow-image-host={host}" for host in args.openai_allow_image_host]
    return FrontendChild(
        f"{grpc_host}:{grpc_port}", args.model_repository, args.host, args.openai_port, flags
    )
