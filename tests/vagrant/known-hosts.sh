#!/usr/bin/env bash
# Writes .lab/known_hosts for the Vagrant hosts, reading each VM's ed25519 host key through
# `vagrant ssh` (an already authenticated channel), so clusterctl can use strict host key
# checking. Run from tests/vagrant after `vagrant up`.
# Usage: ./known-hosts.sh
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p .lab
: >.lab/known_hosts.tmp
while read -r name ip; do
	key=$(vagrant ssh "$name" -c 'cat /etc/ssh/ssh_host_ed25519_key.pub' 2>/dev/null | tr -d '\r' | cut -d' ' -f1,2)
	[ -n "$key" ] || { echo "known-hosts.sh: no host key from $name" >&2; exit 1; }
	echo "$ip $key" >>.lab/known_hosts.tmp
done <<'HOSTS'
cp1 192.168.56.11
cp2 192.168.56.12
cp3 192.168.56.13
w1 192.168.56.21
w2 192.168.56.22
HOSTS
mv .lab/known_hosts.tmp .lab/known_hosts
echo "wrote $(pwd)/.lab/known_hosts"
