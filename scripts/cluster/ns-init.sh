#!/usr/bin/env bash
# PID 1-like holder of a cluster's node namespaces, started by scripts/cluster.sh as
#   unshare --mount --net --propagation private -- bash ns-init.sh STATE_DIR
# It prepares the private mount namespace and the fresh network namespace, then sleeps;
# every node process joins both with `nsenter -t <this pid> -m -n`. When it and they are
# gone, both namespaces and every mount in them vanish with them: nothing to unmount on
# the host, and no /run/netns bind mount left behind (which `ip netns add` would leave).
set -euo pipefail
state="$1"

# Paths containerd, the CNI plugins and the kubelet hard-code stay off the host.
mount -t tmpfs -o mode=0755 conveyor-run /run
mount -t tmpfs -o mode=0755 conveyor-log /var/log
mount --bind "${state}/var-lib" /var/lib

# The kubelet sets these host-wide kernel settings at start unless they already hold the
# values it wants: show it files with those values instead (only in this mount namespace).
for f in "${state}"/sysctl/*; do
    key="$(basename "${f}")"
    mount --bind "${f}" "/proc/sys/${key//.//}"
done

# Per network namespace: the host's own settings stay as they are.
ip link set lo up
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

touch "${state}/ns-ready"
exec sleep infinity
