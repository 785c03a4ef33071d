# shellcheck shell=bash
# Sourced: install Debian packages with apt-get (retried once after `apt-get update`), or with NO_APT=1 (or no
# apt-get) stop and print the line to run instead. Needs die() and log() from the sourcing script.
#   apt_install NO_APT PACKAGE...           install these (all missing)
#   apt_install_missing NO_APT PACKAGE...   install those of these that are not installed
# Used by scripts/cluster.sh and scripts/build-image.sh.
apt_install() {
    local no_apt="$1"; shift
    [[ $# -eq 0 ]] && return 0
    local how="apt-get install -y --no-install-recommends $*"
    if [[ "${no_apt}" == 1 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing Debian packages: $*; install them: ${how}"
    fi
    log "installing missing Debian packages: $* (apt-get, ~20 s)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2; then
        log "apt-get install failed; refreshing the package lists and retrying"
        if ! { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$@" >&2; }; then
            die "could not install $*; run: apt-get update && ${how}"
        fi
    fi
}

apt_install_missing() {
    local no_apt="$1" missing=() pkg; shift
    for pkg in "$@"; do
        dpkg-query -W -f '${Status}' "${pkg}" 2>/dev/null | grep -q 'ok installed' || missing+=("${pkg}")
    done
    apt_install "${no_apt}" "${missing[@]}"
}
