#!/usr/bin/env bash
# Fails if anything of a lab is left on the machine: processes, overlay mounts, netns, bridges,
# veths, cgroups. Run after the lab tests (tests/run.sh does).
set -euo pipefail
left=()
pgrep -a systemd-nspawn >/dev/null && left+=("nspawn processes: $(pgrep -a systemd-nspawn | tr '\n' ';')")
m=$(findmnt -rn -t overlay -o TARGET | grep -E 'clusterctl-lab' || true)
[ -n "$m" ] && left+=("overlay mounts: $m")
n=$(ip netns list | grep -E '^clab-' || true)
[ -n "$n" ] && left+=("netns: $n")
b=$(ip -o link show type bridge | awk -F': ' '{print $2}' | grep -E '^clbr-' || true)
[ -n "$b" ] && left+=("bridges: $b")
v=$(ip -o link show type veth | awk -F': ' '{print $2}' | grep -E '^clv' || true)
[ -n "$v" ] && left+=("veths: $v")
c=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 3 -type d -path '*/clusterctl-lab/*' 2>/dev/null || true)
[ -n "$c" ] && left+=("cgroups: $(echo "$c" | tr '\n' ' ')")
if [ "${#left[@]}" -gt 0 ]; then
	printf 'check-clean: the lab left things behind:\n' >&2
	printf '  %s\n' "${left[@]}" >&2
	exit 1
fi
echo "check-clean: no lab process, mount, netns or bridge left" >&2
