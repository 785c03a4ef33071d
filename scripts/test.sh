#!/usr/bin/env bash
# The project's test command: installs what the tests need (idempotent, cached), then runs the whole suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing conveyor with its dev extras into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "==> Kubernetes control plane for the operator tests (built once, then cached)"
bash scripts/build-control-plane.sh
echo "==> S3-compatible server for the model-source tests: moto in a venv of its own (installed once, then cached)"
bash scripts/install-s3-server.sh
if [ -f scripts/install-helm.sh ]; then
  echo "==> helm (built once, then cached)"
  bash scripts/install-helm.sh
fi

# The e2e tier (tests/e2e: a real one-node cluster, the image built from the Dockerfile, the chart, real pods)
# runs as root where namespaces can be made; CONVEYOR_E2E=0 leaves it out. Its cluster and image are set up by
# its fixtures; the node binaries are built here so that their progress shows (~20 min once, then cached).
if [ "${CONVEYOR_E2E:-}" != 0 ] && [ "$(id -u)" = 0 ]; then
  echo "==> real-node binaries for the e2e tier: kubelet, kube-proxy, kube-scheduler, kubectl, CoreDNS (built once, then cached)"
  bash scripts/build-node-binaries.sh
  export CONVEYOR_E2E=1
fi

echo "==> ruff, mypy --strict (runtime, operator, benchmarks) and the import layers (lint-imports)"
.venv/bin/ruff check --quiet
# mypy's incremental cache lives outside the checkout, so a fresh clone checks in ~1 s instead of ~30 s once warm
# (it rechecks every file whose content changed)
.venv/bin/mypy --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/conveyor/mypy"
.venv/bin/lint-imports --no-cache

if [ "${SKIP_PACKAGING_CHECK:-0}" = 1 ]; then
  echo "==> packaging check skipped (SKIP_PACKAGING_CHECK=1)"
else
  # What `pip install` gives users, in fresh venvs: the committed gencode on every protobuf major the range admits,
  # and conveyor + tritonclient[all] installed in both orders, each serving a real round trip (a few minutes).
  echo "==> packaging: scripts/check-packaging.py (SKIP_PACKAGING_CHECK=1 skips it)"
  .venv/bin/python scripts/check-packaging.py
fi

echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
