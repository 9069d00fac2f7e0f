#!/usr/bin/env bash
# Prints the path of a containerd 2.x binary (Debian sid's package, unpacked under the cache):
# tests/containerd_config.rs starts it with the config clusterctl renders for the minors whose
# bundles ship containerd 2.x and reads back `containerd config dump`. Nothing is installed
# on the machine: `apt-get download` + `dpkg -x` into the cache, keyed by the package version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/apt-private.sh"
apt_private sid deb
# The whole output is read (no early exit in the pipe: pipefail would see apt-cache's SIGPIPE).
ver=$(apt-cache "${APT_PRIV[@]}" show containerd 2>/dev/null | sed -n 's/^Version: //p')
ver=${ver%%$'\n'*}
[ -n "$ver" ] || { echo "containerd: no version in Debian sid's lists" >&2; exit 1; }
out="$LAB_CACHE/containerd2/$ver"
if [ ! -x "$out/usr/bin/containerd" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && apt-get -q "${APT_PRIV[@]}" download "containerd=$ver" >&2)
	mkdir -p "$out.partial"
	dpkg -x "$tmp"/containerd_*.deb "$out.partial"
	rm -rf "$out"
	mv "$out.partial" "$out"
fi
"$out/usr/bin/containerd" --version >&2
echo "$out/usr/bin/containerd"
