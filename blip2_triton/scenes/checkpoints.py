"""Where the trained scene checkpoints are shipped (``blip2_triton/fixtures/checkpoints/``)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

CAPTIONER = "scenes-opt"
RETRIEVER = "scenes-itm"


def checkpoints_dir() -> Path:
    """The folder of the shipped scene checkpoints, training report and loss curve."""
    return Path(str(files("blip2_triton.fixtures") / "checkpoints"))


def captioner_checkpoint() -> Path:
    """The trained ``Blip2ForConditionalGeneration`` (OPT) scene checkpoint (``save_pretrained`` layout)."""
    return checkpoints_dir() / CAPTIONER


def retriever_checkpoint() -> Path:
    """The trained ``Blip2ForImageTextRetrieval`` scene checkpoint (``save_pretrained`` layout)."""
    return checkpoints_dir() / RETRIEVER


def image_size_of(checkpoint: str | Path) -> int:
    """The image side a checkpoint's vision tower takes (scenes are rendered at it)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    return int(config["vision_config"]["image_size"])
