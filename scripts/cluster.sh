#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the end-to-end tier and by hand:
#   scripts/cluster.sh up       start it (builds binaries and local images once; idempotent)
#   scripts/cluster.sh down     stop it and remove everything `up` made (idempotent)
#   scripts/cluster.sh status   each component and the node (exit 0 up, 3 down, 1 partly up)
#   scripts/cluster.sh env      print `export KUBECONFIG=...` and kubectl's PATH (eval it)
#   scripts/cluster.sh exec CMD...   run CMD in the node's namespaces
#                                    (e.g. `ctr -n k8s.io images import image.tar`)
#
# The whole cluster runs in a network namespace of its own, joined to the host by one veth
# pair; containerd and the kubelet also run in a private mount namespace. So the host gains
# one link, two routes (pod and Service subnets via the node) and a cgroup
# /conveyor-cluster-NAME in each hierarchy, and nothing else: no listening port, no iptables rule, no
# sysctl change, no mount. Nothing has a default route: no traffic leaves the machine, and
# CoreDNS answers cluster names only. Needs root, cgroup v1 (as on these machines) and
# Debian's containerd, runc, containernetworking-plugins, iptables and busybox-static
# (installed with apt-get when missing).
#
# Environment (defaults in brackets; two clusters on one machine need distinct values):
#   CONVEYOR_CLUSTER_NAME          [conveyor]       node name; names the veth and cgroups
#   CONVEYOR_CLUSTER_LINK_CIDR     [10.243.0.0/30]  host <-> node link (.1 host, .2 node/API)
#   CONVEYOR_CLUSTER_POD_CIDR      [10.244.0.0/24]  pod bridge subnet
#   CONVEYOR_CLUSTER_SERVICE_CIDR  [10.245.0.0/24]  Service ClusterIPs (.1 API, .10 DNS)
#   CONVEYOR_CLUSTER_POD_MEMORY_MIB [6144]          memory for all pods together
#   CONVEYOR_CLUSTER_DIR           [/var/tmp/conveyor-cluster/NAME]  state, removed by down
#   CONVEYOR_CLUSTER_NO_APT=1      never run apt-get; say what to install instead
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
NAME="${CONVEYOR_CLUSTER_NAME:-conveyor}"
LINK_CIDR="${CONVEYOR_CLUSTER_LINK_CIDR:-10.243.0.0/30}"
POD_CIDR="${CONVEYOR_CLUSTER_POD_CIDR:-10.244.0.0/24}"
SVC_CIDR="${CONVEYOR_CLUSTER_SERVICE_CIDR:-10.245.0.0/24}"
POD_MEMORY_MIB="${CONVEYOR_CLUSTER_POD_MEMORY_MIB:-6144}"
STATE_ROOT="/var/tmp/conveyor-cluster"
STATE="${CONVEYOR_CLUSTER_DIR:-${STATE_ROOT}/${NAME}}"
CACHE="${HOME}/.cache/conveyor"
CTRD_ROOT="${CACHE}/cluster/${NAME}/containerd"  # kept by down: imported images stay
CGROUP="conveyor-cluster-${NAME}"
HOST_IF="cv-${NAME}"
KUBECONFIG_PATH="${STATE}/kubeconfig"
# kubectl's discovery cache goes with the cluster, not into ~/.kube.
export KUBECACHEDIR="${STATE}/kube-cache"
# Start order (down has its own: see cmd_down).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet
    kube-proxy coredns)

log() { echo "[cluster ${NAME} $(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
# shellcheck source=lib/apt-install.sh
source "${HERE}/lib/apt-install.sh"

# --- addresses --------------------------------------------------------------
ip2int() { local IFS=.; read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }
cidr_check() {  # VAR_NAME CIDR MAX_PREFIX
    local cidr="$2" ip prefix
    [[ "${cidr}" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$ ]] ||
        die "$1=${cidr} is not an IPv4 CIDR like 10.244.0.0/24"
    ip="${cidr%/*}"; prefix="${cidr#*/}"
    ((prefix >= 8 && prefix <= $3)) || die "$1=${cidr}: the prefix must be between /8 and /$3"
    local n; n="$(ip2int "${ip}")"
    ((n % (1 << (32 - prefix)) == 0)) || die "$1=${cidr}: ${ip} is not the start of a /${prefix}"
}
cidr_first() { local p="${1#*/}"; echo $(($(ip2int "${1%/*}") & ~((1 << (32 - p)) - 1) & 0xffffffff)); }
cidr_last() { local p="${1#*/}"; echo $(($(cidr_first "$1") + (1 << (32 - p)) - 1)); }
overlaps() {  # CIDR CIDR
    (($(cidr_first "$1") <= $(cidr_last "$2") && $(cidr_first "$2") <= $(cidr_last "$1")))
}

check_params() {
    [[ "${NAME}" =~ ^[a-z][a-z0-9-]{0,11}$ ]] ||
        die "CONVEYOR_CLUSTER_NAME=${NAME}: use 1-12 characters of a-z, 0-9 and '-', starting with a letter"
    cidr_check CONVEYOR_CLUSTER_LINK_CIDR "${LINK_CIDR}" 30
    cidr_check CONVEYOR_CLUSTER_POD_CIDR "${POD_CIDR}" 28
    cidr_check CONVEYOR_CLUSTER_SERVICE_CIDR "${SVC_CIDR}" 28
    overlaps "${LINK_CIDR}" "${POD_CIDR}" && die "CONVEYOR_CLUSTER_LINK_CIDR and _POD_CIDR overlap"
    overlaps "${LINK_CIDR}" "${SVC_CIDR}" && die "CONVEYOR_CLUSTER_LINK_CIDR and _SERVICE_CIDR overlap"
    overlaps "${POD_CIDR}" "${SVC_CIDR}" && die "CONVEYOR_CLUSTER_POD_CIDR and _SERVICE_CIDR overlap"
    [[ "${POD_MEMORY_MIB}" =~ ^[0-9]+$ ]] || die "CONVEYOR_CLUSTER_POD_MEMORY_MIB=${POD_MEMORY_MIB}: give MiB, e.g. 6144"
    MEM_TOTAL_MIB=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
    ((MEM_TOTAL_MIB - POD_MEMORY_MIB >= 1024)) || die "CONVEYOR_CLUSTER_POD_MEMORY_MIB=${POD_MEMORY_MIB}" \
        "leaves under 1 GiB of this machine's ${MEM_TOTAL_MIB} MiB for the cluster's own processes; give less"
    return 0
}
check_params
HOST_IP="$(int2ip $(($(cidr_first "${LINK_CIDR}") + 1)))"
NODE_IP="$(int2ip $(($(cidr_first "${LINK_CIDR}") + 2)))"
LINK_PREFIX="${LINK_CIDR#*/}"
POD_GW="$(int2ip $(($(cidr_first "${POD_CIDR}") + 1)))"
API_SVC_IP="$(int2ip $(($(cidr_first "${SVC_CIDR}") + 1)))"
DNS_IP="$(int2ip $(($(cidr_first "${SVC_CIDR}") + 10)))"

# Host routes and addresses our subnets must not collide with (ours excepted).
check_subnets_free() {
    local dst
    while read -r dst; do
        [[ "${dst}" == default || -z "${dst}" ]] && continue
        [[ "${dst}" == */* ]] || dst="${dst}/32"
        for mine in "${LINK_CIDR}" "${POD_CIDR}" "${SVC_CIDR}"; do
            if overlaps "${dst}" "${mine}"; then
                die "${mine} overlaps ${dst}, already routed on this host ($(ip -o -4 route show to "${dst}" | head -n1));" \
                    "choose free subnets with CONVEYOR_CLUSTER_LINK_CIDR/_POD_CIDR/_SERVICE_CIDR" \
                    "(another cluster? give it a different CONVEYOR_CLUSTER_NAME and subnets)"
            fi
        done
    done < <(ip -o -4 route show table all type unicast | awk '{print $1}'; ip -o -4 addr show | awk '{print $4}')
}

# --- prerequisites ------------------------------------------------------------
need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root (it creates network namespaces, mounts and cgroups); try: sudo $0 $*"
}

check_packages() {
    local missing=() cmd
    for cmd in containerd:containerd ctr:containerd runc:runc iptables:iptables curl:curl \
        openssl:openssl ip:iproute2 unshare:util-linux nsenter:util-linux; do
        command -v "${cmd%%:*}" >/dev/null 2>&1 || missing+=("${cmd#*:}")
    done
    for plugin in bridge host-local loopback; do
        [[ -x "/usr/lib/cni/${plugin}" ]] || missing+=(containernetworking-plugins)
    done
    dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${CONVEYOR_CLUSTER_NO_APT:-0}" "${missing[@]}"
}

check_kernel() {
    [[ -d /sys/fs/cgroup/memory && -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]] ||
        die "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory: this script supports the cgroup v1" \
            "layout of these machines only"
    unshare --mount --net true 2>/dev/null ||
        die "cannot create mount and network namespaces (unshare --mount --net failed): needs root with CAP_SYS_ADMIN"
    [[ -d /proc/sys/net/bridge ]] ||
        die "/proc/sys/net/bridge is missing: the kernel needs br_netfilter (modprobe br_netfilter)"
}

bin_dirs() {
    CP_BIN="$(bash "${HERE}/build-control-plane.sh" --print-bin-dir)"
    { read -r NODE_BIN; read -r COREDNS_BIN; } < <(bash "${HERE}/build-node-binaries.sh" --print-bin-dirs)
    KUBECTL="${NODE_BIN}/kubectl"
}

binary() {  # component -> path
    case "$1" in
        etcd | kube-apiserver | kube-controller-manager) echo "${CP_BIN}/$1" ;;
        kubelet | kube-scheduler | kube-proxy) echo "${NODE_BIN}/$1" ;;
        coredns) echo "${COREDNS_BIN}/coredns" ;;
        containerd) command -v containerd ;;
    esac
}

# --- processes ------------------------------------------------------------------
argv_of() {  # pid -> its command line, one argument a line (fails if the process is gone)
    local args=()
    mapfile -d '' args 2>/dev/null <"/proc/$1/cmdline" || return 1
    [[ ${#args[@]} -gt 0 ]] && printf '%s\n' "${args[@]}"
}

holder_pid() {  # prints the namespace holder's pid if it is alive
    local pid argv
    pid="$(cat "${STATE}/pids/holder" 2>/dev/null)" || return 1
    argv="$(argv_of "${pid}")" || return 1
    [[ "${argv}" == $'sleep\ninfinity' ]] && echo "${pid}"
}

pid_of() {  # component -> its pid if that process is alive (checked by its command line)
    local pid argv
    pid="$(cat "${STATE}/pids/$1" 2>/dev/null)" || return 1
    argv="$(argv_of "${pid}")" || return 1
    [[ "${argv%%$'\n'*}" == */"$1" ]] && echo "${pid}"
}

in_ns() {  # run a command in the node's mount and network namespaces
    local holder
    holder="$(holder_pid)" || die "cluster ${NAME} is not up (no namespace holder); run: $0 up"
    nsenter -t "${holder}" -m -n -- "$@"
}

cgroup_dirs() {  # every hierarchy's directory for our cgroup (existing or not)
    local h
    for h in /sys/fs/cgroup/*/; do
        [[ -f "${h}cgroup.procs" ]] && echo "${h}${CGROUP}"
    done
}

make_cgroups() {
    local d parent
    for d in $(cgroup_dirs); do
        mkdir -p "${d}/node"
        if [[ -f "${d}/cpuset.cpus" ]]; then  # cgroup v1 cpuset starts empty: inherit
            parent="$(dirname "${d}")"
            cat "${parent}/cpuset.cpus" >"${d}/cpuset.cpus"
            cat "${parent}/cpuset.mems" >"${d}/cpuset.mems"
            cat "${d}/cpuset.cpus" >"${d}/node/cpuset.cpus"
            cat "${d}/cpuset.mems" >"${d}/node/cpuset.mems"
        fi
    done
}

join_cgroup() {  # move the calling (sub)shell into our node cgroup in every hierarchy
    local d
    for d in $(cgroup_dirs); do
        echo "${BASHPID}" >"${d}/node/cgroup.procs"
    done
}

cgroup_pids() {  # every process left in our cgroup tree
    local d
    for d in $(cgroup_dirs); do
        [[ -d "${d}" ]] && find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

spawn() {  # component argv... : start it in the node namespaces, our cgroup, its own session
    local name="$1"; shift
    local holder; holder="$(holder_pid)"
    (
        exec 9<&-  # the lock stays with this script
        join_cgroup
        exec setsid nsenter -t "${holder}" -m -n -- "$@"
    ) </dev/null >"${STATE}/logs/${name}.log" 2>&1 &
    echo "$!" >"${STATE}/pids/${name}"
    disown "$!"  # stopped by pid, not as this shell's job
}

stop_pids() {  # timeout_s name=pid... : SIGTERM all at once, SIGKILL whatever is left after the timeout
    local timeout="$1" entry i left=(); shift
    if ((timeout == 0)); then
        for entry in "$@"; do kill -KILL "${entry#*=}" 2>/dev/null || true; done
        return 0
    fi
    for entry in "$@"; do kill -TERM "${entry#*=}" 2>/dev/null || true; done
    for ((i = 0; i < timeout * 10; i++)); do
        left=()
        for entry in "$@"; do kill -0 "${entry#*=}" 2>/dev/null && left+=("${entry}"); done
        [[ ${#left[@]} -eq 0 ]] && return 0
        sleep 0.1
    done
    log "did not stop in ${timeout}s, killing: ${left[*]}"
    for entry in "${left[@]}"; do kill -KILL "${entry#*=}" 2>/dev/null || true; done
}

log_tail() {
    echo "--- last lines of ${STATE}/logs/$1.log ---" >&2
    tail -n "${2:-25}" "${STATE}/logs/$1.log" >&2 2>/dev/null || true
}

wait_for() {  # description timeout_s component command... : poll until the command succeeds
    local what="$1" timeout="$2" comp="$3"; shift 3
    local start=${SECONDS} next=10
    until "$@" >/dev/null 2>&1; do
        if [[ -n "${comp}" ]] && ! kill -0 "$(cat "${STATE}/pids/${comp}")" 2>/dev/null; then
            log_tail "${comp}"
            die "${comp} exited while waiting for ${what}"
        fi
        if ((SECONDS - start >= timeout)); then
            [[ -n "${comp}" ]] && log_tail "${comp}"
            die "timed out after ${timeout}s waiting for ${what}"
        fi
        if ((SECONDS - start >= next)); then
            log "still waiting for ${what} ($((SECONDS - start)) s)"
            next=$((next + 10))
        fi
        sleep 0.3
    done
}

# --- files ------------------------------------------------------------------------
token() { head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }

write_kubeconfig() {  # path user token
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: conveyor-${NAME}
  cluster:
    server: https://${NODE_IP}:6443
    certificate-authority-data: $(base64 -w0 "${STATE}/pki/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: conveyor-${NAME}
  context:
    cluster: conveyor-${NAME}
    user: $2
    namespace: default
current-context: conveyor-${NAME}
EOF
    chmod 600 "$1"
}

make_pki() {
    local pki="${STATE}/pki"
    mkdir -p "${pki}"
    (
        cd "${pki}"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -sha256 -days 365 -subj "/CN=conveyor-${NAME}-ca" -out ca.crt 2>/dev/null
        sign() {  # name subject extensions
            openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
            openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
            printf '%s\n' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 365 \
                -extfile "$1.ext" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
            "subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:${NODE_IP},IP:${API_SVC_IP},IP:127.0.0.1")"
        sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$(printf '%s\n' \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")"
        openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
        openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
        chmod 600 ./*.key
    )
}

write_files() {
    mkdir -p "${STATE}"/{pids,logs,kubeconfigs,etcd,cni/net.d,var-lib,sysctl} "${CTRD_ROOT}"
    make_pki
    # Static tokens: one identity per component (RBAC's built-in roles for each, Node authz).
    local entry file user group tok
    : >"${STATE}/pki/tokens.csv"
    for entry in "admin|admin|system:masters" "kubelet|system:node:${NAME}|system:nodes" \
        "kube-proxy|system:kube-proxy|" "kube-scheduler|system:kube-scheduler|" \
        "kube-controller-manager|system:kube-controller-manager|" "coredns|system:conveyor:coredns|"; do
        IFS='|' read -r file user group <<<"${entry}"
        tok="$(token)"
        echo "${tok},${user},${user},\"${group}\"" >>"${STATE}/pki/tokens.csv"
        if [[ "${file}" == admin ]]; then
            write_kubeconfig "${KUBECONFIG_PATH}" "${user}" "${tok}"
        else
            write_kubeconfig "${STATE}/kubeconfigs/${file}.conf" "${user}" "${tok}"
        fi
    done
    chmod 600 "${STATE}/pki/tokens.csv"

    # Values the kubelet would otherwise write host-wide (see ns-init.sh).
    echo 1 >"${STATE}/sysctl/vm.overcommit_memory"
    echo 0 >"${STATE}/sysctl/vm.panic_on_oom"
    echo 10 >"${STATE}/sysctl/kernel.panic"
    echo 1 >"${STATE}/sysctl/kernel.panic_on_oops"
    echo 1000000 >"${STATE}/sysctl/kernel.keys.root_maxkeys"
    echo 25000000 >"${STATE}/sysctl/kernel.keys.root_maxbytes"
    : >"${STATE}/resolv.conf"

    cat >"${STATE}/containerd.toml" <<EOF
version = 2
root = "${CTRD_ROOT}"
state = "/run/containerd"
oom_score = 0
# "opt" would create /opt/containerd on the host; the others are unused here.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: no process may lower its oom_score_adj below containerd's.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${STATE}/cni/net.d"
    max_conf_num = 1
EOF

    # Pods reach the node, the host end of the link and Services; no default route.
    cat >"${STATE}/cni/net.d/10-conveyor.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "conveyor-${NAME}",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GW}"}]],
             "routes": [{"dst": "${SVC_CIDR}"}, {"dst": "${LINK_CIDR}"}]}
  }]
}
EOF

    local reserved_mib=$((MEM_TOTAL_MIB - POD_MEMORY_MIB))
    cat >"${STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: ${NODE_IP}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${STATE}/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [${DNS_IP}]
resolvConf: ${STATE}/resolv.conf
protectKernelDefaults: false
failSwapOn: false
oomScoreAdj: 0
# Pods together get POD_MEMORY_MIB: the kubepods cgroup is limited to it.
systemReserved: {memory: ${reserved_mib}Mi}
enforceNodeAllocatable: [pods]
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
# Local images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF

    cat >"${STATE}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${STATE}/kubeconfigs/kube-proxy.conf}
hostnameOverride: ${NAME}
mode: iptables
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
iptables: {localhostNodePorts: false}
# 0 = leave the kernel's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF

    # Cluster names only; no "forward": nothing leaves the machine.
    cat >"${STATE}/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind ${NODE_IP}
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig ${STATE}/kubeconfigs/coredns.conf conveyor-${NAME}
        pods insecure
    }
    cache 30
}
EOF
}

bootstrap_objects() {
    "${KUBECTL}" --kubeconfig "${KUBECONFIG_PATH}" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "conveyor:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "conveyor:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "conveyor:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:conveyor:coredns"}]
---
# CoreDNS runs on the node itself; this Service (no selector) and its EndpointSlice
# point pods' DNS (kubelet clusterDNS) at it, as a kube-dns Service would.
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: ${DNS_IP}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: conveyor-cluster.sh}
addressType: IPv4
endpoints:
- addresses: ["${NODE_IP}"]
  conditions: {ready: true}
  nodeName: ${NAME}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# --- checks used while waiting ------------------------------------------------------
etcd_healthy() { in_ns curl -sf --max-time 2 http://127.0.0.1:2379/health | grep -q '"health":"true"'; }
apiserver_ready() {
    local tok; tok="$(awk -F, '$2 == "admin" {print $1}' "${STATE}/pki/tokens.csv")"
    [[ "$(curl -s --max-time 2 --cacert "${STATE}/pki/ca.crt" -H "Authorization: Bearer ${tok}" \
        "https://${NODE_IP}:6443/readyz")" == ok ]]
}
holder_ready() { [[ -f "${STATE}/ns-ready" ]] && holder_pid; }
kubectl_q() { "${KUBECTL}" --kubeconfig "${KUBECONFIG_PATH}" --request-timeout=5s "$@"; }
default_sa_exists() { kubectl_q get serviceaccount default -o name; }
containerd_up() { in_ns ctr version; }
node_ready() {
    [[ "$(kubectl_q get node "${NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
kube_proxy_healthy() { in_ns curl -sf --max-time 2 http://127.0.0.1:10256/healthz; }
coredns_ready() { in_ns curl -sf --max-time 2 http://127.0.0.1:8181/ready; }

# Remove every container (pods included) from containerd, keeping images.
purge_containers() {
    local ids id
    ids="$(in_ns ctr -n k8s.io containers list -q 2>/dev/null)" || return 0
    for id in ${ids}; do
        in_ns ctr -n k8s.io tasks kill -s SIGKILL "${id}" >/dev/null 2>&1 || true
    done
    for id in ${ids}; do
        in_ns ctr -n k8s.io tasks delete -f "${id}" >/dev/null 2>&1 || true
        in_ns ctr -n k8s.io containers delete "${id}" >/dev/null 2>&1 || true
    done
}

# --- commands --------------------------------------------------------------------------
# Which parts of cluster NAME exist now: "none", "all" or "partial".
cluster_state() {
    local running=0 leftovers=0 c
    holder_pid >/dev/null && leftovers=1
    for c in "${COMPONENTS[@]}"; do
        pid_of "${c}" >/dev/null && running=$((running + 1))
    done
    ip link show "${HOST_IF}" >/dev/null 2>&1 && leftovers=1
    for d in $(cgroup_dirs); do [[ -d "${d}" ]] && leftovers=1; done
    [[ -d "${STATE}" ]] && leftovers=1
    if ((running == ${#COMPONENTS[@]})) && holder_pid >/dev/null; then
        echo all
    elif ((running == 0 && leftovers == 0)); then
        echo none
    else
        echo partial
    fi
}

LOCKED=0
lock() {
    ((LOCKED)) && return 0
    LOCKED=1
    mkdir -p "${CACHE}/cluster/${NAME}"
    exec 9<"${CACHE}/cluster/${NAME}"
    if ! flock -n 9; then
        log "another scripts/cluster.sh is working on cluster ${NAME}; waiting for it"
        flock 9
    fi
}

on_up_failure() {
    local rc=$?
    ((rc == 0)) && return 0
    local keep
    keep="/tmp/conveyor-cluster-${NAME}-logs-$(date +%Y%m%d-%H%M%S)"
    if compgen -G "${STATE}/logs/*.log" >/dev/null; then
        cp -r "${STATE}/logs" "${keep}"
        log "up failed; component logs kept in ${keep}"
    fi
    log "cleaning up after the failed start"
    cmd_down >&2 || true
    exit "${rc}"
}

cmd_up() {
    need_root up
    lock
    bin_dirs
    case "$(cluster_state)" in
        all)
            if node_ready; then
                log "cluster ${NAME} is already up"
                echo "${KUBECONFIG_PATH}"
                return 0
            fi
            log "cluster ${NAME} is running but its node is not Ready; restarting it" ;&
        partial)
            log "found leftovers of cluster ${NAME} (a failed or half-stopped run); removing them first"
            cmd_down >&2 ;;
    esac
    check_packages
    check_kernel
    check_subnets_free
    local t0=${SECONDS}
    log "binaries (built once into ${CACHE}; a cold build takes ~10 min)"
    bash "${HERE}/build-control-plane.sh" >&2
    bash "${HERE}/build-node-binaries.sh" >&2
    local images
    images="$(bash "${HERE}/cluster/build-images.sh")"
    PAUSE_IMAGE="$(awk '$1 ~ /\/pause:/ {print $1}' <<<"${images}")"

    trap on_up_failure EXIT
    local t1=${SECONDS}
    write_files
    make_cgroups

    log "node namespaces"
    (
        exec 9<&-
        join_cgroup
        exec setsid unshare --mount --net --propagation private -- bash "${HERE}/cluster/ns-init.sh" "${STATE}"
    ) </dev/null >"${STATE}/logs/holder.log" 2>&1 &
    echo "$!" >"${STATE}/pids/holder"
    disown "$!"
    wait_for "the node namespaces" 20 holder holder_ready
    local holder; holder="$(holder_pid)"
    ip link add "${HOST_IF}" type veth peer name eth0 netns "${holder}"
    ip addr add "${HOST_IP}/${LINK_PREFIX}" dev "${HOST_IF}"
    ip link set "${HOST_IF}" up
    in_ns ip addr add "${NODE_IP}/${LINK_PREFIX}" dev eth0
    in_ns ip link set eth0 up
    ip route add "${POD_CIDR}" via "${NODE_IP}" dev "${HOST_IF}"
    ip route add "${SVC_CIDR}" via "${NODE_IP}" dev "${HOST_IF}"

    log "etcd"
    spawn etcd "$(binary etcd)" --name="${NAME}" --data-dir="${STATE}/etcd" \
        --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
        --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
        --initial-cluster="${NAME}=http://127.0.0.1:2380" --unsafe-no-fsync=true --log-level=warn
    wait_for "etcd" 60 etcd etcd_healthy

    log "kube-apiserver on https://${NODE_IP}:6443"
    local pki="${STATE}/pki"
    spawn kube-apiserver "$(binary kube-apiserver)" --etcd-servers=http://127.0.0.1:2379 \
        --bind-address="${NODE_IP}" --advertise-address="${NODE_IP}" --secure-port=6443 \
        --tls-cert-file="${pki}/apiserver.crt" --tls-private-key-file="${pki}/apiserver.key" \
        --client-ca-file="${pki}/ca.crt" --token-auth-file="${pki}/tokens.csv" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="${pki}/sa.pub" --service-account-signing-key-file="${pki}/sa.key" \
        --service-cluster-ip-range="${SVC_CIDR}" --allow-privileged=true \
        --kubelet-client-certificate="${pki}/apiserver-kubelet-client.crt" \
        --kubelet-client-key="${pki}/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP
    wait_for "kube-apiserver /readyz" 120 kube-apiserver apiserver_ready

    log "kube-controller-manager, kube-scheduler"
    spawn kube-controller-manager "$(binary kube-controller-manager)" \
        --kubeconfig="${STATE}/kubeconfigs/kube-controller-manager.conf" \
        --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file="${pki}/sa.key" --root-ca-file="${pki}/ca.crt" \
        --service-cluster-ip-range="${SVC_CIDR}"
    spawn kube-scheduler "$(binary kube-scheduler)" --kubeconfig="${STATE}/kubeconfigs/kube-scheduler.conf" \
        --bind-address=127.0.0.1 --leader-elect=false
    bootstrap_objects

    log "containerd"
    spawn containerd "$(binary containerd)" --config "${STATE}/containerd.toml"
    wait_for "containerd" 60 containerd containerd_up
    purge_containers  # from an earlier run that ended without `down`
    local name archive
    while read -r name archive; do
        in_ns ctr -n k8s.io images import "${archive}" >/dev/null
    done <<<"${images}"

    log "kubelet, kube-proxy, CoreDNS"
    spawn kubelet "$(binary kubelet)" --config="${STATE}/kubelet.yaml" \
        --kubeconfig="${STATE}/kubeconfigs/kubelet.conf" --hostname-override="${NAME}" --node-ip="${NODE_IP}"
    spawn kube-proxy "$(binary kube-proxy)" --config="${STATE}/kube-proxy.yaml"
    spawn coredns "$(binary coredns)" -conf "${STATE}/Corefile"
    wait_for "node ${NAME} Ready" 120 kubelet node_ready
    wait_for "kube-proxy" 60 kube-proxy kube_proxy_healthy
    wait_for "CoreDNS" 60 coredns coredns_ready
    wait_for "the default service account" 60 kube-controller-manager default_sa_exists
    trap - EXIT
    log "up in $((SECONDS - t0)) s (start $((SECONDS - t1)) s); eval \"\$($0 env)\" to use kubectl"
    echo "${KUBECONFIG_PATH}"
}

cmd_down() {
    need_root down
    lock
    local t0=${SECONDS} pid c
    if [[ "$(cluster_state)" == none ]]; then
        log "cluster ${NAME} is not up; nothing to remove"
        return 0
    fi
    # The kubelet first, so it restarts nothing; then the pods, through containerd.
    if pid="$(pid_of kubelet)"; then log "stopping kubelet"; stop_pids 15 "kubelet=${pid}"; fi
    if pid_of containerd >/dev/null; then log "removing containers"; purge_containers; fi
    # Then the API server's clients together (containerd must close its image store cleanly:
    # it is kept). The API server and etcd keep nothing (their state is removed below), so
    # they get SIGKILL: a graceful stop takes seconds, and hangs once etcd has gone.
    local group running timeout
    for group in "containerd kube-proxy coredns kube-scheduler kube-controller-manager" "kube-apiserver etcd"; do
        running=()
        for c in ${group}; do
            if pid="$(pid_of "${c}")"; then running+=("${c}=${pid}"); fi
        done
        [[ ${#running[@]} -gt 0 ]] || continue
        log "stopping ${running[*]%%=*}"
        timeout=15
        [[ "${group}" == "kube-apiserver etcd" ]] && timeout=0
        stop_pids "${timeout}" "${running[@]}"
    done
    log "removing processes left in the cluster's cgroups"
    # Anything left in our cgroups (container shims, pod processes) and the holder.
    local left i
    for ((i = 0; i < 50; i++)); do
        left="$(cgroup_pids)"
        [[ -z "${left}" ]] && break
        # shellcheck disable=SC2086
        kill -KILL ${left} 2>/dev/null || true
        sleep 0.2
    done
    [[ -z "$(cgroup_pids)" ]] || log "warning: processes still in ${CGROUP}: $(cgroup_pids | tr '\n' ' ')"
    if pid="$(holder_pid)"; then kill -KILL "${pid}" 2>/dev/null || true; fi

    log "removing the link, routes, cgroups and state"
    ip route del "${POD_CIDR}" via "${NODE_IP}" dev "${HOST_IF}" 2>/dev/null || true
    ip route del "${SVC_CIDR}" via "${NODE_IP}" dev "${HOST_IF}" 2>/dev/null || true
    ip link del "${HOST_IF}" 2>/dev/null || true

    local d
    for d in $(cgroup_dirs); do
        [[ -d "${d}" ]] || continue
        for ((i = 0; i < 50; i++)); do
            find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d "${d}" ]] || break
            sleep 0.2
        done
        [[ -d "${d}" ]] && log "warning: could not remove cgroup ${d}"
    done
    # The CRI plugin's per-container directories (the images stay in ${CTRD_ROOT}).
    rm -rf "${CTRD_ROOT}/io.containerd.grpc.v1.cri/sandboxes" "${CTRD_ROOT}/io.containerd.grpc.v1.cri/containers"
    rm -rf "${STATE}"
    rmdir "${STATE_ROOT}" 2>/dev/null || true
    log "down in $((SECONDS - t0)) s"
}

cmd_status() {
    local state c pid
    state="$(cluster_state)"
    if pid="$(holder_pid)"; then echo "namespaces              pid ${pid}"; else echo "namespaces              not running"; fi
    for c in "${COMPONENTS[@]}"; do
        if pid="$(pid_of "${c}")"; then
            printf '%-23s pid %s\n' "${c}" "${pid}"
        else
            printf '%-23s not running\n' "${c}"
        fi
    done
    if [[ "${state}" == all ]]; then
        bin_dirs
        if node_ready; then echo "node ${NAME}: Ready"; else echo "node ${NAME}: not Ready"; fi
        echo "kubeconfig: ${KUBECONFIG_PATH}"
        return 0
    elif [[ "${state}" == none ]]; then
        echo "cluster ${NAME} is down"
        return 3
    fi
    echo "cluster ${NAME} is partly up: '$0 up' cleans up and starts it again; '$0 down' removes it"
    return 1
}

cmd_env() {
    bin_dirs
    [[ -f "${KUBECONFIG_PATH}" ]] || die "cluster ${NAME} is not up (no ${KUBECONFIG_PATH}); run: $0 up"
    echo "export KUBECONFIG=${KUBECONFIG_PATH}"
    echo "export KUBECACHEDIR=${KUBECACHEDIR}"
    # helm (scripts/install-helm.sh) is cached beside the node binaries' directory
    echo "export PATH=${NODE_BIN}:${CONVEYOR_BIN_DIR:-${HOME}/.cache/conveyor/bin}:\${PATH}"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    exec) shift; [[ $# -gt 0 ]] || die "usage: $0 exec COMMAND [ARGS...]"; need_root exec; in_ns "$@" ;;
    *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
