#!/usr/bin/env bash
# Records the flag tables of the Kubernetes build cached by tests/lab/build-kubernetes.sh.
set -euo pipefail
cd "$(dirname "$0")"
bin=$(bash ../tests/lab/build-kubernetes.sh)
minor=$("$bin/kube-apiserver" --version | sed -E 's/.*v1\.([0-9]+)\..*/\1/')
mkdir -p "v1.$minor"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
	"$bin/$c" --help 2>&1 | grep -oE '^\s+(-[a-z], )?--[a-z0-9-]+' | sed -E 's/.*--//' | sort -u >"v1.$minor/$c.txt"
done
echo "recorded flags/v1.$minor from $bin"
