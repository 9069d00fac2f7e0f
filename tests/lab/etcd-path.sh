#!/usr/bin/env bash
# Prints the path of the etcd 3.4 server binary the lab bundle is made from: Debian bookworm's
# etcd-server, which build-bundle.sh fetches, checks against Debian's index and extracts under
# $CLUSTERCTL_CACHE/bundles/inputs/bin/. On a fresh machine (nothing extracted yet) it runs
# build-bundle.sh first, so that logic lives in one place.
# Env: CLUSTERCTL, CLUSTERCTL_CACHE as for build-bundle.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${CLUSTERCTL_CACHE:-/var/cache/clusterctl}
find_etcd() {
	find "$cache/bundles/inputs/bin" -maxdepth 4 -path '*/etcd-server_3.4.*/usr/bin/etcd' -type f 2>/dev/null | sort -V | tail -1
}
e=$(find_etcd)
if [ -z "$e" ]; then
	echo "etcd-path: no extracted etcd yet: running build-bundle.sh" >&2
	"$here/build-bundle.sh" >/dev/null
	e=$(find_etcd)
fi
[ -n "$e" ] && [ -x "$e" ] || { echo "etcd-path: no etcd 3.4 under $cache/bundles/inputs/bin" >&2; exit 1; }
echo "$e"
