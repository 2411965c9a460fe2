#!/usr/bin/env python3
"""Check the deployment manifests: docker/compose.yaml and every docker/k8s/*.yaml.

Every file must parse (``yaml.safe_load_all``); then the things that break a deployment silently
are checked: the Triton ports that leave the container (gRPC 8001, metrics 8002; the images serve
HTTP on the container's loopback only), compose ports published on a loopback address unless
told otherwise, health checks through ``blip2-healthcheck`` (``ready`` and ``live``), the GPU
request, the model repository volume at /models, Service and HPA pointing at the Deployment,
Prometheus scraping of :8002/metrics, and kustomization resources that exist. Prints one line per problem; exit status 1 if there is any.

    python docker/check_manifests.py            # run by `make lint`
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

DOCKER_DIR = Path(__file__).resolve().parent
K8S_DIR = DOCKER_DIR / "k8s"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
# The ports that leave the container; HTTP (8000) stays on its loopback (the health check).
TRITON_PORTS = {"grpc": 8001, "metrics": 8002, "openai": 9000}  # openai: serve --openai-port
HTTP_PORT = 8000
HEALTHCHECK = "blip2-healthcheck"
LOOPBACK = ("127.0.0.1", "::1", "[::1]")
# A compose short port entry: [HOST:]PUBLISHED:TARGET[/PROTOCOL], parts may be ${VAR:-default}.
_PORT_PART = r"(\$\{[^}]*\}|[^:/${}]+)"
_PORT_ENTRY = re.compile(rf"^(?:{_PORT_PART}:)?{_PORT_PART}:(\d+)(?:/\w+)?$")
MODELS_PATH = "/models"


def load_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document of ``path`` (raises ``yaml.YAMLError`` on a syntax error)."""
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def manifest_files() -> list[Path]:
    """The files this script checks: compose.yaml and docker/k8s/*.yaml, sorted."""
    return [COMPOSE_FILE, *sorted(K8S_DIR.glob("*.yaml"))]


def _get(obj: Any, *keys: str, default: Any = None) -> Any:
    """``obj[k1][k2]...``, or ``default`` where a key is missing or a value is not a mapping."""
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def _container_port(mapping: str | int | dict) -> int | None:
    """The container side of a compose port entry ("8000:8000", "${X:-8000}:8000", 8000, long form)."""
    if isinstance(mapping, dict):
        return int(mapping["target"]) if "target" in mapping else None
    text = str(mapping).split("/")[0]
    tail = text.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# --------------------------------------------------------------------------------------------------
# Compose


def _volume_target(volume: str | dict) -> str | None:
    """Container path of a compose volume entry (short "src:dst[:mode]" or long form)."""
    if isinstance(volume, dict):
        return volume.get("target")
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _runs_healthcheck(command: list[str], endpoint: str) -> bool:
    """A command that runs the images' ``blip2-healthcheck <endpoint>`` (``ready`` or ``live``)."""
    return any(str(t).endswith(HEALTHCHECK) for t in command) and str(command[-1]) == endpoint


def _host_address(mapping: str | int | dict) -> str | None:
    """The host address a compose port entry binds (``${VAR:-x}`` read as x); None: every interface."""
    if isinstance(mapping, dict):
        host = mapping.get("host_ip")
    else:
        match = _PORT_ENTRY.match(str(mapping))
        host = match.group(1) if match else None
    if host is None:
        return None
    default = re.fullmatch(r"\$\{[^:}]*:?-([^}]*)\}", str(host))
    return default.group(1) if default else str(host)


def check_compose(doc: dict) -> list[str]:
    """Problems of the compose file."""
    problems = []
    services = doc.get("services") or {}
    for name in ("blip2", "blip2-cpu"):
        service = services.get(name)
        if not isinstance(service, dict):
            problems.append(f"compose: service {name!r} is missing")
            continue
        ports = {_container_port(p) for p in service.get("ports", [])}
        missing = sorted(set(TRITON_PORTS.values()) - ports)
        if missing:
            problems.append(f"compose: service {name!r} does not publish container ports {missing}")
        if HTTP_PORT in ports:
            problems.append(
                f"compose: service {name!r} publishes HTTP ({HTTP_PORT}), which the images keep internal"
            )
        test = [str(t) for t in _get(service, "healthcheck", "test", default=[]) or []]
        if not _runs_healthcheck(test, "ready"):
            problems.append(f"compose: service {name!r} has no healthcheck running {HEALTHCHECK} ready")
        if MODELS_PATH not in [_volume_target(v) for v in service.get("volumes", [])]:
            problems.append(f"compose: service {name!r} mounts nothing at {MODELS_PATH}")
        if not service.get("restart"):
            problems.append(f"compose: service {name!r} has no restart policy")
    devices = _get(services, "blip2", "deploy", "resources", "reservations", "devices", default=[]) or []
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        problems.append(
            "compose: service 'blip2' reserves no nvidia GPU (deploy.resources.reservations.devices)"
        )
    if "cpu" not in (_get(services, "blip2-cpu", "profiles", default=[]) or []):
        problems.append("compose: service 'blip2-cpu' is not in profile 'cpu'")
    for name, service in services.items():
        for entry in (service or {}).get("ports", []) if isinstance(service, dict) else []:
            if _host_address(entry) not in LOOPBACK:
                problems.append(
                    f"compose: service {name!r} publishes {entry!r} beyond loopback by default "
                    "(use ${BIND_ADDRESS:-127.0.0.1}:...)"
                )
    perf = services.get("perf")
    if not isinstance(perf, dict) or "perf" not in perf.get("profiles", []):
        problems.append("compose: service 'perf' (profile 'perf') is missing")
    elif "perf_analyzer" not in str(perf.get("command", "")):
        problems.append("compose: service 'perf' does not run perf_analyzer")
    return problems


# --------------------------------------------------------------------------------------------------
# Kubernetes


def _probe_runs(container: dict, probe: str, endpoint: str) -> bool:
    return _runs_healthcheck(_get(container, probe, "exec", "command", default=[]) or [], endpoint)


def _containers(doc: dict) -> list[dict]:
    return _get(doc, "spec", "template", "spec", "containers", default=[]) or []


def check_deployment(doc: dict, pvc_names: set[str]) -> list[str]:
    """Problems of a Deployment serving Triton."""
    name = _get(doc, "metadata", "name")
    where = f"Deployment {name}"
    problems = []
    pod_spec = _get(doc, "spec", "template", "spec", default={}) or {}
    selector = _get(doc, "spec", "selector", "matchLabels", default={}) or {}
    labels = _get(doc, "spec", "template", "metadata", "labels", default={}) or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{where}: spec.selector.matchLabels do not match the pod template labels")
    containers = _containers(doc)
    if not containers:
        return [*problems, f"{where}: no containers"]
    server = containers[0]
    ports = {p.get("name"): p.get("containerPort") for p in server.get("ports", [])}
    for port_name, number in TRITON_PORTS.items():
        if ports.get(port_name) != number:
            problems.append(
                f"{where}: container port {port_name!r} should be {number} (is {ports.get(port_name)})"
            )
    for probe, endpoint in (
        ("startupProbe", "ready"),
        ("readinessProbe", "ready"),
        ("livenessProbe", "live"),
    ):
        if not _probe_runs(server, probe, endpoint):
            problems.append(
                f"{where}: {probe} must exec {HEALTHCHECK} {endpoint} (the images serve HTTP on loopback only)"
            )
    if str(_get(server, "resources", "limits", "nvidia.com/gpu")) != "1":
        problems.append(f"{where}: resources.limits must ask for nvidia.com/gpu: 1")
    if not _get(server, "resources", "requests"):
        problems.append(f"{where}: no resources.requests")
    mounts = {m.get("mountPath"): m.get("name") for m in server.get("volumeMounts", [])}
    volumes = {v.get("name"): v for v in pod_spec.get("volumes", [])}
    volume = volumes.get(mounts.get(MODELS_PATH))
    claim = _get(volume, "persistentVolumeClaim", "claimName")
    if claim is None:
        problems.append(f"{where}: {MODELS_PATH} is not mounted from a PersistentVolumeClaim")
    elif claim not in pvc_names:
        problems.append(f"{where}: PersistentVolumeClaim {claim!r} is not defined in docker/k8s")
    annotations = _get(doc, "spec", "template", "metadata", "annotations", default={}) or {}
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != "8002":
        problems.append(
            f"{where}: pod template lacks prometheus.io/scrape: 'true' and prometheus.io/port: '8002'"
        )
    if _get(pod_spec, "securityContext", "runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    return problems


def check_service(doc: dict, deployments: list[dict]) -> list[str]:
    """Problems of a Service in front of the Deployment."""
    where = f"Service {_get(doc, 'metadata', 'name')}"
    problems = []
    spec = doc.get("spec") or {}
    if spec.get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: type should be ClusterIP (is {spec.get('type')})")
    ports = {p.get("name"): p for p in spec.get("ports", [])}
    if any(p.get("port") == HTTP_PORT or p.get("targetPort") in ("http", HTTP_PORT) for p in ports.values()):
        problems.append(f"{where}: exposes HTTP ({HTTP_PORT}), which the images serve on loopback only")
    for port_name, number in TRITON_PORTS.items():
        port = ports.get(port_name)
        if port is None or port.get("port") != number:
            problems.append(f"{where}: port {port_name!r} should be {number}")
        elif port.get("targetPort") not in (port_name, number):
            problems.append(f"{where}: port {port_name!r} targets {port.get('targetPort')!r}")
    selector = spec.get("selector") or {}
    matched = [
        d
        for d in deployments
        if selector
        and all(
            (_get(d, "spec", "template", "metadata", "labels", default={}) or {}).get(k) == v
            for k, v in selector.items()
        )
    ]
    if not matched:
        problems.append(f"{where}: selector {selector} matches no Deployment's pods")
    return problems


def check_hpa(doc: dict, deployment_names: set[str]) -> list[str]:
    where = f"HorizontalPodAutoscaler {_get(doc, 'metadata', 'name')}"
    problems = []
    target = _get(doc, "spec", "scaleTargetRef", default={}) or {}
    if target.get("kind") != "Deployment" or target.get("name") not in deployment_names:
        problems.append(f"{where}: scaleTargetRef does not name a Deployment defined in docker/k8s")
    low, high = _get(doc, "spec", "minReplicas", default=1), _get(doc, "spec", "maxReplicas")
    if not isinstance(high, int) or high < low:
        problems.append(f"{where}: maxReplicas must be an integer >= minReplicas")
    if not _get(doc, "spec", "metrics"):
        problems.append(f"{where}: no metrics")
    return problems


def check_kustomization(doc: dict, directory: Path) -> list[str]:
    missing = [r for r in doc.get("resources", []) if not (directory / r).is_file()]
    return [f"kustomization: resource {r} does not exist" for r in missing]


def check_k8s(documents: Iterable[tuple[Path, Any]]) -> list[str]:
    """Problems across all Kubernetes documents (``(file, document)`` pairs)."""
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for path, doc in documents:
        if not isinstance(doc, dict):
            problems.append(f"{path.name}: a document is not a mapping")
            continue
        kind = doc.get("kind")
        if not doc.get("apiVersion") or not kind:
            problems.append(f"{path.name}: a document has no apiVersion or kind")
            continue
        if kind != "Kustomization" and not _get(doc, "metadata", "name"):
            problems.append(f"{path.name}: {kind} has no metadata.name")
        by_kind.setdefault(kind, []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.append("k8s: no Deployment")
    pvc_names = {_get(d, "metadata", "name") for d in by_kind.get("PersistentVolumeClaim", [])}
    for doc in deployments:
        problems += check_deployment(doc, pvc_names)
    services = by_kind.get("Service", [])
    if not services:
        problems.append("k8s: no Service")
    for doc in services:
        problems += check_service(doc, deployments)
    names = {_get(d, "metadata", "name") for d in deployments}
    for doc in by_kind.get("HorizontalPodAutoscaler", []):
        problems += check_hpa(doc, names)
    if not by_kind.get("HorizontalPodAutoscaler"):
        problems.append("k8s: no HorizontalPodAutoscaler")
    for doc in by_kind.get("Kustomization", []):
        problems += check_kustomization(doc, K8S_DIR)
    return problems


def check_all() -> tuple[list[str], int, int]:
    """``(problems, files, documents)`` for every manifest."""
    problems: list[str] = []
    k8s_documents: list[tuple[Path, Any]] = []
    count = 0
    files = manifest_files()
    for path in files:
        try:
            documents = load_documents(path)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path.relative_to(DOCKER_DIR.parent)}: {' '.join(str(exc).split())}")
            continue
        count += len(documents)
        if path == COMPOSE_FILE:
            if len(documents) != 1 or not isinstance(documents[0], dict):
                problems.append("compose: expected one mapping")
            else:
                problems += check_compose(documents[0])
        else:
            k8s_documents += [(path, doc) for doc in documents]
    problems += check_k8s(k8s_documents)
    return problems, len(files), count


def main() -> int:
    problems, files, documents = check_all()
    for problem in problems:
        print(f"check_manifests: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_manifests: {files} files, {documents} YAML documents: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
