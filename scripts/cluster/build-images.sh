#!/usr/bin/env bash
# Build the cluster's two local images as OCI archives, with no registry and no image
# builder: a root filesystem holding Debian's static busybox, one gzip layer, written
# by hand as an OCI image layout. Both images share that layer:
#   localhost/conveyor/pause:<busybox version>    the pod sandbox (sleeps as PID 1)
#   localhost/conveyor/busybox:<busybox version>  a general-purpose test image (sh, httpd,
#                                                 wget, nslookup, ...)
# Archives land in ${CONVEYOR_IMAGE_CACHE:-$HOME/.cache/conveyor/images}/ and are made
# once per busybox version; `ctr -n k8s.io images import FILE` loads one into containerd.
#
# Usage: scripts/cluster/build-images.sh   prints "NAME ARCHIVE" for each image
set -euo pipefail

CACHE="${CONVEYOR_IMAGE_CACHE:-${HOME}/.cache/conveyor/images}"
BUSYBOX=/bin/busybox
if [[ ! -x "${BUSYBOX}" ]] || ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    echo "error: ${BUSYBOX} (a static busybox) is missing: apt-get install -y busybox-static" >&2
    exit 1
fi
version="$(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null | sed 's/^[0-9]*://; s/-.*//')"
[[ -n "${version}" ]] || version="$("${BUSYBOX}" | head -n1 | awk '{print $2}' | tr -d v)"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# write_blob FILE -> moves FILE into blobs/sha256/ of the layout in $layout; echoes digest
write_blob() {
    local digest
    digest="$(sha "$1")"
    mv "$1" "${layout}/blobs/sha256/${digest}"
    echo "${digest}"
}

# build_image SHORT_NAME PROCESS_JSON USER   (PROCESS_JSON: "Entrypoint":[...] or "Cmd":[...])
build_image() {
    local short="$1" process="$2" user="$3"
    local name="localhost/conveyor/${short}:${version}"
    local out="${CACHE}/${short}-${version}.oci.tar"
    if [[ -s "${out}" ]]; then
        echo "${name} ${out}"
        return
    fi
    local work
    work="$(mktemp -d)"
    layout="${work}/layout"
    mkdir -p "${work}/rootfs/bin" "${work}/rootfs/etc" "${work}/rootfs/tmp" "${layout}/blobs/sha256"
    chmod 1777 "${work}/rootfs/tmp"
    cp "${BUSYBOX}" "${work}/rootfs/bin/busybox"
    for applet in $("${BUSYBOX}" --list); do
        [[ "${applet}" == busybox ]] || ln -s busybox "${work}/rootfs/bin/${applet}"
    done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"${work}/rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"${work}/rootfs/etc/group"

    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -C "${work}/rootfs" -cf "${work}/layer.tar" .
    local diff_id layer_digest layer_size config_digest config_size manifest_digest manifest_size
    diff_id="$(sha "${work}/layer.tar")"
    gzip -n -9 "${work}/layer.tar"
    layer_size="$(stat -c %s "${work}/layer.tar.gz")"
    layer_digest="$(write_blob "${work}/layer.tar.gz")"

    printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],%s,"User":"%s","WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"scripts/cluster/build-images.sh (busybox-static %s)"}]}' \
        "${process}" "${user}" "${diff_id}" "${version}" >"${work}/config.json"
    config_size="$(stat -c %s "${work}/config.json")"
    config_digest="$(write_blob "${work}/config.json")"

    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "${config_digest}" "${config_size}" "${layer_digest}" "${layer_size}" >"${work}/manifest.json"
    manifest_size="$(stat -c %s "${work}/manifest.json")"
    manifest_digest="$(write_blob "${work}/manifest.json")"

    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "${manifest_digest}" "${manifest_size}" "${name}" "${version}" >"${layout}/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"${layout}/oci-layout"

    mkdir -p "${CACHE}"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${layout}" -cf "${out}.tmp" .
    mv "${out}.tmp" "${out}"
    rm -rf "${work}"
    echo "${name} ${out}"
}

# The sandbox only has to exist and die on SIGKILL (containerd stops sandboxes that way);
# 65535 as upstream's pause image runs.
build_image pause '"Entrypoint":["/bin/sleep","2147483647"]' 65535
build_image busybox '"Cmd":["sh"]' 0
