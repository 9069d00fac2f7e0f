#!/usr/bin/env bash
# The OpenSSH floor, one host: the bench's work with plain `ssh` over one ControlMaster.
# Called by run.sh through `xargs -P`; prints "HOST bytes_sent bytes_skipped restarts".
# Usage: openssh-host.sh HOST IP   (env: BENCH_SSH_OPTS, BENCH_BLOB, BENCH_BLOB_SHA, BENCH_UNIT, BENCH_CTL)
set -euo pipefail
host=$1 ip=$2
# shellcheck disable=SC2206
opts=($BENCH_SSH_OPTS -o ControlMaster=auto -o "ControlPath=$BENCH_CTL/$host" -o ControlPersist=60)
# shellcheck disable=SC2029 # the commands are meant for the far side
r() { ssh "${opts[@]}" "root@$ip" "$@"; }

# 10 trivial commands, one channel each
for _ in 1 2 3 4 5 6 7 8 9 10; do r true; done

# the blob, skipped when the far sha256 matches
sent=0 skipped=0
far=$(r "sha256sum /opt/bench/blob 2>/dev/null | cut -d' ' -f1" || true)
size=$(stat -c %s "$BENCH_BLOB")
if [ "$far" = "$BENCH_BLOB_SHA" ]; then
	skipped=$size
else
	r "mkdir -p /opt/bench && cat >/opt/bench/.blob.tmp && chmod 0644 /opt/bench/.blob.tmp && mv /opt/bench/.blob.tmp /opt/bench/blob" <"$BENCH_BLOB"
	sent=$size
fi

# the unit; daemon-reload + enable --now only if it changed or the service is not active
unit=/etc/systemd/system/clusterctl-bench.service
changed=0
if [ "$(r "cat $unit 2>/dev/null" || true)" != "$(cat "$BENCH_UNIT")" ]; then
	r "cat >$unit.tmp && chmod 0644 $unit.tmp && mv $unit.tmp $unit" <"$BENCH_UNIT"
	changed=1
fi
restarts=0
if [ "$changed" = 1 ] || [ "$(r "systemctl is-active clusterctl-bench.service" || true)" != active ]; then
	r "systemctl daemon-reload && systemctl enable --now clusterctl-bench.service" >/dev/null 2>&1
	restarts=1
fi
ssh "${opts[@]}" -O exit "root@$ip" 2>/dev/null || true
echo "$host $sent $skipped $restarts"
