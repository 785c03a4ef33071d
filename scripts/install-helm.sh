#!/usr/bin/env bash
# Builds a helm binary from the Go module proxy into a cache outside the repo.
# Usage: scripts/install-helm.sh        (prints the binary's path; fast when present)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.4}"
# The Kubernetes version `helm template`/`lint` assume without a cluster (helm's Makefile sets it from client-go).
K8S_MAJOR=1
K8S_MINOR=31
BIN_DIR="${CONVEYOR_BIN_DIR:-${HOME}/.cache/conveyor/bin}"
HELM="${BIN_DIR}/helm"

if [[ -x "${HELM}" ]] && "${HELM}" version --short 2>/dev/null | grep -q "^${HELM_VERSION}" \
  && "${HELM}" template --help >/dev/null 2>&1 && [[ -f "${BIN_DIR}/.helm-k8s-${K8S_MAJOR}.${K8S_MINOR}" ]]; then
  echo "${HELM}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "install-helm: 'go' is not on PATH; install Go >= 1.22 and re-run" >&2
  exit 1
fi

mkdir -p "${BIN_DIR}"
echo "install-helm: building helm ${HELM_VERSION} with $(go version) (several minutes on 2 cores)..." >&2
GOWORK=off GOFLAGS=-mod=mod GOBIN="${BIN_DIR}" CGO_ENABLED=0 \
  go install -ldflags "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${K8S_MAJOR} -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${K8S_MINOR} \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${K8S_MAJOR} -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${K8S_MINOR}" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
"${HELM}" version --short >&2
touch "${BIN_DIR}/.helm-k8s-${K8S_MAJOR}.${K8S_MINOR}"
echo "${HELM}"
