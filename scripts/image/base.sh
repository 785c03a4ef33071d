# shellcheck shell=bash
# Sourced by scripts/build-image.sh: the Python base image, made locally because base images cannot be pulled here.
# debootstrap (minbase) of Debian bookworm with Debian's python3 (3.11, like python:3.11-slim-bookworm) straight into
# a scratch buildah container, then committed as ${BASE_IMAGE}. The Dockerfile gets it through its CPU_BASE argument.
# Needs bah() (buildah with our storage), log() and die() from the sourcing script, and a private mount namespace
# (debootstrap mounts /proc and /sys inside the target while it runs).

BASE_IMAGE="localhost/conveyor/python-base:3.11-bookworm"
BASE_SUITE=bookworm
# What the Dockerfile's RUN lines need besides python3 -m venv: `python` on PATH, groupadd/useradd, the CA store.
BASE_PACKAGES=python3,python3-venv,python-is-python3,passwd,ca-certificates

# The Debian mirror apt uses on this machine (deb822 or one-line sources), so debootstrap fetches from the same place;
# empty means debootstrap's own default.
debian_mirror() {
    local suite="${BASE_SUITE}"
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="${suite}" 'BEGIN {RS = ""}
        $0 ~ "(^|\n)Suites:[^\n]*[ \t]" suite "([ \t]|\n|$)" && match($0, /URIs:[ \t]*[^ \t\n]+/) {
            uri = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", uri)
            if (uri !~ /security/) { print uri; exit }
        }'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v suite="${suite}" '$1 == "deb" && $3 == suite && $2 !~ /security/ {print $2; exit}'
    return 0
}

base_exists() { bah inspect --type image "${BASE_IMAGE}" >/dev/null 2>&1; }

build_base() {
    local mirror ctr mnt t0=${SECONDS}
    mirror="$(debian_mirror 2>/dev/null | head -n1 || true)"
    log "base image ${BASE_IMAGE}: debootstrap --variant=minbase ${BASE_SUITE} + ${BASE_PACKAGES}" \
        "(~3 min cold: downloads ~60 MB of Debian packages)"
    bah rm "conveyor-base-work" >/dev/null 2>&1 || true  # left by an interrupted run
    ctr="$(bah from --name conveyor-base-work scratch)"
    mnt="$(bah mount "${ctr}")"
    if ! debootstrap --variant=minbase --include="${BASE_PACKAGES}" "${BASE_SUITE}" "${mnt}" ${mirror:+"${mirror}"} \
        >"${WORK}/debootstrap.log" 2>&1; then
        tail -n 20 "${WORK}/debootstrap.log" >&2
        bah rm "${ctr}" >/dev/null 2>&1 || true
        die "debootstrap failed (log above; full log: ${WORK}/debootstrap.log): check that apt-get update works here"
    fi
    # Nothing of this machine or of the download stays in the image: apt caches, logs, the host's resolver and name
    # (the runtime mounts its own /etc/resolv.conf and /etc/hostname).
    rm -rf "${mnt}"/var/cache/apt/archives/*.deb "${mnt}"/var/lib/apt/lists/* "${mnt}"/var/log/*.log \
        "${mnt}"/var/log/apt/* "${mnt}"/tmp/* "${mnt}"/root/.cache
    : >"${mnt}/etc/resolv.conf"
    echo localhost >"${mnt}/etc/hostname"
    bah umount "${ctr}" >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd python3 --label org.opencontainers.image.description="Debian ${BASE_SUITE} minbase with python3 (${BASE_PACKAGES})" \
        "${ctr}"
    bah commit --quiet --rm "${ctr}" "${BASE_IMAGE}" >/dev/null
    log "base image ${BASE_IMAGE} built in $((SECONDS - t0)) s ($(bah images --format '{{.Size}}' "${BASE_IMAGE}"))"
}
