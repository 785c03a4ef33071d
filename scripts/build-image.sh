#!/usr/bin/env bash
# Build the project's Dockerfile with buildah (no Docker engine) and, optionally, load it into a cluster made by
# scripts/cluster.sh, where pods name it `image: conveyor:dev` (docker.io/library/conveyor:dev).
#
#   sudo scripts/build-image.sh                  build, then load into the cluster CONVEYOR_CLUSTER_NAME [conveyor]
#   sudo scripts/build-image.sh --cluster NAME   build, then load into cluster NAME
#   sudo scripts/build-image.sh --no-load        build localhost/conveyor:dev only (into buildah's store)
#   sudo scripts/build-image.sh clean            remove the build caches (buildah store, base image, archive)
# Options: --rebuild-base (debootstrap the base again), --no-cache (rebuild every layer).
#
# Base images cannot be pulled here: the Python base (Debian bookworm + Debian's python3 3.11) is made with
# debootstrap once and cached (scripts/image/base.sh), then handed to the Dockerfile's CPU_BASE argument, so the
# Dockerfile users build is the one built here. Layers are cached (`bud --layers`): after a Python-only change only
# the source layers are rebuilt.
#
# pip inside RUN steps reaches the package index the way pip on this machine does: this machine's pip settings (index,
# proxy, certificate bundle, timeouts) are written to a build-only pip.conf and, with the CA bundle, bind-mounted for
# the RUN steps only. Neither is in any layer of the image.
#
# Everything runs in a private mount namespace (with its own /run): no mount outlives the script.
#
# Environment:
#   CONVEYOR_IMAGE_STORE      [~/.cache/conveyor/buildah]  buildah's storage and the archive loaded into clusters
#                                                          (removed by `clean`); concurrent runs on one store queue
#   CONVEYOR_IMAGE_STORAGE_DRIVER [overlay]                overlay (needs root, kernel overlayfs) or vfs (slower, more disk)
#   CONVEYOR_IMAGE_NO_APT=1   never run apt-get; say what to install instead
#   CONVEYOR_CLUSTER_NAME     [conveyor]                   the cluster to load into (unless --no-load)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/.." && pwd)"
CACHE="${HOME}/.cache/conveyor"
STORE="${CONVEYOR_IMAGE_STORE:-${CACHE}/buildah}"
DRIVER="${CONVEYOR_IMAGE_STORAGE_DRIVER:-overlay}"
IMAGE="localhost/conveyor:dev"
CLUSTER_REF="docker.io/library/conveyor:dev"  # what `image: conveyor:dev` in a pod resolves to
ARCHIVE_DIR="${STORE}/archive"
LOCK="${STORE}.lock"  # one build-image.sh at a time per store (builds, archive, import, clean)
ARCHIVE="${ARCHIVE_DIR}/conveyor-dev.docker.tar"
PIP_BUILD_DIR=/mnt  # where RUN steps see the build-only pip.conf and CA bundle

log() { echo "[build-image $(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib/apt-install.sh
source "${HERE}/lib/apt-install.sh"
# shellcheck source=scripts/image/base.sh
source "${HERE}/image/base.sh"

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }

bah() { buildah --root "${STORE}/storage" --runroot /run/containers/storage --storage-driver "${DRIVER}" "$@"; }

# --- in the private mount namespace ---------------------------------------------------------------------------------
# Its own tmpfs /run holds buildah's run state (runroot, runc state): gone, with every mount, when the namespace ends.
enter_namespace_run() {
    mount -t tmpfs -o mode=0755 conveyor-build-run /run
    WORK="$(mktemp -d /run/conveyor-build.XXXXXX)"
    mkdir -p "${STORE}"
    local err
    if ! err="$(bah info 2>&1 >/dev/null)"; then
        echo "${err}" | tail -n 3 >&2
        die "buildah cannot use the ${DRIVER} storage driver in ${STORE} (above);" \
            "try CONVEYOR_IMAGE_STORAGE_DRIVER=vfs (slower), or a CONVEYOR_IMAGE_STORE on an ext4/xfs disk"
    fi
}

# pip settings of this machine that matter inside the build, as a pip.conf for RUN steps only (echoes its mount
# argument). The CA bundle goes with it when pip here uses one (a TLS-intercepting proxy's root, say). They are
# mounted on /mnt, a directory every Debian image has (and leaves empty): a bind mount on a path the image lacks would
# leave that path behind, as an empty directory, in the layer.
pip_build_mounts() {
    local dir="${WORK}/pip" key value line cert=""
    mkdir -p "${dir}"
    printf '[global]\n' >"${dir}/pip.conf"
    while IFS= read -r line; do
        key="${line%%=*}"; key="${key##*.}"; value="${line#*=}"; value="${value#\'}"; value="${value%\'}"
        case "${key}" in
            cert) cert="${value}" ;;
            index-url | extra-index-url | trusted-host | proxy | timeout | default-timeout | retries)
                printf '%s = %s\n' "${key}" "${value}" >>"${dir}/pip.conf" ;;
        esac
    done < <(python3 -m pip config list 2>/dev/null || true)
    cert="${cert:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}}"
    if [[ -n "${cert}" && -f "${cert}" ]]; then
        cp "${cert}" "${dir}/ca.crt"
        printf 'cert = %s/ca.crt\n' "${PIP_BUILD_DIR}" >>"${dir}/pip.conf"
    fi
    echo "--volume=${dir}:${PIP_BUILD_DIR}:ro"
}

build_in_namespace() {  # rebuild_base no_cache load
    local rebuild_base="$1" no_cache="$2" load="$3" t0=${SECONDS} mounts
    enter_namespace_run
    if [[ "${rebuild_base}" == 1 ]] || ! base_exists; then
        build_base
    else
        log "base image ${BASE_IMAGE}: cached (--rebuild-base to make it again)"
    fi
    mounts="$(pip_build_mounts)"
    log "building ${IMAGE} from ${ROOT}/Dockerfile (CPU_BASE=${BASE_IMAGE}; ~6 min cold, seconds when only sources changed)"
    local t1=${SECONDS}
    # --network=host: RUN steps reach the package index like this machine does, with no network set-up (a private
    # network would add a bridge and iptables rules to the host).
    bah bud --layers --pull=never --network=host ${no_cache:+--no-cache} "${mounts}" \
        --build-arg VARIANT=cpu --build-arg "CPU_BASE=${BASE_IMAGE}" --build-arg "PIP_CONFIG_FILE=${PIP_BUILD_DIR}/pip.conf" \
        --tag "${IMAGE}" --file "${ROOT}/Dockerfile" "${ROOT}" >&2 ||
        die "buildah bud failed (output above)"
    log "built ${IMAGE} in $((SECONDS - t1)) s ($(bah images --format '{{.Size}}' "${IMAGE}"))"
    # What earlier builds left: buildah 1.28 keeps a working container for the (instruction-less) base stage on every
    # build, and a rebuild leaves the replaced images untagged. The cache of this build stays (its images are tagged
    # or have children).
    bah rm --all >/dev/null
    bah rmi --prune >/dev/null 2>&1 || true
    if [[ "${load}" == 1 ]]; then
        local id; id="$(bah inspect --type image --format '{{.FromImageID}}' "${IMAGE}")"
        if [[ -s "${ARCHIVE}" && "$(cat "${ARCHIVE}.id" 2>/dev/null)" == "${id}" ]]; then
            log "archive ${ARCHIVE}: up to date"
        else
            local t2=${SECONDS}
            log "writing ${ARCHIVE} as ${CLUSTER_REF}"
            mkdir -p "${ARCHIVE_DIR}"
            rm -f "${ARCHIVE}" "${ARCHIVE}.id"
            bah push --quiet "${id}" "docker-archive:${ARCHIVE}:${CLUSTER_REF}" >&2  # by id: one name
            echo "${id}" >"${ARCHIVE}.id"
            log "archive written in $((SECONDS - t2)) s ($(($(stat -c %s "${ARCHIVE}") / 1048576)) MiB)"
        fi
    fi
    rm -rf "${WORK}"
    log "done in $((SECONDS - t0)) s"
}

# --- on the host -----------------------------------------------------------------------------------------------------
need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (buildah's overlay storage, RUN containers and debootstrap need it);" \
        "try: sudo $0 $*"
}

cluster_sh() { CONVEYOR_CLUSTER_NAME="${CLUSTER}" bash "${HERE}/cluster.sh" "$@"; }

check_cluster_up() {
    local rc=0
    cluster_sh status >/dev/null 2>&1 || rc=$?
    ((rc == 0)) || die "cluster ${CLUSTER} is not up (scripts/cluster.sh status exit ${rc}); start it:" \
        "sudo CONVEYOR_CLUSTER_NAME=${CLUSTER} scripts/cluster.sh up (or build only: $0 --no-load)"
}

# The config digest (= buildah's image id) of CLUSTER_REF in the cluster's containerd, if it has that image.
loaded_image_id() {
    local digest
    digest="$(cluster_sh exec ctr -n k8s.io images ls "name==${CLUSTER_REF}" 2>/dev/null |
        awk -v ref="${CLUSTER_REF}" '$1 == ref {print $3}')"
    [[ -n "${digest}" ]] || return 0
    cluster_sh exec ctr -n k8s.io content get "${digest}" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"].removeprefix("sha256:"))' 2>/dev/null || true
}

load_into_cluster() {
    local t0=${SECONDS}
    check_cluster_up
    if [[ "$(loaded_image_id)" == "$(cat "${ARCHIVE}.id")" ]]; then
        log "cluster ${CLUSTER} already has this image as ${CLUSTER_REF}: nothing to load"
        return 0
    fi
    log "importing ${ARCHIVE} into cluster ${CLUSTER}'s containerd as ${CLUSTER_REF}"
    cluster_sh exec ctr -n k8s.io images import "${ARCHIVE}" >&2 ||
        die "ctr images import failed in cluster ${CLUSTER} (output above)"
    cluster_sh exec ctr -n k8s.io images ls -q "name==${CLUSTER_REF}" | grep -qx "${CLUSTER_REF}" ||
        die "${CLUSTER_REF} is not in cluster ${CLUSTER}'s containerd after the import"
    log "loaded in $((SECONDS - t0)) s: pods in cluster ${CLUSTER} can use image: conveyor:dev (imagePullPolicy: Never)"
}

lock() {
    mkdir -p "$(dirname "${LOCK}")"
    exec 9>"${LOCK}"
    if ! flock -n 9; then
        log "another scripts/build-image.sh is using ${STORE}; waiting for it"
        flock 9
    fi
}

clean() {
    local held
    lock
    held="$(findmnt -rn -o TARGET | grep -F "${STORE}" || true)"
    [[ -z "${held}" ]] || die "something is mounted under ${STORE} (${held}); is a build running?"
    log "removing ${STORE} ($(du -sh "${STORE}" 2>/dev/null | cut -f1 || echo 0): layers, base image, archive)"
    rm -rf "${STORE}" "${LOCK}"
}

main() {
    local rebuild_base=0 no_cache="" load=1 argv=("$@")
    CLUSTER="${CONVEYOR_CLUSTER_NAME:-conveyor}"
    if [[ "${1:-}" == __in-namespace ]]; then
        shift; build_in_namespace "$@"; return
    fi
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --load) load=1 ;;
            --no-load) load=0 ;;
            --cluster) [[ $# -ge 2 ]] || die "--cluster needs a cluster name"; CLUSTER="$2"; load=1; shift ;;
            --cluster=*) CLUSTER="${1#*=}"; load=1 ;;
            --rebuild-base) rebuild_base=1 ;;
            --no-cache) no_cache=1 ;;
            clean) need_root clean; clean; return ;;
            -h | --help) usage; return ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    need_root "${argv[@]}"
    lock
    [[ "${load}" == 1 ]] && check_cluster_up  # before the build, not after it
    apt_install_missing "${CONVEYOR_IMAGE_NO_APT:-0}" buildah runc debootstrap
    unshare --mount --propagation private -- bash "$0" __in-namespace "${rebuild_base}" "${no_cache}" "${load}"
    if [[ "${load}" == 1 ]]; then
        load_into_cluster
    fi
}

main "$@"
