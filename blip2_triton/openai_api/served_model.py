"""What the served repository is, read from its files: the model id, family, capability, tokenizer.

The id is the checkpoint's: the hub id the export was given (``Salesforce/blip2-opt-2.7b``), or the
folder's name for a local checkpoint. Tokens are counted with the repository's own tokenizer (the
``tokenizers`` library reads its ``tokenizer.json``), as the server tokenises a prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from tokenizers import Tokenizer

from blip2_triton.runtime.contract import ENGINE_MODEL, ITM_MODEL, PUBLIC_MODEL

MANIFEST_FILE = "manifest.json"
GENERATES = "generate"
RETRIEVES = "retrieve"
_ARCHITECTURES = {"Blip2ForConditionalGeneration": GENERATES, "Blip2ForImageTextRetrieval": RETRIEVES}


class NotARepositoryError(ValueError):
    """The folder is not an exported blip2-triton repository (or lacks what the frontend reads)."""


@dataclass(frozen=True)
class ServedModel:
    """The one model a repository serves, as the frontend presents it."""

    id: str
    architecture: str
    family: str | None  # "opt" or "t5" for a generating repository
    created: int  # the export's time, Unix seconds
    image_tokens: int  # query tokens an image takes in the prompt
    tokenizer: Tokenizer

    @property
    def capability(self) -> str:
        return _ARCHITECTURES[self.architecture]

    @property
    def generates(self) -> bool:
        return self.capability == GENERATES

    @property
    def readiness_model(self) -> str:
        """The Triton model whose readiness is the frontend's."""
        return PUBLIC_MODEL if self.generates else ITM_MODEL

    def count_prompt(self, prompt: str | None) -> int:
        """Prompt tokens as the server builds them: the image's query tokens, then the prompt's
        tokens with the tokenizer's special tokens (no prompt: the start token)."""
        return self.image_tokens + len(self.tokenizer.encode(prompt or "").ids)

    def count_text(self, text: str, *, special_tokens: bool = False) -> int:
        """Tokens of ``text`` (a generated answer: without special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=special_tokens).ids)


def model_id(source: str) -> str:
    """A hub id as it is; a local checkpoint folder by its name."""
    if source.startswith(("/", ".", "~")) or "\\" in source or Path(source).is_dir():
        return PurePosixPath(source.replace("\\", "/").rstrip("/")).name or source
    return source


def load_served_model(repository: Path) -> ServedModel:
    """The model of an exported repository; NotARepositoryError naming what is missing."""
    manifest_path = repository / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise NotARepositoryError(f"cannot read {manifest_path}: {exc}") from None
    architecture = manifest.get("architecture")
    if architecture not in _ARCHITECTURES:
        raise NotARepositoryError(f"{manifest_path}: unknown architecture {architecture!r}")
    generates = _ARCHITECTURES[architecture] == GENERATES
    folder = repository / (ENGINE_MODEL if generates else ITM_MODEL) / "1"
    try:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))
    except Exception as exc:
        raise NotARepositoryError(f"cannot read the tokenizer in {folder}: {exc}") from None
    shapes = manifest.get("shapes", {})
    image_tokens = (shapes.get("query_embeds") or shapes.get("image_embeds") or [0, 0])[1]
    created = manifest.get("created")
    return ServedModel(
        id=model_id(str(manifest.get("source", PUBLIC_MODEL))),
        architecture=architecture,
        family=manifest.get("family") if generates else None,
        created=int(datetime.fromisoformat(created).timestamp()) if created else 0,
        image_tokens=int(image_tokens),
        tokenizer=tokenizer,
    )
