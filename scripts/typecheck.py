"""mypy over the package as it is installed (``make lint``).

setuptools maps ``client/``, ``export/`` and ``model_repository/`` into ``blip2_triton`` (the
``package-dir`` table of pyproject.toml), and the exported model folders import the runtime as
``blip2_runtime``; mypy follows neither mapping. So this builds the installed layout as a tree of
symlinks under ``.work/typecheck``, runs mypy there with the ``[tool.mypy]`` settings of
pyproject.toml, and prints each error with the path of the file in the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".work" / "typecheck"
RUNTIME_ALIAS = ("blip2_runtime", "blip2_triton/runtime")  # export/model_folders.py: RUNTIME_PACKAGE


def package_folders() -> dict[str, str]:
    """Installed package path -> checkout folder, from pyproject.toml's package-dir."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name.replace(".", "/"): folder for name, folder in setuptools["package-dir"].items()}
    folders[RUNTIME_ALIAS[0]] = RUNTIME_ALIAS[1]
    return folders


def build_tree(folders: dict[str, str]) -> None:
    """Symlink every ``.py`` and ``py.typed`` file of each folder to its installed path under TREE."""
    shutil.rmtree(TREE / "src", ignore_errors=True)
    for installed, folder in folders.items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix == ".py" or path.name == "py.typed":
                if "__pycache__" in path.parts:
                    continue
                link = TREE / "src" / installed / path.relative_to(ROOT / folder)
                if not link.exists():  # a nested mapping (client/ inside blip2_triton/) wins
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(path)


def checkout_path(line: str, folders: dict[str, str]) -> str:
    """An error line with its installed path replaced by the checkout's."""
    for installed in sorted(folders, key=len, reverse=True):
        if line.startswith(installed + "/"):
            return folders[installed] + line[len(installed) :]
    return line


def main() -> int:
    folders = package_folders()
    build_tree(folders)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--cache-dir",
        str(TREE / "cache"),
        "-p",
        "blip2_triton",
    ]
    result = subprocess.run(command, cwd=TREE / "src", capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        print(checkout_path(line, folders))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
