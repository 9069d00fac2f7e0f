#!/usr/bin/env bash
# The main job on a machine without VMs: an HA Kubernetes control plane on lab hosts, end to end.
# Builds (or reuses) the lab bundle from Debian's packages, boots N nspawn hosts, writes an
# inventory (h1..h3 etcd + control plane behind a keepalived VIP, the rest workers) and runs
# `clusterctl init` against it. Everything is real: sshd, etcd 3.4.23, haproxy, keepalived,
# Kubernetes v1.20.2 built from Debian's source package.
#
# Usage: tests/lab/cluster.sh up [N]     (default N=3; prints how to use kubectl)
#        tests/lab/cluster.sh down       (removes the lab: hosts, mounts, netns, bridge)
# Env:   LAB=name (default "demo"), CLUSTERCTL=path to a built clusterctl (default: release build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
lab=${LAB:-demo}
cmd=${1:-up}

case "$cmd" in
down)
	exec bash "$here/lab.sh" down "$lab"
	;;
up) ;;
*)
	sed -n '8,10p' "$0" >&2
	exit 2
	;;
esac
n=${2:-3}
[ "$n" -ge 3 ] || { echo "cluster.sh: need at least 3 hosts (3 control-plane hosts)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "cluster.sh: must run as root (nspawn, netns)" >&2; exit 1; }

if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ]; then
	apt-get update -q >&2
fi
bash "$here/prereqs.sh"
if [ -z "${CLUSTERCTL:-}" ]; then
	(cd "$repo" && cargo build --release -q --bin clusterctl) >&2
	CLUSTERCTL=$repo/target/release/clusterctl
fi
export CLUSTERCTL
bundle=$(bash "$here/build-bundle.sh" | tail -1)
LAB_PROFILE=k8s bash "$here/lab.sh" up "$lab" "$n" >/dev/null
d=/var/lib/clusterctl-lab/$lab
# shellcheck disable=SC1091
. "$d/env"
inv=$d/inventory-ha.yaml
# The lab's inventory plus the HA, bundle and etcd choices of this demo. build-bundle.sh signs
# the bundle with the lab's key (beside the bundles): clusterctl installs it only when its
# signature verifies against that public key.
cp "$d/inventory.yaml" "$inv"
cat >>"$inv" <<YAML
  ha:
    mode: vip
    vip: { address: 10.77.$LAB_SUBNET.100, interface: eth0 }
  bundle: { path: $bundle, publicKey: $(dirname "$(dirname "$bundle")")/keys/lab-bundle.pub }
  etcd:
    version: "3.4.23"
YAML
"$CLUSTERCTL" -i "$inv" inventory validate
"$CLUSTERCTL" -i "$inv" init
kc=$d/clusters/lab-$lab/admin.conf
echo
echo "cluster is up. Try:"
echo "  kubectl --kubeconfig $kc get --raw /readyz"
echo "  kubectl --kubeconfig $kc get componentstatuses"
echo "  $CLUSTERCTL -i $inv plan        # what init did, per host"
echo "  $CLUSTERCTL -i $inv init        # again: changes nothing"
echo "  bash tests/lab/cluster.sh down  # remove the lab"
