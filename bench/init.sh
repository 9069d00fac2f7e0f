#!/usr/bin/env bash
# Benchmark (not a timed test): `clusterctl init` of an HA cluster on N fresh lab hosts (h1..h3
# etcd + control plane behind a keepalived VIP, the rest workers; the lab bundle: etcd 3.4.23,
# Kubernetes v1.20.2), R times, each on newly booted hosts; then the same init again (the
# re-run, which must change nothing). Per run: wall time, seconds per phase, bytes clusterctl
# reports sent, and bytes that left the machine onto the lab bridge during the init (the
# bridge's tx counter: what the operator's link carried, SSH framing included).
#
# Usage: lab-slot bench/init.sh [--hosts 5] [--runs 3] [--label NAME] [--shape RATE]
#   --shape RATE: the machine's link to the lab bridge (operator -> hosts) is shaped with tc
#   (tbf, e.g. 200mbit), like an operator's uplink.
# Env:   CLUSTERCTL=path to the clusterctl to measure (default: a release build of this tree),
#        LAB=lab name (default "binit").
# Results: bench/results/init-<UTC date>-<label>/runs.jsonl and summary.md (medians).
set -euo pipefail
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lab=${LAB:-binit}
hosts=5
runs=3
label=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo tree)
shape=
while [ $# -gt 0 ]; do
	case "$1" in
	--hosts) hosts=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--label) label=$2; shift 2 ;;
	--shape) shape=$2; shift 2 ;;
	*) sed -n '9,14p' "$0" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench: must run as root (the lab)" >&2; exit 1; }
[ "$hosts" -ge 3 ] || { echo "bench: need at least 3 hosts" >&2; exit 2; }
log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -z "${CLUSTERCTL:-}" ]; then
	(cd "$root" && cargo build --release -q --bin clusterctl) >&2
	CLUSTERCTL=${CARGO_TARGET_DIR:-$root/target}/release/clusterctl
fi
export CLUSTERCTL
bundle=$(bash "$root/tests/lab/build-bundle.sh" | tail -1)
out="$root/bench/results/init-$(date -u +%Y%m%dT%H%M%SZ)-$label"
mkdir -p "$out"
{
	date -u
	uname -r
	nproc
	"$CLUSTERCTL" --version 2>/dev/null || true
	echo "bundle: $bundle"
	echo "hosts: $hosts, runs: $runs, clusterctl: $CLUSTERCTL, link shaped: ${shape:-no}"
} >"$out/env.txt"

d=/var/lib/clusterctl-lab/$lab
trap 'bash "$root/tests/lab/lab.sh" down "$lab" >/dev/null 2>&1 || true' EXIT
for run in $(seq 1 "$runs"); do
	log "run $run/$runs: $hosts fresh hosts"
	bash "$root/tests/lab/lab.sh" down "$lab" >/dev/null 2>&1 || true
	LAB_PROFILE=k8s bash "$root/tests/lab/lab.sh" up "$lab" "$hosts" >/dev/null
	# shellcheck disable=SC1091
	. "$d/env"
	inv=$d/inventory-ha.yaml
	cp "$d/inventory.yaml" "$inv"
	cat >>"$inv" <<YAML
  ha:
    mode: vip
    vip: { address: 10.77.$LAB_SUBNET.100, interface: eth0 }
  bundle: { path: $bundle, publicKey: $(dirname "$(dirname "$bundle")")/keys/lab-bundle.pub }
  etcd:
    version: "3.4.23"
YAML
	if [ -n "$shape" ]; then
		# Egress of the bridge device = what the machine (the operator) sends to the hosts.
		tc qdisc replace dev "$LAB_BRIDGE" root tbf rate "$shape" burst 256kb latency 100ms
	fi
	tx=/sys/class/net/$LAB_BRIDGE/statistics/tx_bytes
	load=$(cut -d' ' -f1 /proc/loadavg)
	tx0=$(cat "$tx")
	t0=$(date +%s.%N)
	"$CLUSTERCTL" -i "$inv" -o json init >"$out/run$run-init.json" 2>"$out/run$run-init.log"
	t1=$(date +%s.%N)
	tx1=$(cat "$tx")
	"$CLUSTERCTL" -i "$inv" -o json init >"$out/run$run-rerun.json" 2>"$out/run$run-rerun.log"
	t2=$(date +%s.%N)
	tx2=$(cat "$tx")
	python3 - "$out" "$run" "$hosts" "$load" "$t0" "$t1" "$t2" "$tx0" "$tx1" "$tx2" "$shape" >>"$out/runs.jsonl" <<'PY'
import json, sys
out, run, hosts, load, t0, t1, t2, tx0, tx1, tx2 = sys.argv[1:11]
def summary(path):
    r = json.load(open(path))
    phases, sent = {}, 0
    for p in r["phases"]:
        phases[p["phase"]] = round(p["seconds"], 2)
        for h in p["hosts"].values():
            sent += h.get("bytes_sent", 0)
    return phases, sent
phases, sent = summary(f"{out}/run{run}-init.json")
_, resent = summary(f"{out}/run{run}-rerun.json")
print(json.dumps({"run": int(run), "hosts": int(hosts), "load1": float(load), "shape": sys.argv[11] or None,
    "init_s": round(float(t1) - float(t0), 2), "phases": phases, "bytes_sent": sent,
    "wire_tx_bytes": int(tx1) - int(tx0), "rerun_s": round(float(t2) - float(t1), 2),
    "rerun_bytes_sent": resent, "rerun_wire_tx_bytes": int(tx2) - int(tx1)}))
PY
	log "run $run: $(tail -1 "$out/runs.jsonl")"
	bash "$root/tests/lab/lab.sh" down "$lab" >/dev/null
done
python3 - "$out/runs.jsonl" >"$out/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: statistics.median(xs)
print(f"{len(rows)} run(s) of init on {rows[0]['hosts']} fresh hosts; medians (single runs in brackets)\n")
print("| measure | median | runs |\n|---|---:|---|")
def row(name, xs, fmt):
    print(f"| {name} | {fmt(med(xs))} | {' / '.join(fmt(x) for x in xs)} |")
s = lambda x: f"{x:.1f} s"
mb = lambda x: f"{x / 1e6:.0f} MB"
row("init", [r["init_s"] for r in rows], s)
for p in rows[0]["phases"]:
    row(f"  {p}", [r["phases"].get(p, 0) for r in rows], s)
row("bytes sent (clusterctl's count)", [r["bytes_sent"] for r in rows], mb)
row("bytes onto the lab bridge", [r["wire_tx_bytes"] for r in rows], mb)
row("re-run", [r["rerun_s"] for r in rows], s)
row("re-run bytes sent", [r["rerun_bytes_sent"] for r in rows], mb)
row("load average at start", [r["load1"] for r in rows], lambda x: f"{x:.1f}")
PY
cat "$out/summary.md"
log "results: $out"
