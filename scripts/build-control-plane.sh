#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# etcd) from source with Go, for the operator's integration tests.
#
# Binaries land in ${CONVEYOR_CONTROL_PLANE_DIR:-$HOME/.cache/conveyor/control-plane/<k8s-version>}/bin/
# (outside the repo).  If they are already there the script exits at once.
#
# Environment:
#   CONVEYOR_K8S_VERSION          k8s.io/kubernetes release to build (default below)
#   CONVEYOR_CONTROL_PLANE_DIR    cache directory (default above)
#   CONVEYOR_SKIP_CONTROLLER_MANAGER=1   do not build kube-controller-manager
#   GO                            go binary (default: `go` on PATH, else /usr/local/go/bin/go)
#   GOPROXY etc. are taken from the environment / `go env` as they are.
#
# Usage: scripts/build-control-plane.sh [--print-bin-dir]
set -euo pipefail
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

K8S_VERSION="${CONVEYOR_K8S_VERSION:-v1.36.3}"
CACHE_DIR="${CONVEYOR_CONTROL_PLANE_DIR:-${HOME}/.cache/conveyor/control-plane/${K8S_VERSION}}"
BIN_DIR="${CACHE_DIR}/bin"
BUILD_DIR="${CACHE_DIR}/build"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
    echo "${BIN_DIR}"
    exit 0
fi

log() { echo "[build-control-plane $(date +%H:%M:%S)] $*"; }

targets=(kube-apiserver etcd)
if [[ "${CONVEYOR_SKIP_CONTROLLER_MANAGER:-0}" != "1" ]]; then
    targets+=(kube-controller-manager)
fi

missing=()
for t in "${targets[@]}"; do
    [[ -x "${BIN_DIR}/${t}" ]] || missing+=("${t}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    log "all binaries present in ${BIN_DIR}; nothing to do"
    exit 0
fi
log "k8s ${K8S_VERSION}; building: ${missing[*]} into ${BIN_DIR}"

if [[ -z "${GO:-}" ]]; then
    if command -v go >/dev/null 2>&1; then
        GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        echo "error: no Go toolchain found (set GO=/path/to/go)" >&2
        exit 1
    fi
fi
log "using $("${GO}" version) (GOPROXY=$("${GO}" env GOPROXY))"

export CGO_ENABLED=0
export GOWORK=off
export GOFLAGS="-mod=mod ${GOFLAGS:-}"

mkdir -p "${BIN_DIR}" "${BUILD_DIR}"
cd "${BUILD_DIR}"

# --- 1. read k8s.io/kubernetes's go.mod from the module cache -------------
log "downloading k8s.io/kubernetes@${K8S_VERSION} go.mod"
k8s_gomod="$(GOFLAGS=-mod=mod "${GO}" mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')"
if [[ -z "${k8s_gomod}" || ! -f "${k8s_gomod}" ]]; then
    echo "error: could not locate go.mod of k8s.io/kubernetes@${K8S_VERSION}" >&2
    exit 1
fi
go_directive="$(awk '$1 == "go" { print $2; exit }' "${k8s_gomod}")"
godebug_lines="$(grep -E '^godebug ' "${k8s_gomod}" || true)"
# Staging modules: every `k8s.io/x => ./staging/...` replace; published as v0.MINOR.PATCH.
staging_version="v0.${K8S_VERSION#v1.}"
staging_modules="$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "${k8s_gomod}")"
if [[ -z "${staging_modules}" ]]; then
    echo "error: found no staging replace directives in ${k8s_gomod}" >&2
    exit 1
fi

# --- 2. write the throwaway build module -----------------------------------
log "writing build module in ${BUILD_DIR} (go ${go_directive}, staging ${staging_version})"
{
    echo "module conveyor.invalid/control-plane-build"
    echo
    echo "go ${go_directive}"
    echo
    [[ -n "${godebug_lines}" ]] && { echo "${godebug_lines}"; echo; }
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    while read -r m; do
        echo "	${m} => ${m} ${staging_version}"
    done <<< "${staging_modules}"
    echo ")"
} > go.mod.new
if ! cmp -s go.mod.new go.mod 2>/dev/null; then
    mv go.mod.new go.mod
    rm -f go.sum
else
    rm -f go.mod.new
fi

# --- 3. build ---------------------------------------------------------------
# shellcheck source=lib/k8s-ldflags.sh
source "${SCRIPTS_DIR}/lib/k8s-ldflags.sh"
ldflags="$(k8s_ldflags "${K8S_VERSION}")"

pkg_for() {
    case "$1" in
        kube-apiserver) echo "k8s.io/kubernetes/cmd/kube-apiserver" ;;
        kube-controller-manager) echo "k8s.io/kubernetes/cmd/kube-controller-manager" ;;
        # etcd's server module has its `main` package at the module root; its
        # version comes from the same graph as kube-apiserver's etcd client.
        etcd) echo "go.etcd.io/etcd/server/v3" ;;
    esac
}

for t in "${missing[@]}"; do
    pkg="$(pkg_for "${t}")"
    start=${SECONDS}
    log "building ${t} (${pkg}) ..."
    "${GO}" build -trimpath -ldflags="${ldflags}" -o "${BIN_DIR}/${t}.tmp" "${pkg}"
    mv "${BIN_DIR}/${t}.tmp" "${BIN_DIR}/${t}"
    log "built ${t} in $((SECONDS - start))s ($(du -h "${BIN_DIR}/${t}" | cut -f1))"
done

echo "${K8S_VERSION}" > "${CACHE_DIR}/VERSION"
log "done: $(ls "${BIN_DIR}" | tr '\n' ' ')"
