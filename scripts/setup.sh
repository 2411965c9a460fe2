#!/usr/bin/env bash
# Creates .venv with every pinned and hashed dependency (the real tritonserver included) and the system
# libraries perf_analyzer needs. Idempotent: a stamp of the lock files skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat requirements-build.lock requirements.lock requirements-dev.lock pyproject.toml training/pyproject.toml | sha256sum | cut -d' ' -f1)

if ! ldconfig -p 2>/dev/null | grep 'libb64.so.0d' >/dev/null; then  # not -q: grep -q's early exit fails the pipe (pipefail)
  echo "setup: installing libb64-0d (needed by perf_analyzer)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq libb64-0d >/dev/null \
    || echo "setup: warning: could not install libb64-0d; perf_analyzer will not run (the server is unaffected)"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x $VENV/bin/blip2-triton ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
[ -x $VENV/bin/python ] || $PYTHON -m venv $VENV
LOG=$VENV/setup.log
: > "$LOG"
pip_install() {
  if ! $VENV/bin/python -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -40 >&2
    echo "setup: pip install $* failed (full log: $LOG)" >&2
    exit 1
  fi
}
# Every file is checked against the hashes in the locks (make lock writes them from pyproject.toml).
pip_install --require-hashes -r requirements-build.lock
echo "setup: installing pinned dependencies (torch, transformers, onnxruntime, tritonserver, tritonclient); log: $LOG"
pip_install --require-hashes -r requirements.lock -r requirements-dev.lock
pip_install --no-deps --no-build-isolation -e .
# The scene-model training (make train-scenes): a distribution of its own, not in the serving wheel.
pip_install --no-deps --no-build-isolation -e training
$VENV/bin/python -c "import torch, transformers, onnxruntime, tritonclient.grpc, pytriton, blip2_triton, blip2_triton_train" \
  || { echo "setup: the environment is incomplete (log: $LOG)" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "setup: done"
