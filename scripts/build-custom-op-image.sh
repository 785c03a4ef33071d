#!/usr/bin/env bash
# Build examples/custom-op/Dockerfile (an image FROM conveyor with a custom op package installed) with buildah, on top
# of the conveyor:dev that scripts/build-image.sh built, and load it into a scripts/cluster.sh node as
# conveyor-custom-ops:dev (docker.io/library/conveyor-custom-ops:dev).
#
#   sudo scripts/build-custom-op-image.sh                 build conveyor:dev first (build-image.sh --no-load), then this
#   sudo scripts/build-custom-op-image.sh --cluster NAME  ... and load it into cluster NAME [CONVEYOR_CLUSTER_NAME]
#   sudo scripts/build-custom-op-image.sh --no-load       build only (buildah's store: localhost/conveyor-custom-ops:dev)
#
# Uses build-image.sh's store (CONVEYOR_IMAGE_STORE, the same lock) and, like it, a private mount namespace with its
# own /run. The Dockerfile's RUN needs no package index (pip install --no-deps --no-build-isolation).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"
STORE="${CONVEYOR_IMAGE_STORE:-${HOME}/.cache/conveyor/buildah}"
DRIVER="${CONVEYOR_IMAGE_STORAGE_DRIVER:-overlay}"
CONTEXT="${ROOT}/examples/custom-op"
IMAGE="localhost/conveyor-custom-ops:dev"
CLUSTER_REF="docker.io/library/conveyor-custom-ops:dev"
ARCHIVE="${STORE}/archive/conveyor-custom-ops-dev.docker.tar"

log() { echo "[build-custom-op-image $(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
bah() { buildah --root "${STORE}/storage" --runroot /run/containers/storage --storage-driver "${DRIVER}" "$@"; }
cluster_sh() { CONVEYOR_CLUSTER_NAME="${CLUSTER}" bash "${HERE}/cluster.sh" "$@"; }

in_namespace() {
    mount -t tmpfs -o mode=0755 conveyor-build-run /run
    bah inspect --type image localhost/conveyor:dev >/dev/null 2>&1 ||
        die "localhost/conveyor:dev is not in ${STORE}: run scripts/build-image.sh first"
    local t0=${SECONDS}
    bah bud --layers --pull=never --network=host --build-arg CONVEYOR_IMAGE=localhost/conveyor:dev \
        --tag "${IMAGE}" --file "${CONTEXT}/Dockerfile" "${CONTEXT}" >&2 || die "buildah bud failed (output above)"
    bah rm --all >/dev/null
    log "built ${IMAGE} in $((SECONDS - t0)) s"
    if [[ "$1" == 1 ]]; then
        mkdir -p "$(dirname "${ARCHIVE}")"
        rm -f "${ARCHIVE}"
        bah push --quiet "$(bah inspect --type image --format '{{.FromImageID}}' "${IMAGE}")" \
            "docker-archive:${ARCHIVE}:${CLUSTER_REF}" >&2
    fi
}

main() {
    local load=1
    CLUSTER="${CONVEYOR_CLUSTER_NAME:-conveyor}"
    if [[ "${1:-}" == __in-namespace ]]; then in_namespace "$2"; return; fi
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --no-load) load=0 ;;
            --cluster) [[ $# -ge 2 ]] || die "--cluster needs a cluster name"; CLUSTER="$2"; shift ;;
            -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; return ;;
            *) die "unknown argument: $1" ;;
        esac
        shift
    done
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (buildah's overlay storage); try: sudo $0"
    CONVEYOR_CLUSTER_NAME="${CLUSTER}" bash "${HERE}/build-image.sh" --no-load
    exec 9>"${STORE}.lock"
    flock 9
    unshare --mount --propagation private -- bash "$0" __in-namespace "${load}"
    if [[ "${load}" == 1 ]]; then
        cluster_sh exec ctr -n k8s.io images import "${ARCHIVE}" >&2 || die "ctr images import failed in cluster ${CLUSTER}"
        log "loaded into cluster ${CLUSTER}: image: conveyor-custom-ops:dev"
    fi
}

main "$@"
