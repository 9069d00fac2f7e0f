#!/usr/bin/env bash
# The project's test command (README "Set up", and what .ci/run calls): installs what the tests
# need, then formatting, lints, unit tests and the lab end-to-end tests (real nspawn hosts,
# real sshd/etcd/haproxy/keepalived/Kubernetes). Lab tests need root; each brings its lab up and
# tears it down, and this script checks that nothing of any lab is left behind.
# Usage: bash tests/run.sh            (as root: everything)
#        CLUSTERCTL_SKIP_LAB=1 bash tests/run.sh   (no root: unit tests only, said plainly)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Compiled dependencies are slow to build on 2 cores and the same from one clone to the next:
# they are kept outside the checkout (a clean clone then compiles only clusterctl itself), and
# the cache is emptied when it passes 20 GB. CARGO_TARGET_DIR=target keeps the usual place.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
	export CARGO_TARGET_DIR=${CLUSTERCTL_CACHE:-/var/cache/clusterctl}/cargo-target
	mkdir -p "$CARGO_TARGET_DIR"
	if [ "$(du -s -BG "$CARGO_TARGET_DIR" | cut -f1 | tr -d G)" -gt 20 ]; then
		echo "tests/run.sh: $CARGO_TARGET_DIR passed 20 GB: emptied" >&2
		rm -rf "$CARGO_TARGET_DIR" && mkdir -p "$CARGO_TARGET_DIR"
	fi
fi

lab=1
if [ "${CLUSTERCTL_SKIP_LAB:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
	lab=0
	echo "tests/run.sh: NOT running lab tests ($( [ "$(id -u)" != 0 ] && echo 'not root' || echo 'CLUSTERCTL_SKIP_LAB=1'))" >&2
fi

if [ "$lab" = 1 ]; then
	# A fresh machine has empty or stale package lists: refresh them once a day at most.
	if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ]; then
		apt-get update -q >&2
	fi
	bash tests/lab/prereqs.sh
fi

echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy -q --all-targets -- -D warnings

if [ "$lab" = 1 ]; then
	trap 'bash tests/lab/lab.sh down --all >/dev/null 2>&1 || true' EXIT
	echo "== cargo test (unit tests)" >&2
	cargo test --no-fail-fast
	# The ignored tests: lab end-to-end tests (each boots its own lab on its own subnet) and the
	# ones that need the Kubernetes build. Within a test binary one at a time; two binaries at a
	# time, longest first, so the day-2 tests do not push a full run past ~40 minutes on 2 cores
	# (every gate has the slack for it: the tests also passed with three labs running at once).
	echo "== lab and build tests (cargo test -- --ignored, two test binaries at a time)" >&2
	logs=$(mktemp -d)
	mapfile -t bins < <(cargo test --no-run --message-format=json 2>/dev/null | grep -E '"profile":\{[^}]*"test":true' |
		grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//' | sort -u)
	longest_first="renew_lab upgrade_lab static_pods_lab nodes_lab init_lab members_lab backup_lab"
	ordered=()
	for n in $longest_first; do
		for b in "${bins[@]}"; do [[ $(basename "$b") == "$n"-* ]] && ordered+=("$b"); done
	done
	for b in "${bins[@]}"; do [[ " ${ordered[*]} " == *" $b "* ]] || ordered+=("$b"); done
	export logs
	printf '%s\n' "${ordered[@]}" | xargs -P 2 -I{} bash -c '
		b={}; n=$(basename "$b"); t0=$(date +%s)
		"$b" --ignored --test-threads=1 >"$logs/$n.log" 2>&1; rc=$?
		echo "$rc" >"$logs/$n.rc"
		printf "%s %-28s %s (%ss)\n" "$(date +%H:%M:%S)" "$n" "$( [ $rc = 0 ] && echo ok || echo FAILED)" "$(( $(date +%s) - t0 ))" >&2'
	# A CI view may show only the start and the end of this output: every failed test's
	# reason comes first (the panic message, no backtrace) and again, one line each, last;
	# the whole outputs in between.
	failed=()
	for b in "${ordered[@]}"; do
		n=$(basename "$b")
		if [ "$(cat "$logs/$n.rc")" != 0 ]; then failed+=("$n"); fi
	done
	why() { # the panic message of a failed test's log, else its last lines
		awk '/panicked at/ {p = 1} p && /^(stack backtrace:|note: run with)/ {p = 0; exit} p' "$logs/$1.log" |
			head -n "$2" | cut -c1-600 | grep . || tail -n "$2" "$logs/$1.log"
	}
	for n in "${failed[@]}"; do
		echo "---- $n FAILED; why:" >&2
		why "$n" 12 >&2
	done
	for n in "${failed[@]}"; do
		echo "---- $n: its whole output:" >&2
		cat "$logs/$n.log" >&2
	done
	for b in "${ordered[@]}"; do
		n=$(basename "$b")
		if [ "$(cat "$logs/$n.rc")" = 0 ]; then
			grep -h "^test result" "$logs/$n.log" | sed "s/^/$n: /" >&2 || true
		fi
	done
	for n in "${failed[@]}"; do
		echo "FAILED $n: $(why "$n" 2 | tail -n 1 | cut -c1-300)" >&2
	done
	rm -rf "$logs"
	bash tests/lab/check-clean.sh
	[ "${#failed[@]}" = 0 ] || { echo "tests/run.sh: lab/build tests failed (above)" >&2; exit 1; }
else
	echo "== cargo test (unit tests only)" >&2
	cargo test --no-fail-fast
fi
