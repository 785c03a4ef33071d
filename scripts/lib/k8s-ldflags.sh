# Sourced by the Kubernetes build scripts: the -ldflags that stamp a binary with its release, as upstream's
# release builds do (kubectl version and the API server's /version report it).
#   k8s_ldflags v1.36.3   ->  prints the flags
k8s_ldflags() {
    local version="$1" minor build_date flags="-s -w" pkg
    minor="${version#v1.}"; minor="${minor%%.*}"
    build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
        flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${build_date}"
    done
    printf '%s' "${flags}"
}
