#!/usr/bin/env bash
# Benchmark (not a timed test): `clusterctl init` of an HA cluster on N fresh lab hosts (h1..h3
# etcd + control plane behind a keepalived VIP, the rest workers; the lab bundle: etcd 3.4.23,
# Kubernetes v1.20.2), R times, each on newly booted hosts; then the same init again (the
# re-run, which must change nothing). Per run: wall time, seconds per phase, bytes clusterctl
# reports sent, and bytes that left the machine onto the lab bridge during the init (the
# bridge's tx counter: what the operator's link carried, SSH framing included).
#
# Usage: lab-slot bench/init.sh [--hosts 5] [--runs 3] [--label NAME] [--shape RATE] [--join J]
#                               [--peer-copy S]
#   --shape RATE: the machine's link to the lab bridge (operator -> hosts) is shaped with tc
#   (tbf, e.g. 200mbit), like an operator's uplink.
#   --peer-copy S: the inventory sets spec.ssh.peerCopy.seeds: S (bundle items go from the
#   operator to S hosts, the others fetch them from those); default: no peer copy.
#   --join J: `init` on the first N-J hosts only, then `join` of the last J workers into the
#   running cluster, measured the same way.
# clusterctl's peak memory (RSS) is reported for each measured command.
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
join=0
peer_copy=0
while [ $# -gt 0 ]; do
	case "$1" in
	--hosts) hosts=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--label) label=$2; shift 2 ;;
	--shape) shape=$2; shift 2 ;;
	--join) join=$2; shift 2 ;;
	--peer-copy) peer_copy=$2; shift 2 ;;
	*) sed -n '9,20p' "$0" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench: must run as root (the lab)" >&2; exit 1; }
[ "$hosts" -ge 3 ] || { echo "bench: need at least 3 hosts" >&2; exit 2; }
[ "$join" -le $((hosts - 3)) ] || { echo "bench: --join takes workers only (at most N-3)" >&2; exit 2; }
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
	echo "hosts: $hosts (joined later: $join), runs: $runs, clusterctl: $CLUSTERCTL, link shaped: ${shape:-no}, peer-copy seeds: $peer_copy"
} >"$out/env.txt"

# measured BASE INVENTORY COMMAND: runs `clusterctl -i INVENTORY -o json COMMAND` (BASE.json,
# BASE.log) under a wrapper that reads its peak resident memory (getrusage), and records in
# BASE.measure its wall time, that memory and the bytes that left the machine onto the lab
# bridge meanwhile (the bridge's tx counter: what the operator's link carried). Fails as the
# command fails.
# Every 0.5 s it also samples where the machine's CPU time goes (BASE.cpu, one JSON line per
# sample, cumulative CPU-seconds since the start): the whole machine (/proc/stat, all but idle
# and iowait), each lab host (its cpuacct cgroup, which holds the host and everything in it)
# and clusterctl itself (/proc/PID/stat). On a 2-core machine, a phase whose busy time is ~2
# CPU-s per second is bound by the CPU, not by waiting.
measured() {
	python3 - "$1" "$tx" "$lab" "$CLUSTERCTL" -i "$2" -o json "$3" <<'PY'
import glob, json, os, resource, subprocess, sys, threading, time
base, tx, lab = sys.argv[1], sys.argv[2], sys.argv[3]
wire = lambda: int(open(tx).read())
hz = os.sysconf("SC_CLK_TCK")
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / hz
# Each host's cgroup (tests/lab/lab.sh): cgroup v1's cpuacct hierarchy, or the unified one.
cgs = {p.rsplit("-", 1)[1]: p for p in glob.glob(f"/sys/fs/cgroup/cpuacct/clusterctl-lab/{lab}-h*")}
v2 = not cgs
if v2:
    cgs = {p.rsplit("-", 1)[1]: p for p in glob.glob(f"/sys/fs/cgroup/clusterctl-lab/{lab}-h*")}
def usage(p):  # CPU-seconds
    if not v2:
        return int(open(p + "/cpuacct.usage").read()) / 1e9
    for line in open(p + "/cpu.stat"):
        k, v = line.split()
        if k == "usage_usec":
            return int(v) / 1e6
    raise OSError("no usage_usec")
def hosts():
    out = {}
    for h, p in cgs.items():
        try:
            out[h] = usage(p)
        except OSError:
            pass
    return out
def own(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / hz
    except (OSError, IndexError):
        return None
w0, t0, b0, h0 = wire(), time.monotonic(), busy(), hosts()
child = subprocess.Popen(sys.argv[4:], stdin=subprocess.DEVNULL, stdout=open(base + ".json", "w"),
    stderr=open(base + ".log", "w"))
def sample(cpu):
    h = hosts()
    row = {"t": round(time.monotonic() - t0, 2), "machine": round(busy() - b0, 2),
        "hosts": {k: round(v - h0.get(k, 0), 2) for k, v in h.items()}}
    c = own(child.pid)
    if c is not None:  # once it has exited, its last reading stands
        sample.clusterctl = round(c, 2)
    row["clusterctl"] = sample.clusterctl
    cpu.write(json.dumps(row) + "\n")
sample.clusterctl = 0.0
done = threading.Event()
def sampler():
    with open(base + ".cpu", "w") as cpu:
        while not done.wait(0.5):
            sample(cpu)
        sample(cpu)
th = threading.Thread(target=sampler)
th.start()
rc = child.wait()
done.set()
th.join()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"seconds": round(time.monotonic() - t0, 2), "wire_tx_bytes": wire() - w0,
    "maxrss_kib": ru.ru_maxrss, "clusterctl_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
    "machine_busy_cpu_s": round(busy() - b0, 2), "exit": rc},
    open(base + ".measure", "w"))
sys.exit(rc)
PY
}

# settle: waits (at most 90 s) until the machine's CPUs are less than 15 % busy over 2 s, so a
# run does not pay for the teardown of the lab before it (stopping 5 hosts keeps a core busy
# for ~20 s after `lab.sh down` returns). Logs how long it waited.
settle() {
	local t0=$SECONDS a b busy total
	while :; do
		read -ra a < <(head -1 /proc/stat)
		sleep 2
		read -ra b < <(head -1 /proc/stat)
		total=0
		for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
		busy=$((100 * (total - (b[4] - a[4]) - (b[5] - a[5])) / (total > 0 ? total : 1)))
		if [ "$busy" -lt 15 ] || [ $((SECONDS - t0)) -ge 90 ]; then break; fi
	done
	log "machine settled: ${busy}% busy after $((SECONDS - t0)) s"
}

# idle_busy: how many of the machine's cores the cluster keeps busy when nothing is being done
# to it (CPU-seconds per second over 20 s, right after the re-run): what the running kubelets,
# kube-proxies, containerds and control plane cost while an `init` waits on them.
idle_busy() {
	local a b
	read -ra a < <(head -1 /proc/stat)
	sleep 20
	read -ra b < <(head -1 /proc/stat)
	python3 -c 'import os, sys
a, b = (list(map(int, x.split()[1:9])) for x in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
print(round((sum(d) - d[3] - d[4]) / os.sysconf("SC_CLK_TCK") / 20, 2))' "${a[*]}" "${b[*]}"
}

# A host far slower than the others in the kubelet or kube-proxy phase (its time > the
# phase's median + 5 s, from the init log's per-host "[N.Ns]") may be waiting on something:
# its unit's journal is kept beside the results (run<R>-slow-<phase>-<host>.journal) before
# the lab goes. In 3 of 18 50-host runs one kube-proxy took 20-27 s longer than the median host.
keep_slow_journals() { # keep_slow_journals RUN
	local phase host
	python3 - "$out/run$1-init.log" <<'PY' |
import re, statistics, sys
seen = {}
for line in open(sys.argv[1]):
    m = re.match(r"^\S+ (kubelet|kube-proxy) (h\d+): .*\[([\d.]+)s\]$", line.rstrip())
    if m:
        seen.setdefault(m[1], {})[m[2]] = float(m[3])
for phase, by_host in seen.items():
    host, worst = max(by_host.items(), key=lambda kv: kv[1])
    if worst > statistics.median(by_host.values()) + 5:
        print(phase, host)
PY
	while read -r phase host; do
		log "run $1: $host was the slowest in $phase by more than 5 s; keeping its journal"
		bash "$root/tests/lab/lab.sh" exec "$lab" "$host" -- \
			journalctl -u "$phase" -o short-precise --no-pager 2>&1 | tail -n 3000 \
			>"$out/run$1-slow-$phase-$host.journal" || true
	done
}

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
	if [ "$peer_copy" -gt 0 ]; then
		sed -i "s/^    knownHostsFile: .*/&\n    peerCopy: { seeds: $peer_copy }/" "$inv"
		grep -q "peerCopy: { seeds: $peer_copy }" "$inv" || { echo "bench: no spec.ssh to set peerCopy in" >&2; exit 1; }
	fi
	if [ -n "$shape" ]; then
		# Egress of the bridge device = what the machine (the operator) sends to the hosts.
		tc qdisc replace dev "$LAB_BRIDGE" root tbf rate "$shape" burst 256kb latency 100ms
	fi
	tx=/sys/class/net/$LAB_BRIDGE/statistics/tx_bytes
	# init on all hosts but the last $join (workers), which join afterwards.
	init_inv=$inv
	if [ "$join" -gt 0 ]; then
		init_inv=$d/inventory-init.yaml
		grep -vE "^    - \{ name: h($(seq -s '|' $((hosts - join + 1)) "$hosts")), " "$inv" >"$init_inv"
	fi
	settle
	load=$(cut -d' ' -f1 /proc/loadavg)
	measured "$out/run$run-init" "$init_inv" init
	measured "$out/run$run-rerun" "$init_inv" init
	idle_cores=$(idle_busy)
	keep_slow_journals "$run"
	if [ "$join" -gt 0 ]; then
		measured "$out/run$run-join" "$inv" join
	fi
	python3 - "$out" "$run" "$hosts" "$join" "$load" "$shape" "$peer_copy" "$idle_cores" >>"$out/runs.jsonl" <<'PY'
import json, sys
out, run, hosts, join, load, shape, peer_copy, idle_cores = sys.argv[1:9]
CONTROL_PLANE = {"h1", "h2", "h3"}
def cpu_by_phase(name, phases, wall):
    """CPU-seconds spent during each phase (windows from the phases' durations, laid end to end
    so that they end when the run ends: the start of a run, before its first phase, is left
    out): the whole machine, the control-plane hosts, the workers and clusterctl itself."""
    samples = [json.loads(l) for l in open(f"{out}/run{run}-{name}.cpu") if l.strip()]
    if not samples:
        return {}
    def at(t):  # the last sample at or before t (the first one when t is before it)
        best = samples[0]
        for s in samples:
            if s["t"] <= t:
                best = s
        return best
    def parts(s):
        cp = sum(v for h, v in s["hosts"].items() if h in CONTROL_PLANE)
        workers = sum(v for h, v in s["hosts"].items() if h not in CONTROL_PLANE)
        return {"machine": s["machine"], "control_plane_hosts": cp, "workers": workers,
            "clusterctl": s.get("clusterctl", 0)}
    t = wall - sum(phases.values())
    out_ = {}
    for p, secs in phases.items():
        a, b = parts(at(t)), parts(at(t + secs))
        out_[p] = {k: round(b[k] - a[k], 1) for k in a}
        t += secs
    return out_
def measured(name):
    """(wall s, phases, clusterctl's bytes sent, bytes onto the bridge, peak RSS MiB) of a run."""
    base = f"{out}/run{run}-{name}"
    r = json.load(open(base + ".json"))
    phases, sent, peers = {}, 0, 0
    for p in r["phases"]:
        phases[p["phase"]] = round(p["seconds"], 2)
        for h in p["hosts"].values():
            sent += h.get("bytes_sent", 0)
            peers += h.get("bytes_from_peers", 0)
    m = json.load(open(base + ".measure"))
    measured.peers = peers
    return m["seconds"], phases, sent, m["wire_tx_bytes"], round(m["maxrss_kib"] / 1024, 1)
init_s, phases, sent, wire, rss = measured("init")
from_peers = measured.peers
m = json.load(open(f"{out}/run{run}-init.measure"))
cpu = {"machine_busy_cpu_s": m.get("machine_busy_cpu_s"), "clusterctl_cpu_s": m.get("clusterctl_cpu_s"),
    "phases": cpu_by_phase("init", phases, init_s), "idle_cluster_busy_cores": float(idle_cores)}
rerun_s, _, resent, rewire, _ = measured("rerun")
row = {"run": int(run), "hosts": int(hosts) - int(join), "load1": float(load), "shape": shape or None,
    "peer_copy_seeds": int(peer_copy),
    "init_s": init_s, "phases": phases, "bytes_sent": sent, "bytes_from_peers": from_peers,
    "wire_tx_bytes": wire,
    "clusterctl_max_rss_mib": rss, "rerun_s": rerun_s, "rerun_bytes_sent": resent,
    "rerun_wire_tx_bytes": rewire, "cpu": cpu}
if int(join) > 0:
    s, ph, b, w, m = measured("join")
    row.update({"joined": int(join), "join_s": s, "join_phases": ph, "join_bytes_sent": b,
        "join_wire_tx_bytes": w, "join_max_rss_mib": m})
print(json.dumps(row))
PY
	log "run $run: $(tail -1 "$out/runs.jsonl")"
	bash "$root/tests/lab/lab.sh" down "$lab" >/dev/null
done
python3 - "$out/runs.jsonl" >"$out/summary.md" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda xs: statistics.median(xs)
print(f"{len(rows)} run(s) of init on {rows[0]['hosts']} fresh hosts, link shaped: {rows[0]['shape'] or 'no'}, peer-copy seeds: {rows[0].get('peer_copy_seeds', 0)}; medians (each run after the slash)\n")
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
row("bytes the hosts fetched from peers", [r.get("bytes_from_peers", 0) for r in rows], mb)
row("clusterctl's peak memory (RSS)", [r["clusterctl_max_rss_mib"] for r in rows], lambda x: f"{x:.0f} MiB")
row("re-run", [r["rerun_s"] for r in rows], s)
row("re-run bytes sent", [r["rerun_bytes_sent"] for r in rows], mb)
if "join_s" in rows[0]:
    row(f"join of {rows[0]['joined']} workers", [r["join_s"] for r in rows], s)
    for p in rows[0]["join_phases"]:
        row(f"  {p}", [r["join_phases"].get(p, 0) for r in rows], s)
    row("join: bytes sent (clusterctl's count)", [r["join_bytes_sent"] for r in rows], mb)
    row("join: bytes onto the lab bridge", [r["join_wire_tx_bytes"] for r in rows], mb)
    row("join: clusterctl's peak memory (RSS)", [r["join_max_rss_mib"] for r in rows], lambda x: f"{x:.0f} MiB")
row("load average at start", [r["load1"] for r in rows], lambda x: f"{x:.1f}")
if all("cpu" in r for r in rows):
    ncpu = os.cpu_count()
    print(f"\nWhere the CPU went during init (CPU-seconds, medians; this machine has {ncpu} cores, so a "
        f"phase that keeps them all busy shows {ncpu}.0 busy cores: it waits on the CPU, not on the hosts)\n")
    print("| phase | busy cores | machine | control-plane hosts | workers | clusterctl |\n|---|---:|---:|---:|---:|---:|")
    c = lambda x: f"{x:.1f}"
    for p in rows[0]["cpu"]["phases"]:
        get = lambda k: med([r["cpu"]["phases"].get(p, {}).get(k, 0) for r in rows])
        secs = med([r["phases"].get(p, 0) for r in rows])
        print(f"| {p} | {c(get('machine') / secs) if secs >= 0.5 else '–'} | {c(get('machine'))} | "
            f"{c(get('control_plane_hosts'))} | {c(get('workers'))} | {c(get('clusterctl'))} |")
    tot = med([r["cpu"]["machine_busy_cpu_s"] for r in rows])
    print(f"| **init** | {c(tot / med([r['init_s'] for r in rows]))} | {c(tot)} | | | "
        f"{c(med([r['cpu']['clusterctl_cpu_s'] for r in rows]))} |")
    print(f"\nThe cluster left alone after the re-run keeps {c(med([r['cpu']['idle_cluster_busy_cores'] for r in rows]))} "
        f"core(s) busy ({' / '.join(str(r['cpu']['idle_cluster_busy_cores']) for r in rows)}).")
PY
cat "$out/summary.md"
log "results: $out"
