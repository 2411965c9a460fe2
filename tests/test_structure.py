"""The shape of the package: no import circle, one name per module, a wheel that builds clean.

The import graph is read from the source with ``ast`` (every import, at module level or inside a
function, counts: a lazy import hides a circle, it does not remove it) so that a circle fails here
the day it is written, whatever order the modules happen to be imported in.

The scene-model training (``training/``, package ``blip2_triton_train``) is a distribution of its
own: the serving package never imports it, and neither the wheel nor the images carry it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import blip2_triton

PACKAGE = "blip2_triton"
ROOT = Path(__file__).resolve().parent.parent
# Top-level folders of the checkout that are parts of the package under another name.
MAPPED_FOLDERS = ("export", "client", "model_repository")
# Modules that only Triton's Python-backend stub can import: it provides this module.
STUB_MODULE = "triton_python_backend_utils"
# The scene-model training: its own distribution, never in the serving wheel or images.
TRAINING_FOLDER = ROOT / "training"
TRAINING_PACKAGE = "blip2_triton_train"


def _package_modules() -> dict[str, Path]:
    """Every module of the package by its dotted name, with its source file."""
    modules = {PACKAGE: Path(blip2_triton.__file__)}
    roots = [(blip2_triton.__path__, f"{PACKAGE}.")]
    for folder in MAPPED_FOLDERS:  # mapped from elsewhere: not under blip2_triton.__path__
        package = importlib.import_module(f"{PACKAGE}.{folder}")
        modules[package.__name__] = Path(package.__file__)
        roots.append((package.__path__, f"{package.__name__}."))
    for path, prefix in roots:
        for info in pkgutil.walk_packages(path, prefix=prefix):
            spec = importlib.util.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                modules[info.name] = Path(spec.origin)
    return modules


def _imported_names(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` (source ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def add(candidate: str) -> None:
        while candidate and candidate not in known:  # `from x.y import Class` -> module x.y
            candidate = candidate.rpartition(".")[0]
        if candidate and candidate != name:
            found.add(candidate)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from . import errors` imports the submodule errors
                submodule = f"{module}.{alias.name}"
                add(submodule if submodule in known else module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_package_has_no_import_circle() -> None:
    modules = _package_modules()
    known = set(modules)
    graph = {name: _imported_names(name, path, known) for name, path in modules.items()}
    assert len(modules) > 40, sorted(modules)  # the walk really found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_loads_under_one_name_only() -> None:
    """Importing the whole package loads each source file once, under a ``blip2_triton.`` name."""
    for name, path in _package_modules().items():
        if STUB_MODULE not in path.read_text() and not name.endswith(".__main__"):
            importlib.import_module(name)
    names_by_file: dict[str, list[str]] = {}
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if not source or not Path(source).is_absolute():  # torch.ops and the like: no real file
            continue
        parts = (
            Path(source).resolve().relative_to(ROOT).parts
            if source and Path(source).resolve().is_relative_to(ROOT)
            else ()
        )
        if parts and parts[0] not in (".venv", "tests"):
            names_by_file.setdefault(str(Path(source).resolve()), []).append(name)
    assert names_by_file, "no module of the checkout was loaded"
    doubles = {path: names for path, names in names_by_file.items() if len(names) > 1}
    assert doubles == {}
    assert [n for names in names_by_file.values() for n in names if not n.startswith(PACKAGE)] == []
    assert not [name for name in sys.modules if name.split(".")[0] in MAPPED_FOLDERS]


def test_the_source_never_imports_a_folder_by_its_checkout_name() -> None:
    modules = _package_modules()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not set(roots) & set(MAPPED_FOLDERS), f"{name} imports {roots}"


def _training_modules() -> set[str]:
    """The module names of the training package (``train``, ``data``, ...)."""
    modules = {p.stem for p in (TRAINING_FOLDER / TRAINING_PACKAGE).glob("*.py")} - {"__init__"}
    assert {"train", "training", "captioner_training", "retriever_training"} <= modules, modules
    return modules


def test_the_package_never_imports_the_training() -> None:
    """Serving, the demo and ``eval`` run without ``blip2_triton_train`` installed."""
    for name, path in _package_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert TRAINING_PACKAGE not in roots, f"{name} imports the training package"
    scenes = {n.rpartition(".")[2] for n in _package_modules() if n.startswith(f"{PACKAGE}.scenes.")}
    assert scenes, "no blip2_triton.scenes module found"
    assert scenes & _training_modules() == set()


def test_the_images_copy_no_training_code() -> None:
    """The Dockerfiles copy named folders only, and their build contexts leave ``training/`` out."""
    for dockerfile in sorted((ROOT / "docker").glob("Dockerfile*")):
        if dockerfile.suffix == ".dockerignore":
            lines = [line.strip() for line in dockerfile.read_text().splitlines()]
            assert "*" in lines, dockerfile  # everything out, then the image's folders back in
            assert not [line for line in lines if line.startswith("!") and "training" in line], dockerfile
            continue
        copies = [line for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")]
        assert copies, dockerfile
        assert not [line for line in copies if "training" in line or " . " in line], dockerfile


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel built from a copy of the checkout's files, and the build's output.

    A copy, not the checkout: setuptools packs whatever an earlier build left in ``build/lib``
    (modules since moved or deleted included), and the checkout's ``build/`` is shared.
    """
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # deleted in the work tree but still in the index: not copied
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("blip2_triton-*.whl")
    return path, build.stdout + build.stderr


def test_the_wheel_builds_without_warnings(wheel: tuple[Path, str]) -> None:
    _, output = wheel
    assert "would be ignored" not in output
    assert "Warning" not in output


def test_the_wheel_ships_what_an_installed_package_needs(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    for model in ("blip2", "blip2_stream", "blip2_vision", "blip2_preprocess", "blip2_itm"):
        assert any(n.startswith(f"blip2_triton/model_repository/{model}/") for n in names), model
    assert "blip2_triton/model_repository/blip2_stream/1/model.py" in names
    assert "blip2_triton/fixtures/samples/sky_circle.jpg" in names
    assert "blip2_triton/runtime/contract.py" in names
    assert not [n for n in names if n.startswith(("tests/", "export/", "client/", "samples/"))]


def test_the_wheel_carries_no_training_code(wheel: tuple[Path, str]) -> None:
    """The scenes serving, the demo and ``eval`` need are in; the training package is not."""
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    for module in ("generator", "render", "language", "checkpoints", "served_eval", "eval_command", "demo"):
        assert f"blip2_triton/scenes/{module}.py" in names, module
    assert "blip2_triton/fixtures/checkpoints/scenes-opt/model.safetensors" in names
    assert not [n for n in names if n.startswith((f"{TRAINING_PACKAGE}/", "training/"))]
    scenes = {Path(n).stem for n in names if n.startswith("blip2_triton/scenes/") and n.endswith(".py")}
    assert scenes & _training_modules() == set()
    with zipfile.ZipFile(path) as archive:  # under any name: no optimiser step in the wheel
        trains = [n for n in names if n.endswith(".py") and b".backward(" in archive.read(n)]
    assert trains == []


def test_the_installed_wheel_runs_the_demo(wheel: tuple[Path, str], tmp_path: Path) -> None:
    """``pip install`` of the wheel into an empty venv, then ``blip2-triton demo`` outside the checkout."""
    path, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # The locked, hashed dependencies as the image installs them (the locked pip first: the venv's
    # pip 23 refuses tritonclient[grpc,http] in hash-checking mode), then the wheel: its own
    # requirements (extras included) must be met by the lock: no index is asked.
    for args in (
        ["--require-hashes", "-r", str(ROOT / "requirements-build.lock")],
        ["--require-hashes", "-r", str(ROOT / "requirements.lock")],
        ["--no-index", f"{path}[server,export]"],
    ):
        install = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
        assert install.returncode == 0, install.stderr[-3000:]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    demo = subprocess.run(
        [str(venv / "bin" / "blip2-triton"), "demo", "--work-dir", str(workdir / "demo")],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, (demo.stdout + demo.stderr)[-3000:]
    assert "demo finished" in demo.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import blip2_triton; print(blip2_triton.__file__)"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed package, not the checkout
