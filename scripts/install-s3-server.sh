#!/usr/bin/env bash
# The S3-compatible server the model-source tests start on 127.0.0.1: moto's standalone server (a real HTTP S3
# endpoint; no client is patched), in a venv of its own.
#
# Why a venv of its own: moto needs boto3/botocore, and botocore requires python-dateutil<3 while the kubernetes
# client in .venv requires python-dateutil>=3, so the two cannot share one environment.
#
# The venv lands in ${CONVEYOR_S3_SERVER_DIR:-$HOME/.cache/conveyor/s3-server}/venv (outside the repo); if it
# already has the pinned moto the script exits at once. tests/support/s3_server.py finds it there (or at
# $CONVEYOR_S3_SERVER_PYTHON).
#
# Usage: scripts/install-s3-server.sh [--print-python]
set -euo pipefail

MOTO_VERSION="${CONVEYOR_MOTO_VERSION:-5.2.5}"
DIR="${CONVEYOR_S3_SERVER_DIR:-${HOME}/.cache/conveyor/s3-server}"
PY="${DIR}/venv/bin/python"

if [[ "${1:-}" == "--print-python" ]]; then
    echo "${PY}"
    exit 0
fi

if [[ -x "${PY}" ]] && "${PY}" -c "import importlib.metadata as m, sys; sys.exit(m.version('moto') != '${MOTO_VERSION}')" 2>/dev/null; then
    exit 0
fi
mkdir -p "${DIR}"
"${PYTHON:-python3}" -m venv "${DIR}/venv"
"${PY}" -m pip install --quiet "moto[server]==${MOTO_VERSION}"
echo "moto ${MOTO_VERSION} server installed: ${PY}"
