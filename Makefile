# blip2-triton: `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
MODEL ?=
WORK ?= .work
REPO ?= $(WORK)/model_repository
GRPC_PORT ?= 8001
HTTP_PORT ?= 8000
METRICS_PORT ?= 8002
DTYPE ?= fp32

# Manifests of core kinds (kubernetes-validate has their schemas; the others are CRDs or kustomize's).
K8S_CORE := $(filter-out %/kustomization.yaml %/podmonitor.yaml %/prometheusrule.yaml,$(wildcard docker/k8s/*.yaml))

.DEFAULT_GOAL := help
.PHONY: help setup lock demo test lint export serve bench bench-traffic perf perf-openai clean train-scenes eval-scenes

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-8s %s\n", $$1, $$2}'

setup: ## create .venv with everything pinned (tritonserver included); fast when nothing changed
	@bash scripts/setup.sh

lock: ## regenerate the hashed requirements*.lock from pyproject.toml with uv (keeps the pins; LOCK_ARGS="--upgrade-package NAME")
	@LOCK_ARGS="$(LOCK_ARGS)" bash scripts/lock.sh

demo: setup ## end to end: build (or take MODEL=<hub id|folder>), export, serve, caption and ask, stop
	@$(BIN)/python -P -m blip2_triton.demo $(if $(MODEL),--model "$(MODEL)") --work-dir "$(WORK)/demo"

test: setup ## run the test suite against a real tritonserver
	@$(BIN)/python -P -m pytest -q

lint: setup ## ruff check + format check, mypy on the package, hadolint on the Dockerfiles, manifests: own checks, Kubernetes and compose schemas
	@$(BIN)/ruff check . && $(BIN)/ruff format --check .
	@$(BIN)/python scripts/typecheck.py
	@$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu && echo "hadolint: docker/Dockerfile docker/Dockerfile.cpu: ok"
	@$(BIN)/python docker/check_manifests.py
	@for k in 1.29 1.37; do $(BIN)/kubernetes-validate --strict --quiet -k $$k $(K8S_CORE) || exit 1; done && echo "kubernetes-validate: $(words $(K8S_CORE)) files of docker/k8s, Kubernetes 1.29 and 1.37 schemas: ok"
	@$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

export: setup ## export MODEL=<hub id|folder> to REPO (default .work/model_repository)
	@test -n "$(MODEL)" || { echo "make export: pass MODEL=<hub id or local folder>" >&2; exit 2; }
	@$(BIN)/blip2-triton export --model "$(MODEL)" --output "$(REPO)" --dtype $(DTYPE)

serve: setup ## serve REPO (default .work/model_repository) in the foreground
	@$(BIN)/blip2-triton serve --model-repository "$(REPO)" --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

bench: setup ## transformers in process vs the served pipeline, one table (also .work/bench/bench.md); BENCH_ARGS="--quick"
	@$(BIN)/python benchmarks/bench_serving.py $(BENCH_ARGS)

bench-traffic: setup ## open-loop Poisson traffic, served vs a first-cut in-process server (.work/bench/traffic.md, .png); TRAFFIC_ARGS="--quick"
	@$(BIN)/python benchmarks/bench_traffic.py $(TRAFFIC_ARGS)

perf: setup ## perf_analyzer load test of PERF_REPO=<export> (default: a tiny model); flags: PERF_ARGS="..."
	@$(BIN)/python benchmarks/perf_ensemble.py $(if $(PERF_REPO),--repository "$(PERF_REPO)") $(PERF_ARGS)

AIPERF_VENV := $(WORK)/aiperf-venv
perf-openai: setup ## the OpenAI frontend: its cost vs direct gRPC (concurrency 1, 16) and an aiperf load test; PERF_ARGS="..."
	@test -x $(AIPERF_VENV)/bin/aiperf || { "$$(readlink -f $(BIN)/python)" -m venv $(AIPERF_VENV) && $(AIPERF_VENV)/bin/pip install -q aiperf==0.13.0; }
	@$(BIN)/python benchmarks/perf_openai.py $(if $(PERF_REPO),--repository "$(PERF_REPO)") $(PERF_ARGS)

train-scenes: setup ## train the scene checkpoints from scratch (20-27 min, 2 CPU cores) into blip2_triton/fixtures/checkpoints
	@$(BIN)/python -P -m blip2_triton_train.train --output blip2_triton/fixtures/checkpoints --cache "$(WORK)/scenes-train.npy"

eval-scenes: setup ## held-out scenes through the served scene checkpoints: caption, VQA, retrieval figures
	@$(BIN)/python -P -m blip2_triton.scenes.eval_command --work-dir "$(WORK)/eval-scenes"

clean: ## remove build outputs (keeps .venv)
	rm -rf $(WORK) build *.egg-info
