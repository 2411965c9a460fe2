"""The manifest of an exported repository: where it came from, what it holds, checksums."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
VERSIONED_PACKAGES = ("blip2-triton", "torch", "transformers", "onnx", "onnxruntime", "tritonclient")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(repository: Path, details: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` with ``details`` plus versions and the sha256 of every file."""
    files = {
        str(path.relative_to(repository)): sha256(path)
        for path in sorted(repository.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE and "__pycache__" not in path.parts
    }
    manifest = {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **details,
        "versions": package_versions(),
        "files": files,
    }
    (repository / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_manifest(repository: Path) -> list[str]:
    """Files whose checksum no longer matches the manifest (empty when all match)."""
    manifest = json.loads((repository / MANIFEST_FILE).read_text())
    bad = []
    for name, digest in manifest["files"].items():
        path = repository / name
        if not path.is_file() or sha256(path) != digest:
            bad.append(name)
    return bad
