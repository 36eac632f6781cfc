#!/usr/bin/env bash
# One-command setup for building and testing k8s-ovs on a Debian machine.
# Idempotent; run as root. Installs the real parts the lab uses (Open vSwitch,
# etcd, iperf3, tc/iproute2, the upstream CNI reference plugins, protoc for
# etcd-client's build) and checks that every tool answers.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 1
fi

PACKAGES=(
  openvswitch-switch      # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl, ovs-appctl
  etcd-server etcd-client # etcd 3.4 + etcdctl
  iperf3                  # bandwidth measurements in tests and benches
  dnsmasq-base            # a real DNS server behind the kube-dns ClusterIP in tests and the demo
  python3-minimal         # raw AF_PACKET frames (VLAN-tagged) in the hostile-tenant tests
  protobuf-compiler libprotobuf-dev # protoc + well-known .proto includes, to build etcd-client
  iproute2 iptables tcpdump ethtool iputils-ping iputils-arping
  containernetworking-plugins # upstream bridge/host-local/bandwidth/portmap: reference + chaining
  psmisc procps           # fuser/pgrep for diagnosing leftovers (never used to kill by name)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the image lean; policy-rc.d stops the
  # packages from starting system-wide OVS/etcd services we never use (tests
  # start their own instances with private directories).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# The upstream CNI plugins live in /usr/lib/cni on Debian.
CNI_DIR=/usr/lib/cni

check() {
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then
    printf '  ok   %s\n' "$what"
  else
    printf '  FAIL %s (%s)\n' "$what" "$*" >&2
    return 1
  fi
}

echo "setup.sh: checking tools"
fail=0
check ovsdb-server   ovsdb-server --version || fail=1
check ovs-vswitchd   ovs-vswitchd --version || fail=1
check ovs-vsctl      ovs-vsctl --version || fail=1
check ovs-ofctl      ovs-ofctl --version || fail=1
check ovs-appctl     ovs-appctl --version || fail=1
check ovsdb-tool     ovsdb-tool --version || fail=1
check etcd           etcd --version || fail=1
check etcdctl        env ETCDCTL_API=3 etcdctl version || fail=1
check iperf3         iperf3 --version || fail=1
check dnsmasq        dnsmasq --version || fail=1
check python3        python3 -c 'import socket; socket.AF_PACKET' || fail=1
check protoc         protoc --version || fail=1
check ip             ip -V || fail=1
check tc             tc -V || fail=1
check iptables       iptables --version || fail=1
check tcpdump        tcpdump --version || fail=1
check ethtool        ethtool --version || fail=1
check ping           ping -V || fail=1
check arping         arping -V || fail=1
check cni-bridge     test -x $CNI_DIR/bridge || fail=1
check cni-host-local test -x $CNI_DIR/host-local || fail=1
check cni-bandwidth  test -x $CNI_DIR/bandwidth || fail=1
check cni-portmap    test -x $CNI_DIR/portmap || fail=1
check ovs-schema     test -f /usr/share/openvswitch/vswitch.ovsschema || fail=1
check netns          ip netns list || fail=1
check cargo          cargo --version || fail=1
check cargo-nextest  cargo nextest --version || fail=1
# kubectl, for the tests of tenancy through the Kubernetes API (lab_tenancy_kube): 1.27 or
# newer (server-side field validation, which it finds in the apiserver's OpenAPI v3).
# Debian 12's kubernetes-client is 1.20, too old: install the upstream binary
# (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/).
kubectl_minor() { kubectl version --client -o json 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))'; }
check kubectl-1.27+  test "$(kubectl_minor)" -ge 27 || fail=1

if ((fail)); then
  echo "setup.sh: some tools are missing" >&2
  exit 1
fi
echo "setup.sh: ready"
