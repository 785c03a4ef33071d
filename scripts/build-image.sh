#!/usr/bin/env bash
# Build the project's Dockerfile with buildah (no Docker engine) and, optionally, load it into a cluster made by
# scripts/cluster.sh, where pods name them `image: conveyor:dev` (the production image, the default target) and
# `image: conveyor-examples:dev` (target `examples`: plus scikit-learn and the examples' demo model builders).
#
#   sudo scripts/build-image.sh                  build both, then load them into the cluster CONVEYOR_CLUSTER_NAME [conveyor]
#   sudo scripts/build-image.sh --cluster NAME   build both, then load them into cluster NAME
#   sudo scripts/build-image.sh --no-load        build localhost/conveyor:dev and localhost/conveyor-examples:dev only
#   sudo scripts/build-image.sh clean            remove the build caches (buildah store, base image, archives)
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
# The images, each `name:Dockerfile target` (an empty target: the default one). localhost/NAME:dev in buildah's store;
# docker.io/library/NAME:dev in a cluster, what `image: NAME:dev` in a pod resolves to.
IMAGES=("conveyor:" "conveyor-examples:examples")
TAG=dev
ARCHIVE_DIR="${STORE}/archive"
LOCK="${STORE}.lock"  # one build-image.sh at a time per store (builds, archive, import, clean)
PIP_BUILD_DIR=/mnt  # where RUN steps see the build-only pip.conf and CA bundle

log() { echo "[build-image $(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib/apt-install.sh
source "${HERE}/lib/apt-install.sh"
# shellcheck source=scripts/image/base.sh
source "${HERE}/image/base.sh"

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }
local_ref() { echo "localhost/$1:${TAG}"; }
cluster_ref() { echo "docker.io/library/$1:${TAG}"; }
archive_of() { echo "${ARCHIVE_DIR}/$1-${TAG}.docker.tar"; }

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
    local entry
    for entry in "${IMAGES[@]}"; do
        build_target "${entry%%:*}" "${entry#*:}" "${mounts}" "${no_cache}"
    done
    # What earlier builds left: buildah 1.28 keeps a working container for the (instruction-less) base stage on every
    # build, and a rebuild leaves the replaced images untagged. The cache of this build stays (its images are tagged
    # or have children).
    bah rm --all >/dev/null
    bah rmi --prune >/dev/null 2>&1 || true
    if [[ "${load}" == 1 ]]; then
        for entry in "${IMAGES[@]}"; do
            write_archive "${entry%%:*}"
        done
    fi
    rm -rf "${WORK}"
    log "done in $((SECONDS - t0)) s"
}

build_target() {  # name target mounts no_cache
    local name="$1" target="$2" mounts="$3" no_cache="$4" t1=${SECONDS} image
    image="$(local_ref "${name}")"
    log "building ${image} from ${ROOT}/Dockerfile, target ${target:-<default>} (CPU_BASE=${BASE_IMAGE};" \
        "~6 min cold, seconds when only sources changed)"
    # --network=host: RUN steps reach the package index like this machine does, with no network set-up (a private
    # network would add a bridge and iptables rules to the host).
    bah bud --layers --pull=never --network=host ${no_cache:+--no-cache} ${target:+--target "${target}"} "${mounts}" \
        --build-arg VARIANT=cpu --build-arg "CPU_BASE=${BASE_IMAGE}" --build-arg "PIP_CONFIG_FILE=${PIP_BUILD_DIR}/pip.conf" \
        --tag "${image}" --file "${ROOT}/Dockerfile" "${ROOT}" >&2 ||
        die "buildah bud failed (output above)"
    log "built ${image} in $((SECONDS - t1)) s ($(bah images --format '{{.Size}}' "${image}"))"
}

# The docker archive that is imported into clusters, written again only when the image changed (its id beside it).
write_archive() {  # name
    local name="$1" archive id t2=${SECONDS}
    archive="$(archive_of "${name}")"
    id="$(bah inspect --type image --format '{{.FromImageID}}' "$(local_ref "${name}")")"
    if [[ -s "${archive}" && "$(cat "${archive}.id" 2>/dev/null)" == "${id}" ]]; then
        log "archive ${archive}: up to date"
        return 0
    fi
    log "writing ${archive} as $(cluster_ref "${name}")"
    mkdir -p "${ARCHIVE_DIR}"
    rm -f "${archive}" "${archive}.id"
    bah push --quiet "${id}" "docker-archive:${archive}:$(cluster_ref "${name}")" >&2  # by id: one name
    echo "${id}" >"${archive}.id"
    log "archive written in $((SECONDS - t2)) s ($(($(stat -c %s "${archive}") / 1048576)) MiB)"
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

# The config digest (= buildah's image id) of a cluster ref in the cluster's containerd, if it has that image.
loaded_image_id() {  # cluster_ref
    local digest ref="$1"
    digest="$(cluster_sh exec ctr -n k8s.io images ls "name==${ref}" 2>/dev/null |
        awk -v ref="${ref}" '$1 == ref {print $3}')"
    [[ -n "${digest}" ]] || return 0
    cluster_sh exec ctr -n k8s.io content get "${digest}" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["config"]["digest"].removeprefix("sha256:"))' 2>/dev/null || true
}

load_into_cluster() {  # name
    local t0=${SECONDS} name="$1" ref archive
    ref="$(cluster_ref "${name}")"
    archive="$(archive_of "${name}")"
    check_cluster_up
    if [[ "$(loaded_image_id "${ref}")" == "$(cat "${archive}.id")" ]]; then
        log "cluster ${CLUSTER} already has this image as ${ref}: nothing to load"
        return 0
    fi
    log "importing ${archive} into cluster ${CLUSTER}'s containerd as ${ref}"
    cluster_sh exec ctr -n k8s.io images import "${archive}" >&2 ||
        die "ctr images import failed in cluster ${CLUSTER} (output above)"
    cluster_sh exec ctr -n k8s.io images ls -q "name==${ref}" | grep -qx "${ref}" ||
        die "${ref} is not in cluster ${CLUSTER}'s containerd after the import"
    log "loaded in $((SECONDS - t0)) s: pods in cluster ${CLUSTER} can use image: ${name}:${TAG} (imagePullPolicy: Never)"
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
        local entry
        for entry in "${IMAGES[@]}"; do
            load_into_cluster "${entry%%:*}"
        done
    fi
}

main "$@"
