#!/usr/bin/env bash
# Records the field paths of the component config kinds clusterctl renders, from the Go types
# of a release as Debian packages them (the upstream tag's source, unchanged):
#   golang-github-kubernetes-kubelet-dev 1.32.7  -> k8s.io/kubelet v0.32.7 (Kubernetes 1.32.7)
#   golang-k8s-kube-proxy-dev 0.36.4             -> k8s.io/kube-proxy v0.36.4 (Kubernetes 1.36.4)
#   golang-k8s-component-base-dev 0.36.4         -> k8s.io/component-base v0.36.4 (shared types)
#   golang-k8s-api-dev 0.36.4                    -> k8s.io/api v0.36.4 (core/v1 Taint, the type
#                                                   of KubeletConfiguration.registerWithTaints)
# from Debian sid (read with tests/lab/apt-private.sh; nothing is installed on the machine).
# tests/flags.rs checks every key of the rendered KubeletConfiguration and
# KubeProxyConfiguration against these files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../tests/lab/apt-private.sh"
apt_private sid deb
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get -q "${APT_PRIV[@]}" download golang-github-kubernetes-kubelet-dev=1.32.7-1 \
	golang-k8s-kube-proxy-dev=0.36.4-1 golang-k8s-component-base-dev=0.36.4-2 golang-k8s-api-dev=0.36.4-1 >&2)
for d in "$tmp"/*.deb; do dpkg -x "$d" "$tmp/x"; done
src="$tmp/x/usr/share/gocode/src/k8s.io"
cb="$src/component-base"
header() {
	printf '# %s fields (dotted JSON paths; .* = any map key, [] = list elements)\n# from %s\n' "$1" "$2"
}
out="$here/kubelet.config.k8s.io-v1beta1-1.32.7.txt"
header KubeletConfiguration "k8s.io/kubelet v0.32.7 config/v1beta1/types.go (Debian golang-github-kubernetes-kubelet-dev 1.32.7-1), component-base v0.36.4 logs/tracing types, k8s.io/api v0.36.4 core/v1 types" >"$out"
python3 "$here/record.py" KubeletConfiguration "$out" "$src/kubelet/config/v1beta1/types.go" \
	"$cb/logs/api/v1/types.go" "$cb/tracing/api/v1/types.go" "$src/api/core/v1/types.go"
out="$here/kubeproxy.config.k8s.io-v1alpha1-1.36.4.txt"
header KubeProxyConfiguration "k8s.io/kube-proxy v0.36.4 config/v1alpha1/types.go (Debian golang-k8s-kube-proxy-dev 0.36.4-1), component-base v0.36.4 config and logs types" >"$out"
python3 "$here/record.py" KubeProxyConfiguration "$out" "$src/kube-proxy/config/v1alpha1/types.go" \
	"$cb/config/v1alpha1/types.go" "$cb/logs/api/v1/types.go"
echo "recorded flags/config from Debian sid's Go packages" >&2
