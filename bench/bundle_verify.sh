#!/usr/bin/env bash
# Benchmark: `clusterctl bundle verify` on a ~400 MB bundle, against the machine's own
# baselines for the same bytes (sha256sum of the file; zstd -dc piped into sha256sum).
# Not a timed test: it prints figures.
#
# Usage: bench/bundle_verify.sh [BUNDLE]
#   Without BUNDLE it builds a 400 MB bundle of incompressible (random) blobs, so the bundle file
#   itself is ~400 MB; that is the worst case per byte (every byte is decoded and hashed).
# Env: CLUSTERCTL (default: target/release/clusterctl, built if missing), RUNS (default 3),
#      BENCH_DIR (default /var/cache/clusterctl/bench/bundle).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
dir=${BENCH_DIR:-/var/cache/clusterctl/bench/bundle}
if [ -z "${CLUSTERCTL:-}" ]; then
	(cd "$repo" && cargo build --release -q --bin clusterctl)
	CLUSTERCTL="$repo/target/release/clusterctl"
fi
bundle=${1:-}
if [ -z "$bundle" ]; then
	mkdir -p "$dir/blobs"
	bundle="$dir/random-400MB.tar.zst"
	if [ ! -f "$bundle" ]; then
		: >"$dir/items.tsv"
		for i in $(seq 1 8); do
			f="$dir/blobs/blob$i"
			[ -f "$f" ] || head -c 50000000 /dev/urandom >"$f"
			printf 'blob%s\t1\tbinary\tall\tfile://%s\t/usr/local/bin/blob%s\t0755\trandom bytes for the benchmark\t-\n' "$i" "$f" "$i" >>"$dir/items.tsv"
		done
		"$CLUSTERCTL" bundle gen-manifest --name bench --version 1 --items "$dir/items.tsv" --out "$dir/manifest.yaml"
		"$CLUSTERCTL" bundle build --manifest "$dir/manifest.yaml" --out "$bundle" --cache "$dir/cache" >/dev/null
	fi
fi
size=$(stat -c %s "$bundle")
echo "bundle: $bundle ($((size / 1000000)) MB); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
cat "$bundle" >/dev/null # warm the page cache: measure decode + hash, not the disk
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
mbps() { echo "scale=0; $size / 1000000 / $1" | bc; }
for r in $(seq 1 "$runs"); do
	t=$(secs "$CLUSTERCTL" bundle verify "$bundle")
	echo "run $r: clusterctl bundle verify: ${t} s = $(mbps "$t") MB/s of bundle"
done
t=$(secs sha256sum "$bundle")
echo "baseline: sha256sum of the bundle file:         ${t} s = $(mbps "$t") MB/s"
t=$(secs sh -c "zstd -dc '$bundle' | sha256sum")
echo "baseline: zstd -dc | sha256sum (two processes): ${t} s = $(mbps "$t") MB/s"
"$CLUSTERCTL" bundle verify "$bundle"
