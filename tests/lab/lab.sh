#!/usr/bin/env bash
# The nspawn lab: N Debian hosts (real systemd + sshd) as systemd-nspawn containers on a bridge,
# each with its own network namespace and IP. See ../../../shared/lab-notes.md for why each
# option is here.
#
# Usage:
#   lab.sh up LAB N [--layer NAME ...]   boot h1..hN; returns when sshd answers on all of them
#   lab.sh down LAB | --all              remove every process, mount, netns, veth and bridge
#   lab.sh stop-host LAB hI              halt one host (its IP stops answering; disk kept)
#   lab.sh start-host LAB hI             boot it again with its state
#   lab.sh exec LAB hI -- CMD...         run CMD inside the host (no SSH)
#   lab.sh mem LAB                       memory per host (PSS, MiB)
#   lab.sh list                          labs that are up
#   lab.sh image [--layer NAME ...]      build (or find) the cached base and layers; print paths
#
# LAB: [a-z][a-z0-9]{0,8}. Subnet 10.77.K.0/24, K = lowest free or env LAB_SUBNET=K; the bridge
# is 10.77.K.1, host hI is 10.77.K.(10+I). Outputs in /var/lib/clusterctl-lab/LAB/: env,
# id_ed25519(.pub), known_hosts, inventory.yaml. Images are cached under
# /var/cache/clusterctl/lab/, keyed by the sha256 of their recipe (recipes/, layers/).
# Env: LAB_KEEP_ON_FAILURE=1 leaves a failed `up` in place for debugging.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE_ROOT=${CLUSTERCTL_LAB_STATE:-/var/lib/clusterctl-lab}
CACHE=${CLUSTERCTL_CACHE:-/var/cache/clusterctl}/lab
INOTIFY_WANT=8192   # 128 (the default) kills hosts after about the 22nd at boot
# Each host gets its own cgroup, in the unified hierarchy (where nspawn 252 on a hybrid machine
# puts its supervisor/payload cgroups: without this, all hosts share /payload) and in the
# name=systemd one (the tree the host's systemd manages).
if [ -d /sys/fs/cgroup/unified ]; then CG_ROOTS=(/sys/fs/cgroup/unified/clusterctl-lab /sys/fs/cgroup/systemd/clusterctl-lab)
else CG_ROOTS=(/sys/fs/cgroup/clusterctl-lab); fi
# And in every cgroup v1 controller hierarchy (cpu, cpuset, memory, pids, ...): nspawn roots a
# host's cgroup namespace where the host starts, so without a cgroup of its own there, every
# host's kubelet shares the machine's one /kubepods with every node of every lab: their QoS
# settings overwrite each other, and each kubelet takes the others' pods for orphans and tries
# to remove their cgroups every 2 s (most of a lab's CPU time went there).
while read -r _ mnt fstype opts _; do
	[ "$fstype" = cgroup ] || continue
	case ",$opts," in *,name=*) continue ;; esac
	CG_ROOTS+=("$mnt/clusterctl-lab")
done </proc/self/mounts

usage() { sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
log() { printf '%s lab: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'lab: %s\n' "$*" >&2; exit 1; }

check_lab() { [[ ${1:-} =~ ^[a-z][a-z0-9]{0,8}$ ]] || die "bad lab name '${1:-}' (want [a-z][a-z0-9]{0,8})"; }
check_host() { [[ ${1:-} =~ ^h[1-9][0-9]{0,2}$ ]] || die "bad host name '${1:-}' (want h1, h2, ...)"; }

# Names of a lab's kernel objects (<=15 chars for links).
bridge_of() { echo "clbr-$1"; }
netns_of() { echo "clab-$1-$2"; }
veth_of() { echo "clv$1-${2#h}"; }
cg_of() { local r; for r in "${CG_ROOTS[@]}"; do echo "$r/$1-$2"; done; }
cg_make() { # mkdir a cgroup and its parents; in a cpuset hierarchy with the parent's cpus, mems
	# (every level, every time: another lab may be creating the same parents right now)
	local cg=$1 parent
	mountpoint -q "$cg" && return 0
	parent=$(dirname "$cg")
	cg_make "$parent"
	mkdir -p "$cg"
	if [ -f "$cg/cpuset.cpus" ] && [ -z "$(cat "$cg/cpuset.cpus")" ]; then
		cat "$parent/cpuset.cpus" >"$cg/cpuset.cpus"
		cat "$parent/cpuset.mems" >"$cg/cpuset.mems"
	fi
}
labdir() { echo "$STATE_ROOT/$1"; }

with_lock() { # with_lock CMD...: serialise against other lab.sh runs (subnets, inotify)
	mkdir -p "$STATE_ROOT"
	(
		flock 9
		"$@"
	) 9>"$STATE_ROOT/.lock"
}

# ---------------------------------------------------------------- images
# content only: the same recipe in another checkout must hit the same cache entry
recipe_key() { cat "$@" | sha256sum | cut -c1-16; }

image_base() { # prints the base rootfs dir
	local key dir
	key=$(recipe_key "$here/recipes/base.sh")
	dir="$CACHE/base-$key"
	if [ ! -d "$dir/rootfs" ]; then
		mkdir -p "$CACHE"
		(
			flock 8
			if [ ! -d "$dir/rootfs" ]; then
				log "building base image $dir (debootstrap, ~1 min)"
				rm -rf "$dir.tmp"
				mkdir -p "$dir.tmp"
				"$here/recipes/base.sh" "$dir.tmp/rootfs" >"$dir.tmp/build.log" 2>&1 ||
					{ tail -20 "$dir.tmp/build.log" >&2; die "base image build failed (log: $dir.tmp/build.log)"; }
				mv "$dir.tmp" "$dir"
			fi
		) 8>"$CACHE/.build.lock"
	fi
	echo "$dir/rootfs"
}

# image_layer NAME LOWER -> prints the layer dir (an overlay upper dir usable as a lower dir).
# LOWER is the colon-separated lower chain it is built on (top first).
image_layer() {
	local name=$1 lower=$2 recipe="$here/layers/$1.sh" key dir
	[ -f "$recipe" ] || die "no layer recipe $recipe"
	key=$(printf '%s\n%s\n' "$lower" "$(sha256sum <"$recipe")" | sha256sum | cut -c1-16)
	dir="$CACHE/layer-$name-$key"
	if [ ! -d "$dir/upper" ]; then
		(
			flock 8
			if [ ! -d "$dir/upper" ]; then
				log "building layer $name ($dir)"
				local t="$dir.tmp"
				if mountpoint -q "$t/root" 2>/dev/null; then umount "$t/root"; fi
				rm -rf "$t"
				mkdir -p "$t/upper" "$t/work" "$t/root"
				mount -t overlay overlay -o "lowerdir=$lower,upperdir=$t/upper,workdir=$t/work" "$t/root"
				install -m 0755 "$recipe" "$t/root/var/tmp/lab-layer.sh"
				# shellcheck disable=SC2030,SC2031 # rc lives in this subshell only
				local rc=0
				systemd-nspawn -q --register=no --keep-unit -D "$t/root" -M "lablayer-$name" \
					--resolv-conf=replace-host /bin/bash /var/tmp/lab-layer.sh >"$t/build.log" 2>&1 </dev/null || rc=$?
				rm -f "$t/root/var/tmp/lab-layer.sh" "$t/root/etc/resolv.conf"
				umount "$t/root"
				if [ "$rc" != 0 ]; then tail -20 "$t/build.log" >&2; die "layer $name build failed (log: $t/build.log)"; fi
				# resolv.conf: hosts keep the base's copy (the overlay shows it again once the
				# whiteout is gone)
				rm -f "$t/upper/etc/resolv.conf"
				rm -rf "$t/work" "$t/root"
				mv "$t" "$dir"
			fi
		) 8>"$CACHE/.build.lock"
	fi
	echo "$dir/upper"
}

# image_chain LAYER... -> prints the overlay lowerdir chain (top first)
image_chain() {
	local chain l
	chain=$(image_base)
	for l in "$@"; do
		chain="$(image_layer "$l" "$chain"):$chain"
	done
	echo "$chain"
}

# ---------------------------------------------------------------- inotify
inotify_raise() { # called under the lock
	local cur
	cur=$(cat /proc/sys/fs/inotify/max_user_instances)
	[ -f "$STATE_ROOT/.inotify-orig" ] || echo "$cur" >"$STATE_ROOT/.inotify-orig"
	if [ "$cur" -lt "$INOTIFY_WANT" ]; then
		echo "$INOTIFY_WANT" >/proc/sys/fs/inotify/max_user_instances
	fi
}

inotify_restore_if_last() { # called under the lock
	local d
	for d in "$STATE_ROOT"/*/; do
		[ -d "$d" ] && return 0
	done
	for d in "${CG_ROOTS[@]}"; do rmdir "$d" 2>/dev/null || true; done
	if [ -f "$STATE_ROOT/.inotify-orig" ]; then
		cat "$STATE_ROOT/.inotify-orig" >/proc/sys/fs/inotify/max_user_instances
		rm -f "$STATE_ROOT/.inotify-orig"
	fi
}

# ---------------------------------------------------------------- subnet
subnet_taken() {
	local k=$1 f
	for f in "$STATE_ROOT"/*/env; do
		[ -f "$f" ] || continue
		grep -qx "LAB_SUBNET=$k" "$f" && return 0
	done
	[ -n "$(ip -4 -o addr show to "10.77.$k.0/24" 2>/dev/null)" ] && return 0
	[ -n "$(ip -4 route show to "10.77.$k.0/24" 2>/dev/null)" ] && return 0
	return 1
}

reserve() { # reserve LAB N: under the lock; writes the first env (subnet reservation)
	local lab=$1 n=$2 k d
	d=$(labdir "$lab")
	[ -e "$d" ] && die "lab $lab exists ($d): run 'lab.sh down $lab' first"
	if [ -n "${LAB_SUBNET:-}" ]; then
		k=$LAB_SUBNET
		if ! [[ $k =~ ^[0-9]+$ ]] || [ "$k" -gt 255 ]; then die "LAB_SUBNET must be 0..255"; fi
		subnet_taken "$k" && die "subnet 10.77.$k.0/24 is already in use"
	else
		for k in $(seq 0 255); do subnet_taken "$k" || break; done
		subnet_taken "$k" && die "no free /24 in 10.77.0.0/16"
	fi
	mkdir -p "$d/hosts"
	echo "LAB_SUBNET=$k" >"$d/env"
	inotify_raise
}

# ---------------------------------------------------------------- hosts
host_ip() { # host_ip SUBNET hI
	echo "10.77.$1.$((10 + ${2#h}))"
}

nspawn_pid() { # prints the nspawn pid of a running host, or nothing
	local f
	f="$(labdir "$1")/hosts/$2/nspawn.pid"
	[ -f "$f" ] || return 0
	local pid
	pid=$(cat "$f")
	if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = systemd-nspawn ]; then echo "$pid"; fi
}

leader_pid() { # the container's PID 1 (child of nspawn)
	local pid c
	pid=$(nspawn_pid "$1" "$2")
	[ -n "$pid" ] || return 0
	for c in $(pgrep -P "$pid"); do
		if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then echo "$c"; return 0; fi
	done
}

# Extra nspawn options by profile (LAB_PROFILE): "plain" (sshd, etcd, haproxy, keepalived,
# the control plane) or "k8s", which also runs kubelet + containerd + runc. Each k8s option is
# in lab-notes "Kubernetes nodes in the lab", with the error seen without it: /dev/kmsg and
# CAP_SYSLOG (kubelet's OOM watcher), @keyring (runc joins a session keyring), and the
# containerd/kubelet data directories on the machine's ext4 (overlayfs cannot hold containerd's
# overlay snapshots). profile_args PROFILE [HOSTDIR]
profile_args() {
	case "$1" in
	plain) ;;
	k8s)
		echo "--bind=/dev/kmsg"
		echo "--capability=CAP_SYSLOG"
		echo "--system-call-filter=@keyring"
		if [ -n "${2:-}" ]; then
			echo "--bind=$2/data/containerd:/var/lib/containerd"
			echo "--bind=$2/data/kubelet:/var/lib/kubelet"
		fi
		;;
	*) die "unknown profile $1 (plain or k8s)" ;;
	esac
}

# k8s profile, inside the host before containerd and kubelet: the cgroup v1 controllers that
# nspawn mounts read-only made writable (this host's subtree only: see CG_ROOTS), and the three kernel
# settings kubelet insists on shown with the values it wants, through files bind-mounted over
# the /proc/sys entries (the machine's own values stay untouched).
k8s_prep() { # k8s_prep ROOT HOSTDIR
	local root=$1 hd=$2
	mkdir -p "$hd/data/containerd" "$hd/data/kubelet"
	cat >"$root/usr/local/sbin/lab-k8s-prep" <<'PREP'
#!/bin/sh
set -e
for m in $(awk '$3 == "cgroup" { print $2 }' /proc/self/mounts); do
	mount -o remount,bind,rw "$m"
done
mkdir -p /run/lab-sysctl
for kv in vm/overcommit_memory=1 kernel/panic=10 kernel/panic_on_oops=1; do
	k=${kv%=*}
	f=/run/lab-sysctl/$(echo "$k" | tr / _)
	echo "${kv#*=}" >"$f"
	mount --bind "$f" "/proc/sys/$k"
done
PREP
	chmod 0755 "$root/usr/local/sbin/lab-k8s-prep"
	cat >"$root/etc/systemd/system/lab-k8s-prep.service" <<'UNIT'
[Unit]
Description=lab: writable cgroup controllers and kubelet's kernel settings (nspawn)
DefaultDependencies=no
After=local-fs.target
Before=containerd.service kubelet.service sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/lab-k8s-prep

[Install]
WantedBy=sysinit.target
UNIT
	mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
	ln -sf ../lab-k8s-prep.service "$root/etc/systemd/system/sysinit.target.wants/lab-k8s-prep.service"
}

# First-boot identity of a host, written into its merged root: hostname, machine-id, hosts,
# pre-generated ed25519 host key, authorised client key for root/deploy/nopw.
host_identity() {
	local lab=$1 h=$2 hd=$3 root=$3/root i
	# shellcheck disable=SC1090,SC1091
	. "$(labdir "$lab")/env"
	echo "$h" >"$root/etc/hostname"
	tr -d '-' </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
	{
		echo "127.0.0.1 localhost"
		echo "::1 localhost ip6-localhost ip6-loopback"
		for i in $LAB_HOSTS; do echo "$(host_ip "$LAB_SUBNET" "$i") $i"; done
	} >"$root/etc/hosts"
	install -m 0600 "$hd/ssh_host_ed25519_key" "$root/etc/ssh/ssh_host_ed25519_key"
	install -m 0644 "$hd/ssh_host_ed25519_key.pub" "$root/etc/ssh/ssh_host_ed25519_key.pub"
	install -m 0600 -o 0 -g 0 "$LAB_KEY.pub" "$root/root/.ssh/authorized_keys"
	install -m 0600 -o 1000 -g 1000 "$LAB_KEY.pub" "$root/home/deploy/.ssh/authorized_keys"
	install -m 0600 -o 1001 -g 1001 "$LAB_KEY.pub" "$root/home/nopw/.ssh/authorized_keys"
}

host_net_up() {
	local lab=$1 h=$2 subnet=$3 ns veth
	ns=$(netns_of "$lab" "$h")
	veth=$(veth_of "$lab" "$h")
	ip netns add "$ns"
	# A fixed MAC per host: after stop/start the machine's ARP entry is still right (a new
	# random MAC left the host unreachable for ~15 s).
	local mac
	mac=$(printf '02:77:%02x:00:%02x:%02x' "$subnet" $((${h#h} / 256)) $((${h#h} % 256)))
	ip link add "$veth" type veth peer name eth0 netns "$ns"
	ip -n "$ns" link set eth0 address "$mac"
	ip neigh flush to "$(host_ip "$subnet" "$h")" dev "$(bridge_of "$lab")" 2>/dev/null || true
	ip link set "$veth" master "$(bridge_of "$lab")" up
	ip -n "$ns" addr add "$(host_ip "$subnet" "$h")/24" dev eth0
	ip -n "$ns" link set lo up
	ip -n "$ns" link set eth0 up
	# kubelet & co. pick the interface holding the default route; the machine does not
	# forward (no NAT): the lab stays offline.
	ip -n "$ns" route add default via "10.77.$subnet.1"
}

host_boot() { # host_boot LAB hI: network, root mount, nspawn (state kept across stop/start)
	local lab=$1 h=$2 d hd cg pid
	d=$(labdir "$lab")
	hd="$d/hosts/$h"
	# shellcheck disable=SC1091
	. "$d/env"
	host_net_up "$lab" "$h" "$LAB_SUBNET"
	mkdir -p "$hd/upper" "$hd/work" "$hd/root"
	mount -t overlay overlay -o "lowerdir=$LAB_LOWER,upperdir=$hd/upper,workdir=$hd/work" "$hd/root"
	if [ ! -f "$hd/identity.done" ]; then
		host_identity "$lab" "$h" "$hd"
		[ "${LAB_PROFILE:-plain}" != k8s ] || k8s_prep "$hd/root" "$hd"
		touch "$hd/identity.done"
	fi
	local -a cgs
	mapfile -t cgs < <(cg_of "$lab" "$h")
	for cg in "${cgs[@]}"; do cg_make "$cg"; done
	local -a extra
	mapfile -t extra < <(profile_args "${LAB_PROFILE:-plain}" "$hd")
	(
		for cg in "${cgs[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
		SYSTEMD_NSPAWN_API_VFS_WRITABLE=network exec setsid systemd-nspawn -q -D "$hd/root" \
			-M "$lab-$h" --hostname="$h" -b --register=no --keep-unit \
			--network-namespace-path="/run/netns/$(netns_of "$lab" "$h")" \
			--capability=CAP_NET_ADMIN,CAP_IPC_LOCK,CAP_SYS_RESOURCE \
			--console=read-only "${extra[@]}"
	) >>"$hd/console.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$hd/nspawn.pid"
	# until the subshell has exec'd nspawn, /proc/$pid/comm says bash
	local i
	for i in $(seq 1 100); do
		[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ] && return 0
		[ -d "/proc/$pid" ] || break
		sleep 0.05
	done
	: "$i"
	tail -5 "$hd/console.log" >&2 || true
	die "nspawn for host $h of lab $lab did not start"
}

ssh_banner() { # ssh_banner IP: true when an SSH server answers there
	# shellcheck disable=SC2016 # $1 is expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/22" && head -c 4 <&3' _ "$1" 2>/dev/null | grep -q '^SSH-'
}

wait_sshd() { # wait_sshd LAB TIMEOUT hI...
	local lab=$1 timeout=$2 h ip deadline
	shift 2
	# shellcheck disable=SC1090,SC1091
	. "$(labdir "$lab")/env"
	deadline=$((SECONDS + timeout))
	local -a pending=("$@")
	while [ "${#pending[@]}" -gt 0 ]; do
		local -a next=()
		for h in "${pending[@]}"; do
			ip=$(host_ip "$LAB_SUBNET" "$h")
			if ssh_banner "$ip"; then continue; fi
			if [ -z "$(nspawn_pid "$lab" "$h")" ]; then
				tail -15 "$(labdir "$lab")/hosts/$h/console.log" >&2 || true
				die "host $h of lab $lab died while booting (console: $(labdir "$lab")/hosts/$h/console.log)"
			fi
			next+=("$h")
		done
		pending=("${next[@]}")
		[ "${#pending[@]}" -eq 0 ] && break
		[ "$SECONDS" -ge "$deadline" ] && die "sshd not answering after ${timeout}s on: ${pending[*]}"
		sleep 0.3
	done
}

ssh_opts() { # common OpenSSH options for a lab
	local d
	d=$(labdir "$1")
	echo "-i $d/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$d/known_hosts -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 -o LogLevel=ERROR"
}

verify_ssh() { # every host: root login with strict host key checking (a few tries each)
	local lab=$1 h ip opts failed=()
	shift
	opts=$(ssh_opts "$lab")
	# shellcheck disable=SC1090,SC1091
	. "$(labdir "$lab")/env"
	local -A pid_of=()
	for h in "$@"; do
		ip=$(host_ip "$LAB_SUBNET" "$h")
		# shellcheck disable=SC2086
		(for _ in 1 2 3 4 5; do ssh $opts "root@$ip" true </dev/null && exit 0; sleep 1; done; exit 1) &
		pid_of[$h]=$!
	done
	for h in "$@"; do
		wait "${pid_of[$h]}" || failed+=("$h")
	done
	[ "${#failed[@]}" -eq 0 ] || die "ssh as root (strict host keys) fails on: ${failed[*]}"
}

write_outputs() { # env, known_hosts, inventory.yaml
	local lab=$1 n=$2 d h i ip roles
	d=$(labdir "$lab")
	# shellcheck disable=SC1091
	. "$d/env"
	: >"$d/known_hosts.tmp"
	for i in $(seq 1 "$n"); do
		h="h$i"
		ip=$(host_ip "$LAB_SUBNET" "$h")
		echo "$ip $(cut -d' ' -f1,2 "$d/hosts/$h/ssh_host_ed25519_key.pub")" >>"$d/known_hosts.tmp"
	done
	mv "$d/known_hosts.tmp" "$d/known_hosts"
	{
		echo "# Written by tests/lab/lab.sh for lab $lab ($(date -u +%FT%TZ))."
		echo "apiVersion: clusterctl.io/v1alpha1"
		echo "kind: Cluster"
		echo "metadata:"
		echo "  name: lab-$lab"
		echo "spec:"
		echo "  kubernetesVersion: v1.20.2"
		echo "  ssh:"
		echo "    user: root"
		echo "    keyFile: $d/id_ed25519"
		echo "    knownHosts: strict"
		echo "    knownHostsFile: $d/known_hosts"
		echo "  # Lab hosts are containers: kubelet and containerd use cgroupfs (the host's systemd does"
		echo "  # not own the cgroup v1 controllers), containerd cannot lower OOM scores below the"
		echo "  # machine's, and kube-proxy must leave the machine's conntrack limits alone."
		echo "  containerRuntime: { cgroupDriver: cgroupfs, restrictOOMScoreAdj: true }"
		echo "  network: { proxyManagesConntrack: false }"
		echo "  # Lab hosts share the machine's disk: kubelets must not evict (and taint their node, and"
		echo "  # delete every unused image, bundle images included) because the machine's disk, shared"
		echo "  # with other builds, is fuller than the defaults allow (imagefs 15 % free): a fixed 1Gi."
		echo "  kubelet: { evictionHard: { imagefs.available: \"1Gi\", nodefs.available: \"1Gi\", memory.available: \"100Mi\" } }"
		echo "  # Backups hold the CA keys: encrypted to the lab's test-only key (tests/lab/backup-identity.txt)."
		echo "  backup: { recipients: [$(sed -n 's/^# public key: //p' "$here/backup-identity.txt")] }"
		echo "  hosts:"
		for i in $(seq 1 "$n"); do
			h="h$i"
			ip=$(host_ip "$LAB_SUBNET" "$h")
			roles="[worker]"
			if [ "$n" -ge 3 ] && [ "$i" -le 3 ]; then roles="[etcd, control-plane]"; fi
			echo "    - { name: $h, address: $ip, roles: $roles }"
		done
	} >"$d/inventory.yaml"
}

cmd_up() {
	local lab=${1:-} n=${2:-} layers=() h i d t0
	check_lab "$lab"
	[[ $n =~ ^[1-9][0-9]{0,2}$ ]] || usage
	shift 2
	while [ $# -gt 0 ]; do
		case "$1" in
		--layer) layers+=("${2:?--layer needs a name}"); shift 2 ;;
		*) usage ;;
		esac
	done
	[ "$(id -u)" = 0 ] || die "must run as root"
	[ "$n" -le 200 ] || die "at most 200 hosts"
	# The kubelets of a lab see this machine's disk as their node and image filesystems: the lab
	# inventory sets their eviction thresholds to a fixed 1 GiB free (the defaults, 10-15 %,
	# made them evict pods on this shared disk, and a test then failed far from its cause), and
	# a 5-host lab itself takes 5-10 GB (a 50-host one ~20 GB). Say so before starting when the
	# disk is that short.
	local free_gb need_gb=$((n * 2 / 5 > 10 ? n * 2 / 5 : 10))
	free_gb=$(df --output=avail -k /var/lib | awk 'NR==2 {printf "%d", $1 / 1048576}')
	[ "$free_gb" -ge $((need_gb + 5)) ] ||
		log "WARNING: only ${free_gb} GB free on /var/lib's filesystem: a lab of $n hosts takes up to ~${need_gb} GB and its kubelets evict pods below 1 GiB free: free space first (old cargo target dirs, bundles in /var/cache/clusterctl/bundles)"
	profile_args "${LAB_PROFILE:-plain}" >/dev/null
	t0=$SECONDS
	local lower
	lower=$(image_chain "${layers[@]}")
	with_lock reserve "$lab" "$n"
	d=$(labdir "$lab")
	if [ "${LAB_KEEP_ON_FAILURE:-0}" != 1 ]; then
		# shellcheck disable=SC2064
		# shellcheck disable=SC2031
		trap "rc=\$?; if [ \$rc != 0 ]; then log 'up failed: tearing lab $lab down'; cmd_down $lab || true; fi" EXIT
		trap "exit 130" INT TERM
	fi
	# shellcheck disable=SC1091
	. "$d/env"
	local hosts=""
	for i in $(seq 1 "$n"); do hosts+="${hosts:+ }h$i"; done
	ssh-keygen -q -t ed25519 -N "" -C "clusterctl-lab-$lab" -f "$d/id_ed25519"
	{
		echo "LAB_NAME=$lab"
		echo "LAB_SUBNET=$LAB_SUBNET"
		echo "LAB_BRIDGE=$(bridge_of "$lab")"
		echo "LAB_GATEWAY=10.77.$LAB_SUBNET.1"
		echo "LAB_HOSTS=\"$hosts\""
		for i in $(seq 1 "$n"); do echo "LAB_IP_h$i=$(host_ip "$LAB_SUBNET" "h$i")"; done
		echo "LAB_KEY=$d/id_ed25519"
		echo "LAB_KNOWN_HOSTS=$d/known_hosts"
		echo "LAB_INVENTORY=$d/inventory.yaml"
		echo "LAB_LAYERS=\"${layers[*]}\""
		echo "LAB_LOWER=$lower"
		echo "LAB_PROFILE=${LAB_PROFILE:-plain}"
		echo "LAB_NOPW_PASSWORD=nopw-lab"
	} >"$d/env.tmp"
	mv "$d/env.tmp" "$d/env"
	local br
	br=$(bridge_of "$lab")
	ip link add "$br" type bridge
	ip addr add "10.77.$LAB_SUBNET.1/24" dev "$br"
	ip link set "$br" up
	for h in $hosts; do
		mkdir -p "$d/hosts/$h"
		ssh-keygen -q -t ed25519 -N "" -C "root@$h" -f "$d/hosts/$h/ssh_host_ed25519_key"
	done
	write_outputs "$lab" "$n"
	for h in $hosts; do host_boot "$lab" "$h"; done
	# shellcheck disable=SC2086
	wait_sshd "$lab" $((60 + 2 * n)) $hosts
	# shellcheck disable=SC2086
	verify_ssh "$lab" $hosts
	trap - EXIT INT TERM
	log "lab $lab: $n hosts up in $((SECONDS - t0))s on 10.77.$LAB_SUBNET.0/24 ($d)"
	echo "$d/env"
}

# ---------------------------------------------------------------- teardown
cg_kill_all() { # kill every process in a cgroup tree, then remove it
	local cg=$1 f p tries
	[ -d "$cg" ] || return 0
	for tries in $(seq 1 50); do
		local any=0
		while IFS= read -r p; do
			kill -KILL "$p" 2>/dev/null && any=1
		done < <(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
		[ "$any" = 0 ] && break
		sleep 0.1
	done
	: "$tries"
	find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	[ ! -d "$cg" ] || log "warning: cgroup $cg not removed"
}

host_halt() { # host_halt LAB hI: stop processes, unmount, drop netns/veth; keep upper dir
	local lab=$1 h=$2 pid i cg
	pid=$(nspawn_pid "$lab" "$h")
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 1 150); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
		: "$i"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	for cg in $(cg_of "$lab" "$h"); do cg_kill_all "$cg"; done
	host_unplug "$lab" "$h"
}

host_unplug() { # mounts, netns and veth of one host
	local lab=$1 h=$2 root ns veth
	root="$(labdir "$lab")/hosts/$h/root"
	while mountpoint -q "$root" 2>/dev/null; do umount "$root" 2>/dev/null || umount -l "$root"; done
	ns=$(netns_of "$lab" "$h")
	veth=$(veth_of "$lab" "$h")
	if [ -e "/run/netns/$ns" ]; then ip netns del "$ns" 2>/dev/null || true; fi
	if ip link show "$veth" >/dev/null 2>&1; then ip link del "$veth" 2>/dev/null || true; fi
	rm -f "$(labdir "$lab")/hosts/$h/nspawn.pid"
}

cmd_down() {
	local lab=${1:-} d h pids=() p m
	check_lab "$lab"
	d=$(labdir "$lab")
	# 1. ask every host to halt, all at once
	if [ -d "$d/hosts" ]; then
		for h in "$d"/hosts/*; do
			h=$(basename "$h")
			p=$(nspawn_pid "$lab" "$h")
			if [ -n "$p" ]; then kill -TERM "$p" 2>/dev/null || true; pids+=("$p"); fi
		done
	fi
	# also nspawns of this lab that lost their pid file
	for p in $(pgrep -f "^systemd-nspawn .* -M $lab-h[0-9]+ " 2>/dev/null || true); do
		kill -TERM "$p" 2>/dev/null || true
		pids+=("$p")
	done
	local i
	for i in $(seq 1 150); do
		local alive=0
		for p in "${pids[@]}"; do [ -d "/proc/$p" ] && alive=1; done
		[ "$alive" = 0 ] && break
		sleep 0.2
	done
	: "$i"
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	# 2. whatever is left in the hosts' cgroups
	local r
	for r in "${CG_ROOTS[@]}"; do
		for m in "$r/$lab"-h*; do if [ -d "$m" ]; then cg_kill_all "$m"; fi; done
	done
	# 3. mounts under the lab dir (deepest first)
	if [ -d "$d" ]; then
		for m in $(findmnt -rn -o TARGET | grep "^$d/" | sort -r); do
			umount "$m" 2>/dev/null || umount -l "$m" || true
		done
	fi
	# 4. netns, veths, bridge (by name, so this works without any state file)
	for m in $(ip netns list | awk '{print $1}' | grep -E "^clab-$lab-h[0-9]+$" || true); do
		ip netns del "$m" || true
	done
	for m in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^clv$lab-[0-9]+$" || true); do
		ip link del "$m" 2>/dev/null || true
	done
	if ip link show "$(bridge_of "$lab")" >/dev/null 2>&1; then ip link del "$(bridge_of "$lab")"; fi
	rm -rf "$d"
	with_lock inotify_restore_if_last
}

cmd_down_all() {
	local d lab
	for d in "$STATE_ROOT"/*/; do
		[ -d "$d" ] || continue
		lab=$(basename "$d")
		cmd_down "$lab"
	done
	# orphans from labs whose state dir is gone
	for lab in $(ip -o link show type bridge | awk -F': ' '{print $2}' | sed -n 's/^clbr-//p'); do
		cmd_down "$lab"
	done
	for lab in $(ip netns list | awk '{print $1}' | sed -En 's/^clab-([a-z0-9]+)-h[0-9]+$/\1/p' | sort -u); do
		cmd_down "$lab"
	done
	with_lock inotify_restore_if_last
}

# ---------------------------------------------------------------- single hosts
need_host() { # need_host LAB hI: the lab and host exist
	check_lab "$1"
	check_host "$2"
	[ -d "$(labdir "$1")/hosts/$2" ] || die "no host $2 in lab $1"
}

cmd_stop_host() {
	need_host "$@"
	host_halt "$1" "$2"
	log "host $2 of lab $1 stopped"
}

cmd_start_host() {
	need_host "$@"
	[ -z "$(nspawn_pid "$1" "$2")" ] || die "host $2 of lab $1 is running"
	host_unplug "$1" "$2" # leftovers of a crash
	host_boot "$1" "$2"
	wait_sshd "$1" 60 "$2"
	log "host $2 of lab $1 started"
}

cmd_exec() {
	local lab=${1:-} h=${2:-} pid
	need_host "$lab" "$h"
	shift 2
	[ "${1:-}" = "--" ] && shift
	[ $# -gt 0 ] || usage
	pid=$(leader_pid "$lab" "$h")
	[ -n "$pid" ] || die "host $h of lab $lab is not running"
	exec nsenter -t "$pid" -m -u -i -n -p -C -r -w -- \
		env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

cmd_mem() { # PSS of every process of each host, from smaps_rollup
	local lab=${1:-} d h total=0 kb p
	check_lab "$lab"
	d=$(labdir "$lab")
	[ -d "$d/hosts" ] || die "no lab $lab"
	printf '%-6s %8s %6s\n' host PSS_MiB procs
	local -a hosts
	mapfile -t hosts < <(find "$d/hosts" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V)
	for h in "${hosts[@]}"; do
		kb=0
		local n=0
		while IFS= read -r p; do
			local v
			v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || true)
			kb=$((kb + ${v:-0}))
			n=$((n + 1))
		done < <(find "${CG_ROOTS[0]}/$lab-$h" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
		total=$((total + kb))
		printf '%-6s %8s %6d\n' "$h" "$(awk -v k="$kb" 'BEGIN{printf "%.1f", k/1024}')" "$n"
	done
	printf '%-6s %8s\n' total "$(awk -v k="$total" 'BEGIN{printf "%.1f", k/1024}')"
}

cmd_list() {
	local d
	for d in "$STATE_ROOT"/*/; do
		[ -f "$d/env" ] || continue
		(
			# shellcheck disable=SC1091
			. "$d/env"
			echo "$(basename "$d") 10.77.${LAB_SUBNET}.0/24 ${LAB_HOSTS:-}"
		)
	done
}

main() {
	local cmd=${1:-}
	[ $# -gt 0 ] && shift
	case "$cmd" in
	up) cmd_up "$@" ;;
	down)
		[ "$(id -u)" = 0 ] || die "must run as root"
		if [ "${1:-}" = --all ]; then cmd_down_all; else cmd_down "${1:-}"; fi
		;;
	stop-host) cmd_stop_host "$@" ;;
	start-host) cmd_start_host "$@" ;;
	exec) cmd_exec "$@" ;;
	mem) cmd_mem "$@" ;;
	list) cmd_list ;;
	image)
		local layers=()
		while [ $# -gt 0 ]; do
			case "$1" in --layer) layers+=("${2:?}"); shift 2 ;; *) usage ;; esac
		done
		image_chain "${layers[@]}"
		;;
	*) usage ;;
	esac
}

main "$@"
