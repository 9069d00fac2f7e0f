#!/usr/bin/env bash
# Installs what the nspawn lab needs on a fresh Debian machine. Idempotent; silent when all is
# already present.
# Usage: tests/lab/prereqs.sh
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "prereqs.sh: must run as root" >&2; exit 1; }

# command -> Debian package that provides it
declare -A need=(
	[systemd-nspawn]=systemd-container
	[debootstrap]=debootstrap
	[ip]=iproute2
	[ssh]=openssh-client
	[ssh-keygen]=openssh-client
	[nsenter]=util-linux
	[flock]=util-linux
	[sha256sum]=coreutils
	[kubectl]=kubernetes-client
	[openssl]=openssl
	[tmux]=tmux
)
missing=()
for cmd in "${!need[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# debootstrap verifies the archive with this keyring
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)

if [ "${#missing[@]}" -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "prereqs.sh: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
