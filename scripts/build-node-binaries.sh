#!/usr/bin/env bash
# Build the node side of a real single-node cluster from the Go module proxy:
# kubelet, kube-scheduler, kube-proxy and kubectl from k8s.io/kubernetes (the same
# version and build module as scripts/build-control-plane.sh), and CoreDNS.
#
# Binaries land in ${CONVEYOR_NODE_DIR:-$HOME/.cache/conveyor/node/<k8s-version>}/bin/
# and ${CONVEYOR_COREDNS_DIR:-$HOME/.cache/conveyor/coredns/<coredns-version>}/bin/
# (outside the repo). Present binaries are not rebuilt. Builds run under `nice`.
#
# Environment:
#   CONVEYOR_K8S_VERSION       as for scripts/build-control-plane.sh (which this runs first)
#   CONVEYOR_COREDNS_VERSION   CoreDNS release (default below)
#   CONVEYOR_NODE_DIR, CONVEYOR_COREDNS_DIR   cache directories (defaults above)
#   CONVEYOR_BUILD_NICE        niceness of the Go builds (default 10)
#   GO                         go binary (default: `go` on PATH, else /usr/local/go/bin/go)
#
# Usage: scripts/build-node-binaries.sh [--print-bin-dirs]
#   --print-bin-dirs   print the node and CoreDNS bin directories (one a line) and exit
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
COREDNS_VERSION="${CONVEYOR_COREDNS_VERSION:-v1.14.7}"
CP_BIN_DIR="$(bash "${HERE}/build-control-plane.sh" --print-bin-dir)"
K8S_VERSION="$(basename "$(dirname "${CP_BIN_DIR}")")"
NODE_BIN_DIR="${CONVEYOR_NODE_DIR:-${HOME}/.cache/conveyor/node/${K8S_VERSION}}/bin"
COREDNS_BIN_DIR="${CONVEYOR_COREDNS_DIR:-${HOME}/.cache/conveyor/coredns/${COREDNS_VERSION}}/bin"
NICE="${CONVEYOR_BUILD_NICE:-10}"

if [[ "${1:-}" == "--print-bin-dirs" ]]; then
    printf '%s\n%s\n' "${NODE_BIN_DIR}" "${COREDNS_BIN_DIR}"
    exit 0
fi

log() { echo "[build-node-binaries $(date +%H:%M:%S)] $*"; }

node_targets=(kubelet kube-scheduler kube-proxy kubectl)
missing=()
for t in "${node_targets[@]}"; do
    [[ -x "${NODE_BIN_DIR}/${t}" ]] || missing+=("${t}")
done
need_coredns=0
[[ -x "${COREDNS_BIN_DIR}/coredns" ]] || need_coredns=1
if [[ ${#missing[@]} -eq 0 && ${need_coredns} -eq 0 ]]; then
    log "all binaries present in ${NODE_BIN_DIR} and ${COREDNS_BIN_DIR}; nothing to do"
    exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "${GO}" ]]; then
    echo "error: no Go toolchain found: install Go (https://go.dev/dl) or set GO=/path/to/go" >&2
    exit 1
fi
export CGO_ENABLED=0 GOWORK=off
export GOFLAGS="-mod=mod ${GOFLAGS:-}"

# go build with a heartbeat: every 30 s, how many packages it has compiled so far.
build_with_progress() {  # name, log file, go args...
    local name="$1" log_file="$2"; shift 2
    local start=${SECONDS} rc=0
    nice -n "${NICE}" "${GO}" "$@" >"${log_file}" 2>&1 &
    local pid=$!
    while kill -0 "${pid}" 2>/dev/null; do
        for _ in $(seq 30); do kill -0 "${pid}" 2>/dev/null && sleep 1; done
        if kill -0 "${pid}" 2>/dev/null; then
            log "  ${name}: $(grep -cv '^go: ' "${log_file}" || true) packages compiled, $((SECONDS - start)) s"
        fi
    done
    wait "${pid}" || rc=$?
    if [[ ${rc} -ne 0 ]]; then
        echo "error: building ${name} failed (exit ${rc}); last lines of ${log_file}:" >&2
        tail -n 30 "${log_file}" >&2
        exit "${rc}"
    fi
    log "built ${name} in $((SECONDS - start)) s"
}

if [[ ${#missing[@]} -gt 0 ]]; then
    # The control plane's build module (go.mod pinning k8s.io/kubernetes and its staging
    # modules) is reused, so both halves of the cluster come from one dependency graph.
    bash "${HERE}/build-control-plane.sh"
    cp_build_dir="$(dirname "${CP_BIN_DIR}")/build"
    if [[ ! -f "${cp_build_dir}/go.mod" ]]; then
        echo "error: ${cp_build_dir}/go.mod is missing; remove ${CP_BIN_DIR} and run" \
            "scripts/build-control-plane.sh to recreate it" >&2
        exit 1
    fi
    build_dir="$(dirname "${NODE_BIN_DIR}")/build"
    mkdir -p "${NODE_BIN_DIR}" "${build_dir}"
    cp "${cp_build_dir}/go.mod" "${build_dir}/go.mod"
    [[ -f "${cp_build_dir}/go.sum" ]] && cp "${cp_build_dir}/go.sum" "${build_dir}/go.sum"
    log "k8s ${K8S_VERSION}; building ${missing[*]} into ${NODE_BIN_DIR} ($("${GO}" version))"
    log "a cold build takes ~5-10 min on 2 cores (kubelet is the long one)"

    # shellcheck source=lib/k8s-ldflags.sh
    source "${HERE}/lib/k8s-ldflags.sh"
    ldflags="$(k8s_ldflags "${K8S_VERSION}")"
    for t in "${missing[@]}"; do
        log "building ${t} (k8s.io/kubernetes/cmd/${t}) ..."
        (cd "${build_dir}" && build_with_progress "${t}" "${build_dir}/${t}.log" \
            build -v -trimpath -ldflags="${ldflags}" -o "${NODE_BIN_DIR}/${t}.tmp" \
            "k8s.io/kubernetes/cmd/${t}")
        mv "${NODE_BIN_DIR}/${t}.tmp" "${NODE_BIN_DIR}/${t}"
    done
fi

if [[ ${need_coredns} -eq 1 ]]; then
    mkdir -p "${COREDNS_BIN_DIR}"
    log "building coredns ${COREDNS_VERSION} into ${COREDNS_BIN_DIR} (~2-3 min cold)"
    GOBIN="${COREDNS_BIN_DIR}" build_with_progress coredns "${COREDNS_BIN_DIR}/../build.log" \
        install -v -trimpath -ldflags="-s -w" "github.com/coredns/coredns@${COREDNS_VERSION}"
fi
log "done: ${node_targets[*]} coredns"
