#!/bin/sh
{# The scheduled etcd snapshot of {{ host.name }} (clusterctl backup --schedule): the local
    member over TLS, checked offline, kept as the newest {{ backup.keep }}. -#}
# etcd snapshot of the member on {{ host.name }}, written by clusterctl (backup --schedule).
# Keeps the newest {{ backup.keep }} snapshots in {{ backup.dir }}.
set -eu
dir={{ backup.dir }}
keep={{ backup.keep }}
prefix="{{ cluster.name }}-{{ host.name }}-"
umask 077
mkdir -p "$dir"
f="$dir/$prefix$(date -u +%Y%m%dT%H%M%SZ).db"
ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints=https://{{ host.address }}:2379 \
  --cacert={{ backup.pki }}/ca.crt --cert={{ backup.pki }}/healthcheck-client.crt \
  --key={{ backup.pki }}/healthcheck-client.key --command-timeout=300s \
  snapshot save "$f.tmp"
# Read it back offline before it counts (etcdutl on etcd >= 3.5 when the host has it).
if command -v etcdutl >/dev/null 2>&1; then u=etcdutl
elif [ -x /usr/local/bin/etcdutl ]; then u=/usr/local/bin/etcdutl
else u="env ETCDCTL_API=3 /usr/local/bin/etcdctl"; fi
$u snapshot status "$f.tmp" -w json
mv "$f.tmp" "$f"
# The names sort by time: drop all but the newest $keep.
ls -1 "$dir" | grep "^$prefix.*\.db\$" | sort -r | tail -n +$((keep + 1)) | while read -r old; do
  rm -f -- "$dir/$old"
  echo "removed $dir/$old (keeping $keep)"
done
echo "snapshot $f"
