"""The supply chain stays auditable: hashed locks that cover every declared dependency, one version,
the license the package declares."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import blip2_triton

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements-build.lock", "requirements.lock", "requirements-dev.lock")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+?)(?: \\)?$")


def _pins(lock: str) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of hashes)}`` of a lock written by ``make lock``."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in (ROOT / lock).read_text().splitlines():
        if pin := PIN.match(line):
            name = canonicalize_name(pin[1])
            pins[name] = (pin[2], 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def _declared() -> list[Requirement]:
    """Every requirement of pyproject.toml (extras included) and of the training's, but the project itself."""
    found = []
    for path in (ROOT / "pyproject.toml", ROOT / "training" / "pyproject.toml"):
        project = tomllib.loads(path.read_text())["project"]
        extras = project.get("optional-dependencies", {}).values()
        texts = [*project.get("dependencies", []), *(text for extra in extras for text in extra)]
        found += [r for r in map(Requirement, texts) if canonicalize_name(r.name) != "blip2-triton"]
    return found


def test_every_locked_package_is_pinned_with_hashes():
    for lock in LOCKS:
        pins = _pins(lock)
        assert pins, lock
        assert sorted(name for name, (_, hashes) in pins.items() if hashes == 0) == [], lock


def test_the_locks_hold_every_declared_dependency_at_an_allowed_version():
    pins = {name: version for lock in LOCKS for name, (version, _) in _pins(lock).items()}
    missing = [str(r) for r in _declared() if canonicalize_name(r.name) not in pins]
    assert missing == [], "declared in pyproject.toml but not locked: run make lock"
    outside = [
        f"{r} (locked {pins[canonicalize_name(r.name)]})"
        for r in _declared()
        if not r.specifier.contains(Version(pins[canonicalize_name(r.name)]), prereleases=True)
    ]
    assert outside == [], "locked outside the declared range: run make lock"


def test_setup_installs_with_hashes_only():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [
        line for line in setup.splitlines() if line.strip().startswith("pip_install ") and "-r " in line
    ]
    assert installs and all("--require-hashes" in line for line in installs)


def test_one_version_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert metadata.version("blip2-triton") == blip2_triton.__version__
    shown = subprocess.run(
        [sys.executable, "-m", "blip2_triton.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert shown.stdout.split() == ["blip2-triton", blip2_triton.__version__]


def test_the_license_file_is_the_declared_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    text = (ROOT / "LICENSE").read_text()
    assert project["license"] == "Apache-2.0"
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 11_000
