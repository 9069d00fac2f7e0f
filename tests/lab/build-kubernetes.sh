#!/usr/bin/env bash
# Builds the Kubernetes v1.20.2 server binaries from Debian bookworm's `kubernetes` source package,
# following ../shared/lab-notes.md (reflect2 swapped for 1.0.2, CGO_ENABLED=0, Debian's GOPATH
# layout). The result is cached outside the checkout, keyed by the source package version, so a
# machine pays the ~10 minutes once:
#   $CLUSTERCTL_CACHE/kubernetes/<source-version>[-<stamp>]/bin/{kube-apiserver,...}
# Usage: build-kubernetes.sh [--stamp vX.Y.Z]   (prints the bin directory on stdout)
# --stamp sets KUBE_GIT_VERSION: the SAME v1.20.2 code with another version string, for exercising
# upgrade mechanics only. Such a build is labelled "restamped" in its directory name and its
# BUILD-INFO file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/apt-private.sh"

stamp=""
if [ "${1:-}" = "--stamp" ]; then stamp=${2:?--stamp needs a version like v1.20.3}; fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need go || ! need rsync || ! need dpkg-source; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go rsync dpkg-dev >&2
fi

apt_private bookworm deb-src
srcver=$(apt-cache "${APT_PRIV[@]}" showsrc kubernetes | awk '/^Version:/{print $2; exit}')
[ -n "$srcver" ] || { echo "build-kubernetes: cannot find the kubernetes source package in bookworm" >&2; exit 1; }
key="$srcver"
[ -n "$stamp" ] && key="$srcver-restamped-$stamp"
out="$LAB_CACHE/kubernetes/$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

if [ -f "$out/BUILD-INFO" ]; then echo "$out/bin"; exit 0; fi

work="$LAB_CACHE/kubernetes/.work-$key"
rm -rf "$work"; mkdir -p "$work"
cd "$work"
echo "build-kubernetes: fetching source $srcver" >&2
apt-get -q "${APT_PRIV[@]}" source --download-only "kubernetes=$srcver" >&2
orig=$(ls kubernetes_*.orig.tar.* | head -1)
mkdir tree && tar -xf "$orig" -C tree --strip-components=1

# reflect2 1.0.1 (vendored) is broken with Go >= 1.18: use Debian's 1.0.2 sources.
apt-get -q download golang-github-modern-go-reflect2-dev >&2
dpkg -x golang-github-modern-go-reflect2-dev_*.deb r2
r2src=$(find r2 -type d -path '*github.com/modern-go/reflect2' | head -1)
rm -rf tree/vendor/github.com/modern-go/reflect2
mkdir -p tree/vendor/github.com/modern-go/reflect2
cp -a "$r2src"/. tree/vendor/github.com/modern-go/reflect2/
rm -f tree/vendor/github.com/modern-go/reflect2/go.mod

mkdir -p .go/src/k8s.io
ln -s "$work/tree" .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
export GOPATH="$work/.go" GOCACHE="$work/.gocache" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0
unset GOFLAGS
export GO111MODULE=auto
if [ -n "$stamp" ]; then
	# The orig tarball is a `git archive`: hack/lib/version.sh then takes the version from the
	# archive's expanded tag and overrides a KUBE_GIT_VERSION from the environment (a first
	# --stamp build came out as v1.20.2). A version file is read before that and wins.
	commit=$(grep -oE "KUBE_GIT_COMMIT='[0-9a-f]{40}'" hack/lib/version.sh | head -1 | cut -d"'" -f2)
	vf="$work/version-defs"
	{
		echo "KUBE_GIT_COMMIT='${commit:-unknown}'"
		echo "KUBE_GIT_TREE_STATE='clean'"
		echo "KUBE_GIT_VERSION='$stamp'"
		echo "KUBE_GIT_MAJOR='$(echo "${stamp#v}" | cut -d. -f1)'"
		echo "KUBE_GIT_MINOR='$(echo "${stamp#v}" | cut -d. -f2)'"
	} >"$vf"
	export KUBE_GIT_VERSION_FILE="$vf"
else
	export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean
fi
echo "build-kubernetes: make (this takes ~10 min on 2 cores)" >&2
start=$(date +%s)
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" >&2
mkdir -p "$out/bin"
want=${stamp:-v1.20.2}
for b in "${bins[@]}"; do
	got=$("_output/bin/$b" --version 2>&1 | head -1)
	[ "$got" = "Kubernetes $want" ] || { echo "build-kubernetes: _output/bin/$b reports '$got', not Kubernetes $want" >&2; exit 1; }
done
for b in "${bins[@]}"; do install -m 0755 "_output/bin/$b" "$out/bin/$b"; done
{
	echo "source: Debian bookworm source package kubernetes $srcver (upstream v1.20.2 tree)"
	echo "built: $(date -u +%FT%TZ) in $(( $(date +%s) - start )) s with $(go version)"
	if [ -n "$stamp" ]; then
		echo "RESTAMPED: KUBE_GIT_VERSION=$stamp on unchanged v1.20.2 code (for upgrade mechanics only)"
	else
		echo "version: v1.20.2"
	fi
	(cd "$out/bin" && sha256sum "${bins[@]}")
} >"$out/BUILD-INFO"
cd /; rm -rf "$work"
echo "$out/bin"
