#!/usr/bin/env bash
# Builds the lab's offline bundle from Debian's own packages (no stand-ins) with clusterctl's
# `bundle gen-manifest` + `bundle build`, then verifies it. Prints the bundle's path on stdout.
#
#   etcd/etcdctl 3.4.23 (bookworm) and 3.5.16 (trixie)   binaries extracted from etcd-server/-client
#   kube-apiserver, -controller-manager, -scheduler,      built from bookworm's `kubernetes` source
#   kubelet, kube-proxy v1.20.2                          package by build-kubernetes.sh (cached)
#   kubectl 1.20.2                                        extracted from kubernetes-client
#   CNI plugins                                           reproducible tar.gz of containernetworking-plugins
#   containerd, runc, iptables, conntrack, ipset,         .debs, plus every .deb they need that a
#   haproxy, keepalived                                   minbase bookworm (the lab base) lacks
#                                                         (kube-proxy needs iptables and conntrack,
#                                                         its ipvs mode ipset)
#   crictl: absent (Debian bookworm and trixie have no cri-tools package).
#
# The extracted Debian binaries are dynamically linked against libc only (checked below, with
# their newest GLIBC symbol against bookworm's glibc), so they run on the lab's minimal hosts;
# runc and containerd come as .debs because runc also needs libseccomp2.
#
# Output: $CLUSTERCTL_CACHE/bundles/lab-<key>.tar.zst (default /var/cache/clusterctl), where
# <key> hashes every input (package versions, the Kubernetes build, these scripts), so a second
# run with the same inputs only re-verifies the bundle (a few seconds).
#
# Usage: build-bundle.sh [--restamped vX.Y.Z]
#   --restamped also adds the Kubernetes server binaries of `build-kubernetes.sh --stamp vX.Y.Z`
#   (the SAME v1.20.2 code with another version string; ~5 min of CPU the first time), labelled
#   as re-stamped in the manifest, for exercising upgrade mechanics only.
# Env: CLUSTERCTL=path to a clusterctl binary (default: cargo build --release in this checkout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/apt-private.sh"

restamp=""
if [ "${1:-}" = "--restamped" ]; then restamp=${2:?--restamped needs a version like v1.20.3}; fi

log() { echo "build-bundle: $*" >&2; }
die() { echo "build-bundle: error: $*" >&2; exit 1; }

if [ -z "${CLUSTERCTL:-}" ]; then
	log "building clusterctl (release)"
	(cd "$repo" && cargo build --release -q --bin clusterctl) >&2
	CLUSTERCTL="$repo/target/release/clusterctl"
fi
[ -x "$CLUSTERCTL" ] || die "no clusterctl binary at $CLUSTERCTL"

kbin=$("$here/build-kubernetes.sh")
[ -f "$kbin/../BUILD-INFO" ] || die "no Kubernetes build at $kbin"
kbin_re=""
if [ -n "$restamp" ]; then kbin_re=$("$here/build-kubernetes.sh" --stamp "$restamp"); fi

# bookworm: the machine's own apt sources (Debian 12 with its security updates); trixie: a
# private apt configuration (apt-private.sh), read-only for the machine.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
	apt-get -q update >&2
fi
B=()
apt_private trixie deb
T=("${APT_PRIV[@]}")

# --- what a minimal lab host already has -------------------------------------------------------
# The lab base is `debootstrap --variant=minbase --include=<below> bookworm`: Priority: required
# packages + apt + the includes. Resolving that set with apt against an empty dpkg status gives
# the same package set (usr-is-merged named explicitly, as debootstrap picks it over usrmerge).
work="$LAB_CACHE/bundles/inputs"
mkdir -p "$work/debs" "$work/bin"
empty="$work/empty-status"; : >"$empty"
includes="systemd systemd-sysv dbus openssh-server iproute2 iputils-ping ca-certificates procps usr-is-merged apt"
required=$(apt-cache "${B[@]}" dumpavail | awk '/^Package:/{p=$2} /^Priority: required$/{print p}' | sort -u | tr '\n' ' ')
sim() { apt-get -s -q --no-install-recommends "${B[@]}" -o Dir::State::status="$empty" install "$@" 2>/dev/null | awk '/^Inst /{gsub(/\(/,"",$3); print $2, $3}' | sort -u; }
# shellcheck disable=SC2086
sim $required $includes >"$work/base.txt"
[ "$(wc -l <"$work/base.txt")" -gt 100 ] || die "could not resolve the minbase package set"
# .debs a host needs beyond the base, per group of roles.
closure() { # prints "pkg version" lines missing from the base
	# shellcheck disable=SC2086
	sim $required $includes "$@" | join -v1 - "$work/base.txt"
}
closure haproxy keepalived >"$work/lb.txt"
# kube-proxy needs iptables and conntrack (ipset too in its ipvs mode); none is in minbase.
node_pkgs="containerd runc iptables conntrack ipset"
# shellcheck disable=SC2086
closure $node_pkgs >"$work/node.txt"
grep -q '^haproxy ' "$work/lb.txt" && grep -q '^keepalived ' "$work/lb.txt" || die "haproxy/keepalived not resolvable"
for p in $node_pkgs; do grep -q "^$p " "$work/node.txt" || die "$p not resolvable in bookworm"; done

pkgver() {
	local suite=$1 p=$2 opts
	if [ "$suite" = trixie ]; then opts=("${T[@]}"); else opts=("${B[@]}"); fi
	apt-cache "${opts[@]}" policy "$p" 2>/dev/null | awk '/Candidate:/{print $2; exit}'
}
declare -A V
for p in etcd-server etcd-client kubernetes-client containernetworking-plugins; do V[bookworm/$p]=$(pkgver bookworm "$p"); done
for p in etcd-server etcd-client; do V[trixie/$p]=$(pkgver trixie "$p"); done
for k in "${!V[@]}"; do [ -n "${V[$k]}" ] && [ "${V[$k]}" != "(none)" ] || die "no candidate for $k"; done

key=$( {
	cat "$0" "$here/build-kubernetes.sh" "$here/apt-private.sh"
	for k in $(printf '%s\n' "${!V[@]}" | sort); do echo "$k=${V[$k]}"; done
	cat "$work/lb.txt" "$work/node.txt" "$kbin/../BUILD-INFO"
	[ -z "$kbin_re" ] || cat "$kbin_re/../BUILD-INFO"
} | sha256sum | cut -c1-16)
out="$LAB_CACHE/bundles/lab-$key${restamp:+-restamped-$restamp}.tar.zst"
if [ -f "$out" ]; then
	log "already built: $out (re-verifying)"
	"$CLUSTERCTL" bundle verify "$out" >&2
	echo "$out"; exit 0
fi

# --- fetch .debs, checking each against the SHA256 of Debian's Packages index -----------------
# fetch SUITE PKG VERSION -> prints the path of the .deb (checked against the index)
fetch() {
	local suite=$1 p=$2 v=$3 opts want f
	if [ "$suite" = trixie ]; then opts=("${T[@]}"); else opts=("${B[@]}"); fi
	want=$(apt-cache "${opts[@]}" show "$p=$v" | awk '/^SHA256:/{print $2; exit}')
	[ -n "$want" ] || die "no SHA256 for $p $v in the $suite Packages index"
	mkdir -p "$work/debs/$suite"
	f=$(find "$work/debs/$suite" -maxdepth 1 -name "${p}_*.deb" | while read -r c; do
		[ "$(dpkg-deb -f "$c" Version)" = "$v" ] && echo "$c"; done | head -1)
	if [ -z "$f" ]; then
		(cd "$work/debs/$suite" && apt-get -q "${opts[@]}" download "$p=$v" >&2)
		f=$(find "$work/debs/$suite" -maxdepth 1 -name "${p}_*.deb" | while read -r c; do
			[ "$(dpkg-deb -f "$c" Version)" = "$v" ] && echo "$c"; done | head -1)
	fi
	[ -n "$f" ] || die "download of $p $v failed"
	local got
	got=$(sha256sum "$f" | cut -d" " -f1)
	[ "$got" = "$want" ] || die "$f: sha256 $got, but Debian's $suite index says $want"
	echo "$f"
}

tsv="$work/lab-$key.tsv"
: >"$tsv"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$tsv"; }
glibc_max=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null | cut -d- -f1)
# check_bin FILE: libc-only dynamic (or static), newest GLIBC symbol <= this machine's (bookworm).
check_bin() {
	local f=$1 libs need
	libs=$(ldd "$f" 2>/dev/null | awk '{print $1}' | grep -v -E '^(linux-vdso|libc\.so\.6|/lib64/ld-linux-x86-64\.so\.2|not|statically)' || true)
	[ -z "$libs" ] || die "$f needs more than libc: $libs"
	need=$( (objdump -T "$f" 2>/dev/null || true) | (grep -o 'GLIBC_[0-9.]*' || true) | sed 's/GLIBC_//' | sort -uV | tail -1)
	if [ -n "$need" ] && [ "$(printf '%s\n%s\n' "$need" "$glibc_max" | sort -V | tail -1)" != "$glibc_max" ]; then
		die "$f needs GLIBC_$need, bookworm has $glibc_max"
	fi
}

# Extracted binaries: extract SUITE PKG PATH-IN-DEB NAME UPSTREAM-VERSION ROLES EXPECT-IN-VERSION-OUTPUT ARGS...
extract() {
	local suite=$1 p=$2 inpath=$3 name=$4 uver=$5 roles=$6 expect=$7; shift 7
	local v=${V[$suite/$p]} deb dir
	deb=$(fetch "$suite" "$p" "$v"); DEB_SHA=$(sha256sum "$deb" | cut -d" " -f1)
	dir="$work/bin/${p}_$v"
	[ -d "$dir" ] || { dpkg -x "$deb" "$dir.tmp" && mv "$dir.tmp" "$dir"; }
	check_bin "$dir/$inpath"
	vout=$("$dir/$inpath" "$@" 2>&1 || true)
	grep -q -- "$expect" <<<"$vout" || die "$dir/$inpath $*: does not report $expect"
	row "$name" "$uver" binary "$roles" "file://$dir/$inpath" "/usr/local/bin/$name" 0755 \
		"computed by tests/lab/build-bundle.sh from /$inpath of Debian $suite package $p $v (that .deb matched the $suite Packages index, sha256 $DEB_SHA)" -
}
uv() { echo "$1" | sed -E 's/^[0-9]+://; s/\+really/ /; s/.* //; s/[-+~].*//'; }
e34=$(uv "${V[bookworm/etcd-server]}"); e35=$(uv "${V[trixie/etcd-server]}"); kc=$(uv "${V[bookworm/kubernetes-client]}")
extract bookworm etcd-server usr/bin/etcd etcd "$e34" etcd "etcd Version: $e34" --version
extract bookworm etcd-client usr/bin/etcdctl etcdctl "$e34" etcd "etcdctl version: $e34" version
extract trixie etcd-server usr/bin/etcd etcd "$e35" etcd "etcd Version: $e35" --version
extract trixie etcd-client usr/bin/etcdctl etcdctl "$e35" etcd "etcdctl version: $e35" version
extract bookworm kubernetes-client usr/bin/kubectl kubectl "$kc" control-plane "v$kc" version --client

# Kubernetes server binaries from the cached source build; cross-checked against its BUILD-INFO.
kube_rows() {
	local bin=$1 ver=$2 note=$3 b sum src
	src=$(sed -n 's/^source: //p' "$bin/../BUILD-INFO")
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
		sum=$(sha256sum "$bin/$b" | cut -d' ' -f1)
		grep -q "^$sum  $b\$" "$bin/../BUILD-INFO" || die "$bin/$b does not match its BUILD-INFO"
		vout=$("$bin/$b" --version 2>&1 || true)
		grep -q "Kubernetes $ver" <<<"$vout" || die "$bin/$b --version is not $ver"
		case $b in kubelet | kube-proxy) r=control-plane,worker ;; *) r=control-plane ;; esac
		row "$b" "${ver#v}" binary "$r" "file://$bin/$b" "/usr/local/bin/$b" 0755 \
			"computed by tests/lab/build-bundle.sh from tests/lab/build-kubernetes.sh's build ($src); equals the sha256 in its BUILD-INFO" "$note"
	done
}
kube_rows "$kbin" v1.20.2 -
if [ -n "$kbin_re" ]; then
	kube_rows "$kbin_re" "$restamp" "RE-STAMPED BUILD: the unchanged v1.20.2 code built with KUBE_GIT_VERSION=$restamp (build-kubernetes.sh --stamp $restamp); only for exercising upgrade mechanics, not a real $restamp"
fi

# CNI plugins: a reproducible tar.gz of /usr/lib/cni from the Debian package, for /opt/cni/bin.
cv=${V[bookworm/containernetworking-plugins]}
cdeb=$(fetch bookworm containernetworking-plugins "$cv"); DEB_SHA=$(sha256sum "$cdeb" | cut -d" " -f1)
cdir="$work/bin/containernetworking-plugins_$cv"
[ -d "$cdir" ] || { dpkg -x "$cdeb" "$cdir.tmp" && mv "$cdir.tmp" "$cdir"; }
for f in "$cdir"/usr/lib/cni/*; do check_bin "$f"; done
ctar="$work/bin/cni-plugins_$cv.tar.gz"
if [ ! -f "$ctar" ]; then
	tar -C "$cdir/usr/lib/cni" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | gzip -n -9 >"$ctar.tmp"
	mv "$ctar.tmp" "$ctar"
fi
row cni-plugins "$(uv "$cv")" archive control-plane,worker "file://$ctar" /opt/cni/bin 0755 \
	"computed by tests/lab/build-bundle.sh: tar.gz (sorted, mtime 0, gzip -n) of /usr/lib/cni/* from Debian bookworm package containernetworking-plugins $cv (that .deb matched the bookworm Packages index, sha256 $DEB_SHA)" -

# .debs: the closure per role group; a package in both groups gets both groups' roles.
declare -A ROLES
while read -r p v; do ROLES["$p $v"]="lb"; done <"$work/lb.txt"
while read -r p v; do
	if [ -n "${ROLES["$p $v"]:-}" ]; then ROLES["$p $v"]="control-plane,worker,lb"; else ROLES["$p $v"]="control-plane,worker"; fi
done <"$work/node.txt"
# Dependencies first, the named packages last (dpkg -i of the whole set orders them anyway).
for pv in $(printf '%s\n' "${!ROLES[@]}" | tr ' ' '=' | sort); do
	p=${pv%%=*}; v=${pv#*=}
	case " haproxy keepalived $node_pkgs " in *" $p "*) continue ;; esac
	f=$(fetch bookworm "$p" "$v")
	row "$p" "$v" deb "${ROLES["$p $v"]}" "file://$f" - - \
		"Debian bookworm Packages index (SHA256 of ${p}_$v); checked against the downloaded .deb by tests/lab/build-bundle.sh" \
		"dependency not in a minbase bookworm host"
done
declare -A WHY=([iptables]="kube-proxy's iptables mode (and the CNI bridge plugin's masquerade rules)"
	[conntrack]="kube-proxy clears stale conntrack entries of UDP services with it"
	[ipset]="kube-proxy's ipvs mode")
# shellcheck disable=SC2086
for p in $node_pkgs haproxy keepalived; do
	v=$(awk -v p="$p" '$1==p{print $2}' "$work/lb.txt" "$work/node.txt" | head -1)
	f=$(fetch bookworm "$p" "$v")
	row "$p" "$v" deb "${ROLES["$p $v"]}" "file://$f" - - \
		"Debian bookworm Packages index (SHA256 of ${p}_$v); checked against the downloaded .deb by tests/lab/build-bundle.sh" "${WHY[$p]:--}"
done

manifest="$LAB_CACHE/bundles/lab-$key.yaml"
"$CLUSTERCTL" bundle gen-manifest --name lab --version "$key" --platform linux/amd64 \
	--description "clusterctl lab bundle from Debian packages (bookworm; etcd 3.5 from trixie) and Kubernetes v1.20.2 built from Debian's source; made by tests/lab/build-bundle.sh" \
	--items "$tsv" --out "$manifest"
start=$(date +%s)
"$CLUSTERCTL" bundle build --manifest "$manifest" --out "$out" --cache "$LAB_CACHE/downloads" >&2
log "built in $(($(date +%s) - start)) s; verifying"
"$CLUSTERCTL" bundle verify "$out" >&2
echo "$out"
