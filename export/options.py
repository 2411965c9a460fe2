"""What the user chooses for an export, declared once.

Each field of ``ExportOptions`` is a template value of the same name (``${max_batch_size}`` in a
``config.pbtxt.tmpl``); a field declared with ``flag()`` is also a ``blip2-triton export`` flag
(``--max-batch-size``). Adding an option is adding a field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ExportError
from .quantize import QUANTIZE_METHODS, check_quantize

DTYPES = ("fp32", "fp16", "bf16")
VISION_BACKENDS = ("python", "onnxruntime")
# Default queue bound per step, in batches: under overload a request waits behind at most this many
# full batches of its step before it runs, and the rest are refused at once (docs/operations.md).
QUEUE_BATCHES = 4


def flag(default: Any, *, help: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A field that is also a command-line flag: ``--`` + its name with dashes."""
    return field(default=default, metadata={"flag": {"help": help, "choices": choices}})


@dataclass(frozen=True)
class ExportOptions:
    """What the user chose for an export."""

    max_batch_size: int = flag(8)
    dtype: str = flag("fp32", choices=DTYPES, help="weights precision (fp32 on CPU)")
    device: str = flag("cpu", help="where the LLM stage runs: cpu, cuda, cuda:N")
    vision_backend: str = flag(
        "python",
        choices=VISION_BACKENDS,
        help="python: onnxruntime inside a Python-backend model (pip-installed server); "
        "onnxruntime: Triton's native onnxruntime backend (NGC container)",
    )
    queue_delay_us: int = flag(2000, help="dynamic batching queue delay")
    max_queue_size: int = flag(
        0,
        help="requests that may wait in each step's queue; more get UNAVAILABLE at once "
        "(default 0: 4 x --max-batch-size)",
    )
    queue_timeout_us: int = flag(
        30_000_000,
        help="how long a request may wait in a step's queue before it gets UNAVAILABLE "
        "(microseconds; 0: no limit; a request's own timeout may only shorten it)",
    )
    max_active_sequences: int = flag(
        16, help="sequences the LLM engine generates at once (its KV-cache slots); see README: sizing"
    )
    max_sequence_tokens: int = flag(
        1024, help="tokens one slot holds: image tokens + prompt + new tokens (decoder tokens for T5)"
    )
    max_queued_requests: int = flag(
        64, help="requests waiting for a free slot; past it a request is refused at once (UNAVAILABLE)"
    )
    vision_cache_mb: int = flag(
        64, help="Triton response cache for blip2_vision (same image, no second encoding); 0 turns it off"
    )
    prefix_cache_mb: int = flag(
        128,
        help="OPT: keys/values of earlier (image, prompt) prefixes kept on the LLM's device, so a second "
        "question or the next chat turn prefills only what is new; 0 turns it off",
    )
    quantize: str = flag(
        "none",
        choices=QUANTIZE_METHODS,
        help="int8: the LLM's linear layers (torch dynamic quantization) and the vision graph "
        "(onnxruntime's quantizer) in int8; fp32 on CPU only",
    )
    preprocess_instances: int = 2
    force: bool = flag(False, help="allow a dtype/device choice we advise against")

    def check(self) -> None:
        """Refuse values that cannot work, with the flag to change in the message."""
        if self.max_batch_size < 1:
            raise ExportError("--max-batch-size must be at least 1")
        for name in ("max_active_sequences", "max_sequence_tokens", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise ExportError(f"--{name.replace('_', '-')} must be at least 1")
        if self.vision_cache_mb < 0:
            raise ExportError("--vision-cache-mb must be 0 (off) or more")
        if self.prefix_cache_mb < 0:
            raise ExportError("--prefix-cache-mb must be 0 (off) or more")
        if self.max_queue_size < 0:
            raise ExportError("--max-queue-size must be 0 (4 x --max-batch-size) or more")
        if self.queue_timeout_us < 0:
            raise ExportError("--queue-timeout-us must be 0 (no limit) or more")
        if self.dtype not in DTYPES:
            raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}")
        if self.vision_backend not in VISION_BACKENDS:
            raise ExportError(f"--vision-backend must be one of {', '.join(VISION_BACKENDS)}")
        check_quantize(self.quantize, self.dtype, self.device)
        if self.dtype == "fp16" and self.device == "cpu" and not self.force:
            raise ExportError(
                "--dtype fp16 needs a GPU (--device cuda); on CPU use fp32 or bf16, or pass --force"
            )

    @property
    def instance_kind(self) -> str:
        """Triton's instance kind for the models that run on ``device``."""
        return "KIND_GPU" if self.device.startswith("cuda") else "KIND_CPU"

    def template_values(self) -> dict[str, Any]:
        """Every option by its field name, plus ``instance_kind`` and the vision cache switch."""
        return {
            **dataclasses.asdict(self),
            "instance_kind": self.instance_kind,
            "vision_response_cache": "true" if self.vision_cache_mb > 0 else "false",
            "max_queue_size": self.max_queue_size or QUEUE_BATCHES * self.max_batch_size,
        }


def flag_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of ``ExportOptions`` that are command-line flags, in declaration order."""
    return tuple(f for f in dataclasses.fields(ExportOptions) if "flag" in f.metadata)
