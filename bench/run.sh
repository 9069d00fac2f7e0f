#!/usr/bin/env bash
# Benchmark (not a timed test): the same work on 5 and on 50 lab hosts, three ways in one run:
# clusterctl's engine (the `fanout` example), Ansible, and plain OpenSSH in parallel (the floor).
# Work per host: 10 trivial commands; a 50 MB blob to /opt/bench/blob (skipped when the far
# sha256 matches); the unit clusterctl-bench.service, daemon-reload + enable --now only if the
# unit changed or the service is not active. Then the same again with nothing changed (no-op).
# Every "change" run starts from reset hosts and is verified afterwards (blob hash, unit
# enabled and active) so a failing tool cannot look fast.
#
# Usage: bench/run.sh [--hosts "5 50"] [--runs 3] [--tools "openssh ansible clusterctl"]
#   (tool clusterctl-seq: fanout --sequential, its 10 commands one after the other)
# Env: BENCH_FANOUT=/path/to/fanout uses an already built fanout example instead of building it.
# Results: bench/results/<UTC date>/results.jsonl and summary.md (medians and ratios).
set -euo pipefail
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$root/tests/lab/lab.sh"
CACHE=${CLUSTERCTL_CACHE:-/var/cache/clusterctl}/bench
ANSIBLE_SPEC=${ANSIBLE_SPEC:-ansible-core>=2.17,<2.20}
host_counts="5 50"
runs=3
tools="openssh ansible clusterctl"
while [ $# -gt 0 ]; do
	case "$1" in
	--hosts) host_counts=$2; shift 2 ;;
	--runs) runs=$2; shift 2 ;;
	--tools) tools=$2; shift 2 ;;
	*) sed -n '10,13p' "$0" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench: must run as root (the lab)" >&2; exit 1; }

log() { printf '%s bench: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

out="$root/bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

# ---------------------------------------------------------------- inputs (cached)
mkdir -p "$CACHE"
BLOB="$CACHE/blob-50M.bin"
if [ ! -f "$BLOB" ]; then
	head -c $((50 * 1024 * 1024)) /dev/urandom >"$BLOB.tmp"
	mv "$BLOB.tmp" "$BLOB"
fi
BLOB_SHA=$(sha256sum "$BLOB" | cut -d' ' -f1)
UNIT="$out/clusterctl-bench.service"
cat >"$UNIT" <<'UNIT'
[Unit]
Description=clusterctl bench service

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
UNIT

ansible_venv() { # ansible-core from PyPI in a venv keyed by its spec and the Python version
	local py=/usr/bin/python3 key dir
	key=$(printf '%s\n%s\n' "$ANSIBLE_SPEC" "$("$py" -V 2>&1)" | sha256sum | cut -c1-12)
	dir="$CACHE/ansible-venv-$key"
	if [ ! -f "$dir/.ok" ]; then
		log "installing $ANSIBLE_SPEC into $dir"
		rm -rf "$dir"
		"$py" -m venv "$dir"
		"$dir/bin/pip" install -q "$ANSIBLE_SPEC" >&2
		touch "$dir/.ok"
	fi
	echo "$dir"
}

FANOUT=${BENCH_FANOUT:-}
if [[ " $tools " == *" clusterctl"* ]] && [ -z "$FANOUT" ]; then
	if [ -f "$root/bench/fanout.rs" ] && grep -q 'name = "fanout"' "$root/Cargo.toml"; then
		log "building the fanout example (release)"
		(cd "$root" && cargo build -q --release --example fanout) >&2
		FANOUT="$root/target/release/examples/fanout"
	else
		log "bench/fanout.rs (the clusterctl side) is not there yet: skipping clusterctl"
		tools=${tools//clusterctl-seq/}
		tools=${tools//clusterctl/}
	fi
fi
VENV=""
if [[ " $tools " == *" ansible "* ]]; then VENV=$(ansible_venv); fi

# ---------------------------------------------------------------- helpers over all hosts
# on_all SCRIPT: run a root shell snippet on every host of the current lab, in parallel
# shellcheck disable=SC2016 # the sh -c script is expanded by the inner sh
on_all() {
	local h ip
	for h in $LAB_HOSTS; do
		ip=$(eval echo "\$LAB_IP_$h")
		echo "$h $ip"
	done | xargs -P 50 -n 2 sh -c 'ssh $0 "root@$3" "$1" </dev/null | sed "s/^/$2 /"' "$SSH_OPTS" "$1" 2>/dev/null
}

reset_hosts() {
	on_all 'systemctl disable --now clusterctl-bench.service >/dev/null 2>&1; rm -f /etc/systemd/system/clusterctl-bench.service /opt/bench/blob; systemctl daemon-reload; echo reset' |
		grep -c ' reset$' | { read -r n; [ "$n" = "$N" ] || die "reset reached $n of $N hosts"; }
}

verify_hosts() { # the work really happened on every host
	local want="$BLOB_SHA active enabled" ok
	# shellcheck disable=SC2016 # expanded on the hosts
	ok=$(on_all 'echo "$(sha256sum /opt/bench/blob | cut -d" " -f1) $(systemctl is-active clusterctl-bench.service) $(systemctl is-enabled clusterctl-bench.service)"' |
		grep -c " $want$" || true)
	[ "$ok" = "$N" ] || die "$1: the work is done on only $ok of $N hosts"
}

now() { date +%s.%N; }

record() { # record TOOL RUN PHASE WALL SENT SKIPPED RESTARTS (load1: the machine's load average)
	printf '{"date":"%s","tool":"%s","hosts":%s,"run":%s,"phase":"%s","wall_s":%.3f,"bytes_sent":%s,"bytes_skipped":%s,"restarts":%s,"load1":%s}\n' \
		"$(date -u +%FT%TZ)" "$1" "$N" "$2" "$3" "$4" "$5" "$6" "$7" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$results" >&2
}

# ---------------------------------------------------------------- the three tools
run_openssh() { # prints "sent skipped restarts"
	local ctl
	ctl=$(mktemp -d /tmp/bench-ctl.XXXXXX)
	local h ip
	for h in $LAB_HOSTS; do
		ip=$(eval echo "\$LAB_IP_$h")
		echo "$h $ip"
	done | BENCH_SSH_OPTS="$SSH_OPTS" BENCH_BLOB="$BLOB" BENCH_BLOB_SHA="$BLOB_SHA" BENCH_UNIT="$UNIT" BENCH_CTL="$ctl" \
		xargs -P "$N" -n 2 "$root/bench/openssh-host.sh" >"$ctl/out"
	[ "$(wc -l <"$ctl/out")" = "$N" ] || die "openssh: $(wc -l <"$ctl/out") of $N hosts finished"
	awk '{s+=$2; k+=$3; r+=$4} END {printf "%d %d %d\n", s, k, r}' "$ctl/out"
	rm -rf "$ctl"
}

run_ansible() {
	local ctl rc=0
	ctl=$(mktemp -d /tmp/bench-acp.XXXXXX) # fresh ControlPersist dir: every run starts cold
	ANSIBLE_CONFIG="$ANS_CFG" ANSIBLE_SSH_CONTROL_PATH_DIR="$ctl" BENCH_BLOB="$BLOB" BENCH_UNIT="$UNIT" \
		"$VENV/bin/ansible-playbook" -i "$ANS_INV" -f "$N" "$root/bench/ansible/playbook.yml" >"$out/ansible-last.log" 2>&1 || rc=$?
	local s
	for s in "$ctl"/*; do
		if [ -S "$s" ]; then ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1 || true; fi
	done
	rm -rf "$ctl"
	[ "$rc" = 0 ] || { tail -30 "$out/ansible-last.log" >&2; die "ansible-playbook failed (rc $rc)"; }
	# bytes are not reported by Ansible; restarts = hosts where the systemd task changed
	local changed
	changed=$(awk '/^TASK \[/{t=/daemon-reload/} t && /^changed: \[/{n++} END{print n+0}' "$out/ansible-last.log")
	echo "- - $changed"
}

run_clusterctl() { # extra arguments go to fanout
	local line
	line=$("$FANOUT" --inventory "$LAB_INVENTORY" --file "$BLOB" --concurrency "$N" "$@" | tail -1)
	echo "$line" >>"$out/fanout.jsonl"
	/usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["bytes_sent"], d["bytes_skipped"], d["restarts"])' "$line"
}

# clusterctl-seq: the 10 commands one after the other (as Ansible and the floor do) instead of
# as parallel channels on the host's session (fanout's default).
run_clusterctl-seq() { run_clusterctl --sequential; }

# ---------------------------------------------------------------- main
labs_up=()
cleanup() { local l; for l in "${labs_up[@]}"; do [ -z "$l" ] || "$LAB" down "$l" || true; done; }
trap cleanup EXIT

log "results in $out; tools: $tools; hosts: $host_counts; runs: $runs"
{
	echo "date: $(date -u +%FT%TZ)"
	echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB, $(uname -r)"
	echo "openssh: $(ssh -V 2>&1)"
	[ -n "$VENV" ] && echo "ansible: $("$VENV/bin/ansible" --version | head -1)"
	echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/env.txt"

for N in $host_counts; do
	lab="bench$N"
	"$LAB" down "$lab" >/dev/null 2>&1 || true
	labs_up+=("$lab")
	"$LAB" up "$lab" "$N" --layer python >/dev/null
	# shellcheck disable=SC1090
	. "/var/lib/clusterctl-lab/$lab/env"
	SSH_OPTS="-i $LAB_KEY -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$LAB_KNOWN_HOSTS -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10 -o LogLevel=ERROR"
	ANS_INV="$out/hosts-$N.ini"
	ANS_CFG="$out/ansible-$N.cfg"
	{
		echo "[all]"
		for h in $LAB_HOSTS; do echo "$h ansible_host=$(eval echo "\$LAB_IP_$h")"; done
		echo "[all:vars]"
		echo "ansible_user=root"
		echo "ansible_python_interpreter=/usr/bin/python3"
	} >"$ANS_INV"
	cat >"$ANS_CFG" <<CFG
[defaults]
gathering = explicit
forks = $N
host_key_checking = True
private_key_file = $LAB_KEY
retry_files_enabled = False
interpreter_python = /usr/bin/python3

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes -o UserKnownHostsFile=$LAB_KNOWN_HOSTS -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes
CFG
	for run in $(seq 1 "$runs"); do
		for tool in $tools; do
			reset_hosts
			for phase in change noop; do
				t0=$(now)
				res=$("run_$tool")
				read -r sent skipped restarts <<<"$res"
				t1=$(now)
				[ "$sent" = - ] && sent=null
				[ "$skipped" = - ] && skipped=null
				record "$tool" "$run" "$phase" "$(echo "$t1 - $t0" | awk '{print $1 - $3}')" "$sent" "$skipped" "$restarts"
				verify_hosts "$tool $phase"
			done
		done
	done
	"$LAB" down "$lab"
	labs_up=("${labs_up[@]/$lab/}")
done

/usr/bin/python3 "$root/bench/summarize.py" "$results" | tee "$out/summary.md"
