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
	echo "== cargo test -- --include-ignored (unit + lab tests)" >&2
	# Lab tests boot hosts; run test binaries' tests one at a time so they don't compete.
	cargo test --no-fail-fast -- --include-ignored --test-threads=1
	bash tests/lab/check-clean.sh
else
	echo "== cargo test (unit tests only)" >&2
	cargo test --no-fail-fast
fi
