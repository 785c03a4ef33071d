#!/usr/bin/env bash
# Builds a helm binary from the Go module proxy into a cache outside the repo.
# Usage: scripts/install-helm.sh        (prints the binary's path; fast when present)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.4}"
BIN_DIR="${CONVEYOR_BIN_DIR:-${HOME}/.cache/conveyor/bin}"
HELM="${BIN_DIR}/helm"

if [[ -x "${HELM}" ]] && "${HELM}" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
  echo "${HELM}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-helm: 'go' is not on PATH; install Go >= 1.22 and re-run" >&2
  exit 1
fi

mkdir -p "${BIN_DIR}"
echo "install-helm: building helm ${HELM_VERSION} with $(go version) (several minutes on 2 cores)..." >&2
GOFLAGS=-mod=mod GOBIN="${BIN_DIR}" CGO_ENABLED=0 \
  go install -ldflags "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
"${HELM}" version --short >&2
echo "${HELM}"
