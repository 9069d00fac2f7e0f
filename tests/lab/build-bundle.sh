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
#   images (kind image; "docker save" tarballs by images/docker-save.py, plain tar, deterministic):
#     pause 3.2           k8s.gcr.io/pause:3.2            images/pause.c, gcc -static (control-plane,worker)
#     busybox 1.35.0      docker.io/library/busybox:1.35.0  bookworm busybox-static, /bin symlink per
#                                                         applet, Cmd sh (control-plane,worker; test workloads)
#     kube-apiserver-image, kube-controller-manager-image, kube-scheduler-image 1.20.2
#                         k8s.gcr.io/<name>:v1.20.2       the bundle's own binary (control-plane);
#                         with --restamped also at that version, from the re-stamped binary
#     etcd-image 3.4.23-0 k8s.gcr.io/etcd:3.4.23-0        bookworm etcd + its loader and libc from
#                                                         bookworm libc6 (etcd)
#     Image items have their own names (NAME-image): a pin like etcd=3.4.23 picks among items of one
#     name, so the binaries and their images must not share one.
#   crictl: absent (Debian bookworm and trixie have no cri-tools package).
#
# The extracted Debian binaries are dynamically linked against libc only (checked below, with
# their newest GLIBC symbol against bookworm's glibc), so they run on the lab's minimal hosts;
# runc and containerd come as .debs because runc also needs libseccomp2.
#
# Output: $CLUSTERCTL_CACHE/bundles/lab-<key>.tar.zst (default /var/cache/clusterctl), where
# <key> hashes every input (package versions, the Kubernetes build, these scripts, pause.c,
# docker-save.py, the gcc/libc6-dev/python3 used for the images), so a second run with the same
# inputs only re-verifies the bundle (~10 s). Inputs are cached in $CLUSTERCTL_CACHE/bundles/inputs
# (images/ holds the image tarballs, each keyed by what shapes its bytes).
# Needs root (apt, chroot for the image checks); installs gcc/libc6-dev/python3 if missing.
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

# One build at a time on a machine (tests/run.sh runs two lab tests at once, and both may ask
# for the bundle): the second waits, then finds it cached.
mkdir -p "$LAB_CACHE/bundles"
exec 9>"$LAB_CACHE/bundles/.build.lock"
flock 9

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
for p in etcd-server etcd-client kubernetes-client containernetworking-plugins busybox-static libc6; do V[bookworm/$p]=$(pkgver bookworm "$p"); done
for p in etcd-server etcd-client; do V[trixie/$p]=$(pkgver trixie "$p"); done
for k in "${!V[@]}"; do [ -n "${V[$k]}" ] && [ "${V[$k]}" != "(none)" ] || die "no candidate for $k"; done

# The images' tools, from the machine's bookworm (like prereqs.sh, installed when missing): gcc
# links the static pause against libc6-dev's libc.a; Debian's python3 (not whatever `python3`
# is first in PATH) runs docker-save.py. Their versions are part of the key: they shape the bytes.
tools=()
command -v gcc >/dev/null 2>&1 || tools+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || tools+=(libc6-dev)
[ -x /usr/bin/python3 ] || tools+=(python3)
if [ "${#tools[@]}" -gt 0 ]; then
	log "installing ${tools[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tools[@]}" >&2
fi
PY=/usr/bin/python3
toolchain=$(gcc --version | head -1; ld --version | head -1; "$PY" --version; dpkg-query -W libc6-dev)

key=$( {
	cat "$0" "$here/build-kubernetes.sh" "$here/apt-private.sh" "$here/images/pause.c" "$here/images/docker-save.py"
	echo "$toolchain"
	for k in $(printf '%s\n' "${!V[@]}" | sort); do echo "$k=${V[$k]}"; done
	cat "$work/lb.txt" "$work/node.txt" "$kbin/../BUILD-INFO"
	[ -z "$kbin_re" ] || cat "$kbin_re/../BUILD-INFO"
	# What `bundle build` does to items shapes the bundle's bytes too: a change here rebuilds.
	echo "bundle build: .debs stored with their xz members expanded (src/bundle/deb.rs)"
} | sha256sum | cut -c1-16)
out="$LAB_CACHE/bundles/lab-$key${restamp:+-restamped-$restamp}.tar.zst"
# The lab signs its bundles like a publisher would: clusterctl installs only a bundle whose
# signature verifies against the inventory's spec.bundle.publicKey (tests/common names this key).
signer="$LAB_CACHE/keys/lab-bundle"
if [ ! -f "$signer.key" ]; then
	mkdir -p "$LAB_CACHE/keys" && chmod 700 "$LAB_CACHE/keys"
	"$CLUSTERCTL" bundle keygen --out "$signer" >&2
fi
if [ -f "$out" ]; then
	log "already built: $out (re-verifying)"
	"$CLUSTERCTL" bundle verify --key "$signer.pub" "$out" >&2
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

# --- container images (kind image): "docker save" tarballs by images/docker-save.py -------------
# Plain tar, not gzip: the bundle is one zstd stream that compresses every blob anyway (a gzip
# inside would only cost build time and hide the bytes from zstd), and ctr imports either. Each
# tarball is cached in $work/images/ under a key of all that shapes its bytes, so a rebuild gives
# the same sha256. The references are what Kubernetes 1.20 asks for, but the bytes are the lab's.
mkdir -p "$work/images"
# check_image TAR EXPECT ARGV...: runs ARGV in a chroot of the image's layer; output must match EXPECT
# (EXPECT "@pause": must keep running until SIGTERM, then exit 0).
check_image() {
	local tar=$1 expect=$2 t vout; shift 2
	t=$(mktemp -d "$work/images/check.XXXXXX")
	mkdir "$t/outer" "$t/root"
	tar -xf "$tar" -C "$t/outer"
	tar -xf "$t/outer"/*/layer.tar -C "$t/root"
	if [ "$expect" = @pause ]; then
		timeout --preserve-status 1 chroot "$t/root" "$@" || { rm -rf "$t"; die "$tar: $* did not run until SIGTERM and exit 0"; }
	else
		vout=$(chroot "$t/root" "$@" 2>&1 || true)
		grep -qE -- "$expect" <<<"$vout" || { rm -rf "$t"; die "$tar: $* in the image gave: $vout"; }
	fi
	rm -rf "$t"
}
# image NAME VERSION REF ROLES HASH-SOURCE NOTE CHECK ENTRYPOINT [--cmd CMD] SPEC...
#   CHECK is "EXPECT|ARGV" (ARGV split on spaces) for check_image; SPEC as docker-save.py takes.
image() {
	local name=$1 ver=$2 ref=$3 roles=$4 hsrc=$5 note=$6 check=$7 entry=$8 cmdopt=() ikey out s
	shift 8
	if [ "${1:-}" = --cmd ]; then cmdopt=(--cmd "$2"); shift 2; fi
	ikey=$( {
		cat "$here/images/docker-save.py"; echo "$toolchain"
		printf '%s\n' "$ref" "$entry" "${cmdopt[@]}" "$@"
		for s in "$@"; do case $s in *'->'*) ;; *) sha256sum <"${s%%:*}" ;; esac; done
	} | sha256sum | cut -c1-16)
	out="$work/images/$name-$ver-$ikey.tar"
	if [ ! -f "$out" ]; then
		log "image $ref"
		"$PY" "$here/images/docker-save.py" "${cmdopt[@]}" "$out.tmp" "$ref" "$entry" "$@"
		# shellcheck disable=SC2086
		check_image "$out.tmp" "${check%%|*}" ${check#*|}
		mv "$out.tmp" "$out"
	fi
	row "$name" "$ver" image "$roles" "file://$out" "$ref" - "$hsrc" "$note"
}

# pause 3.2 (Kubernetes 1.20's sandbox image): images/pause.c, static, as /pause.
psum=$(sha256sum <"$here/images/pause.c" | cut -c1-64)
pbin="$work/images/pause-$(echo "$psum $toolchain" | sha256sum | cut -c1-16)"
if [ ! -f "$pbin" ]; then
	# From the source's own directory, so no path of this machine ends up in the binary.
	(cd "$here/images" && gcc -static -O2 -s -o "$pbin.tmp" pause.c)
	mv "$pbin.tmp" "$pbin"
fi
file "$pbin" | grep -q 'statically linked' || die "$pbin is not static"
image pause 3.2 k8s.gcr.io/pause:3.2 control-plane,worker \
	"computed by tests/lab/build-bundle.sh: docker-save.py of tests/lab/images/pause.c (sha256 $psum) built with gcc -static -O2 -s ($(gcc --version | head -1), $(dpkg-query -W libc6-dev | tr '\t' ' ')) as /pause" \
	"the lab's own pause (tests/lab/images/pause.c), not upstream's image; for containerd's sandbox_image, which Kubernetes 1.20 expects to be k8s.gcr.io/pause:3.2" \
	"@pause|/pause" /pause "$pbin:/pause:0755"

# busybox from Debian's busybox-static: /bin/busybox and a /bin symlink per applet, Cmd ["sh"]
# (no Entrypoint), as Docker's busybox image. Its wget segfaults (exit 139) when it must resolve a
# name through DNS (static glibc; by IP or an /etc/hosts name it works); nc fails cleanly instead.
bv=${V[bookworm/busybox-static]}
bdeb=$(fetch bookworm busybox-static "$bv"); BDEB_SHA=$(sha256sum "$bdeb" | cut -d" " -f1)
bdir="$work/bin/busybox-static_${bv//:/%3a}"
[ -d "$bdir" ] || { dpkg -x "$bdeb" "$bdir.tmp" && mv "$bdir.tmp" "$bdir"; }
file -L "$bdir/bin/busybox" | grep -q 'statically linked' || die "$bdir/bin/busybox is not static"
mapfile -t applets < <("$bdir/bin/busybox" --list | grep -vx busybox | sort -u)
[ "${#applets[@]}" -gt 100 ] && printf '%s\n' "${applets[@]}" | grep -qx sh && printf '%s\n' "${applets[@]}" | grep -qx httpd ||
	die "$bdir/bin/busybox --list lacks sh or httpd"
links=(); for a in "${applets[@]}"; do links+=("/bin/$a->busybox"); done
image busybox "$(uv "$bv")" "docker.io/library/busybox:$(uv "$bv")" control-plane,worker \
	"computed by tests/lab/build-bundle.sh: docker-save.py of /bin/busybox from Debian bookworm package busybox-static $bv (that .deb matched the bookworm Packages index, sha256 $BDEB_SHA), with a /bin symlink per applet (${#applets[@]})" \
	"lab test workload image (sh, nc, httpd, ...); its wget segfaults on a DNS name lookup (by IP it works): use nc; built from Debian's busybox-static, not Docker Hub's image" \
	"^/\$|/bin/sh -c pwd" - --cmd sh "$bdir/bin/busybox:/bin/busybox:0755" "${links[@]}"

# Static-pod control-plane images from the very binaries the bundle ships, each the only file.
ksrc=$(sed -n 's/^source: //p' "$kbin/../BUILD-INFO")
for b in kube-apiserver kube-controller-manager kube-scheduler; do
	file "$kbin/$b" | grep -q 'statically linked' || die "$kbin/$b is not static"
	image "$b-image" 1.20.2 "k8s.gcr.io/$b:v1.20.2" control-plane \
		"computed by tests/lab/build-bundle.sh: docker-save.py of tests/lab/build-kubernetes.sh's $b ($ksrc; sha256 $(sha256sum <"$kbin/$b" | cut -c1-64), as in its BUILD-INFO) as /usr/local/bin/$b" \
		"static-pod image built by the lab from the bundle's $b binary (its only file), not upstream's image" \
		"Kubernetes v1\\.20\\.2|/usr/local/bin/$b --version" "/usr/local/bin/$b" "$kbin/$b:/usr/local/bin/$b:0755"
done
# With --restamped, the same images of the re-stamped build: what a static-pods upgrade moves to.
if [ -n "$kbin_re" ]; then
	ksrc_re=$(sed -n 's/^source: //p' "$kbin_re/../BUILD-INFO")
	for b in kube-apiserver kube-controller-manager kube-scheduler; do
		file "$kbin_re/$b" | grep -q 'statically linked' || die "$kbin_re/$b is not static"
		image "$b-image" "${restamp#v}" "k8s.gcr.io/$b:$restamp" control-plane \
			"computed by tests/lab/build-bundle.sh: docker-save.py of tests/lab/build-kubernetes.sh --stamp $restamp's $b ($ksrc_re; sha256 $(sha256sum <"$kbin_re/$b" | cut -c1-64), as in its BUILD-INFO) as /usr/local/bin/$b" \
			"RE-STAMPED BUILD: static-pod image of the unchanged v1.20.2 code built with KUBE_GIT_VERSION=$restamp; only for exercising upgrade mechanics, not a real $restamp" \
			"Kubernetes ${restamp//./\\.}|/usr/local/bin/$b --version" "/usr/local/bin/$b" "$kbin_re/$b:/usr/local/bin/$b:0755"
	done
fi

# etcd 3.4.23-0 (the -0 as in upstream's etcd image tags) from bookworm's etcd-server. That etcd is
# a dynamic (cgo) binary needing only libc (check_bin above), so the image also holds glibc's
# loader and libc.so.6 from bookworm's libc6 .deb, at the paths the binary and the loader look in.
ev=${V[bookworm/etcd-server]}; edir="$work/bin/etcd-server_$ev"
EDEB_SHA=$(sha256sum "$(fetch bookworm etcd-server "$ev")" | cut -d" " -f1)
lv=${V[bookworm/libc6]}
ldeb=$(fetch bookworm libc6 "$lv"); LDEB_SHA=$(sha256sum "$ldeb" | cut -d" " -f1)
ldir="$work/bin/libc6_${lv//:/%3a}"
[ -d "$ldir" ] || { dpkg -x "$ldeb" "$ldir.tmp" && mv "$ldir.tmp" "$ldir"; }
ml=lib/x86_64-linux-gnu
for f in "$ml/ld-linux-x86-64.so.2" "$ml/libc.so.6"; do [ -f "$ldir/$f" ] && [ ! -L "$ldir/$f" ] || die "$ldir/$f: not a file"; done
[ "$(readelf -l "$edir/usr/bin/etcd" | sed -n 's/.*interpreter: \(.*\)]/\1/p')" = /lib64/ld-linux-x86-64.so.2 ] || die "etcd's interpreter is not /lib64/ld-linux-x86-64.so.2"
image etcd-image "$e34-0" "k8s.gcr.io/etcd:$e34-0" etcd \
	"computed by tests/lab/build-bundle.sh: docker-save.py of /usr/bin/etcd from Debian bookworm package etcd-server $ev (that .deb matched the bookworm Packages index, sha256 $EDEB_SHA) as /usr/local/bin/etcd, with /$ml/ld-linux-x86-64.so.2 (and /lib64's symlink to it) and /$ml/libc.so.6 from Debian bookworm package libc6 $lv (that .deb matched the bookworm Packages index, sha256 $LDEB_SHA)" \
	"static-pod image built by the lab from Debian's etcd $e34 (the bundle's etcd binary) plus the loader and libc it links against, not upstream's image" \
	"etcd Version: $e34|/usr/local/bin/etcd --version" /usr/local/bin/etcd \
	"$edir/usr/bin/etcd:/usr/local/bin/etcd:0755" "$ldir/$ml/ld-linux-x86-64.so.2:/$ml/ld-linux-x86-64.so.2:0755" \
	"$ldir/$ml/libc.so.6:/$ml/libc.so.6:0755" "/lib64/ld-linux-x86-64.so.2->../$ml/ld-linux-x86-64.so.2"

manifest="$LAB_CACHE/bundles/lab-$key.yaml"
"$CLUSTERCTL" bundle gen-manifest --name lab --version "$key" --platform linux/amd64 \
	--description "clusterctl lab bundle from Debian packages (bookworm; etcd 3.5 from trixie) and Kubernetes v1.20.2 built from Debian's source; made by tests/lab/build-bundle.sh" \
	--items "$tsv" --out "$manifest"
start=$(date +%s)
"$CLUSTERCTL" bundle build --manifest "$manifest" --out "$out" --cache "$LAB_CACHE/downloads" --key "$signer.key" >&2
log "built in $(($(date +%s) - start)) s; verifying"
"$CLUSTERCTL" bundle verify --key "$signer.pub" "$out" >&2
echo "$out"
