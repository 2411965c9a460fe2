#!/usr/bin/env bash
# make lock: regenerates the hashed locks from pyproject.toml (and training/pyproject.toml) with uv.
#   requirements.lock        the package with its export, server and perf extras, and the training's
#   requirements-dev.lock    the dev extra (test and lint tools), on the versions of requirements.lock
#   requirements-build.lock  pip, setuptools and wheel, which scripts/setup.sh installs first
# The versions already in a lock are kept (uv prefers them); pass uv flags to move one on, e.g.
# `make lock LOCK_ARGS="--upgrade-package transformers"`. Locks are for Python 3.11 on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
[ -x "$UV" ] || { echo "lock: $UV not found: run make setup first (uv is a dev dependency)" >&2; exit 2; }
# Where the torch CPU wheel lies: this machine kind keeps it in /opt/wheels (pip's find-links);
# elsewhere set UV_EXTRA_INDEX_URL to PyTorch's CPU index.
FIND_LINKS=${LOCK_FIND_LINKS:-/opt/wheels}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# training/pyproject.toml depends on blip2-triton: that is this checkout, never a registry's package.
printf 'blip2-triton @ file://%s\n' "$PWD" >"$tmp/self.txt"

common=(--python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock")
[ -d "$FIND_LINKS" ] && common+=(--find-links "$FIND_LINKS")
common+=(-c scripts/lock-pins.txt)
# shellcheck disable=SC2086  # LOCK_ARGS is a list of uv flags
common+=(${LOCK_ARGS:-})

compile() {  # compile OUTPUT INPUT... [FLAGS]: into a temporary file first, so a failure leaves the lock as it was
  local out=$1
  shift
  [ -f "$out" ] && cp "$out" "$tmp/$out"
  "$UV" pip compile "${common[@]}" -o "$tmp/$out" "$@"
  mv "$tmp/$out" "$out"
  echo "lock: $out: $(grep -c '^[A-Za-z0-9]' "$out") packages"
}

compile requirements.lock pyproject.toml training/pyproject.toml \
  --extra export --extra server --extra perf --extra openai --override "$tmp/self.txt" --no-emit-package blip2-triton
# The dev lock holds what the dev extra adds: the packages of requirements.lock are not repeated.
runtime=()
for name in $(grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*' requirements.lock); do runtime+=(--no-emit-package "$name"); done
compile requirements-dev.lock pyproject.toml --extra dev -c requirements.lock "${runtime[@]}"
compile requirements-build.lock scripts/lock-build.in -c requirements.lock
