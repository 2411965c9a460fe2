"""The README's layout map stays true: every module is listed with a job, and every listed module exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the modules live: the package's folders (setuptools maps export/, client/ and
# model_repository/ into it) and the training distribution.
SOURCE_FOLDERS = ("blip2_triton", "export", "client", "training/blip2_triton_train")
ROW = re.compile(r"^\| `([^`]+\.py)` \| (.*) \|$")


def _modules() -> set[str]:
    found = {p.relative_to(ROOT).as_posix() for p in (ROOT / "model_repository").glob("*/1/model.py")}
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py") and "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def _listed() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Layout") : readme.index("## Export")]
    return {m.group(1): m.group(2).strip() for line in section.splitlines() if (m := ROW.match(line))}


def test_every_module_is_on_the_map_with_a_job():
    listed = _listed()
    assert sorted(_modules() - set(listed)) == [], "missing from the README's layout map"
    assert sorted(name for name, job in listed.items() if len(job) < 10) == [], "listed without a job"


def test_the_map_lists_no_module_that_is_gone():
    assert sorted(set(_listed()) - _modules()) == []
