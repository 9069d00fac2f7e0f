{#- Routes from {{ host.name }} to every other node's pods (spec.network.cni: host-routes, like flannel's host-gw): all nodes share one L2 segment. -#}
#!/bin/sh
# Written by clusterctl; run by clusterctl-pod-routes.service at boot and whenever it changes.
# Routes it owns carry protocol number 77, so a node that left the inventory loses its route
# here without touching any other route.
set -eu
{%- for r in routes %}
ip -4 route replace {{ r.cidr }} via {{ r.via }} proto 77   # {{ r.host }}
{%- endfor %}
want=" {% for r in routes %}{{ r.cidr }} {% endfor %}"
ip -4 route show proto 77 | while read -r dst _; do
  case "$want" in *" $dst "*) ;; *) ip -4 route del "$dst" proto 77 ;; esac
done
# Pods reaching beyond the cluster leave with the node's address (pod-to-pod and pod-to-node
# traffic keeps pod addresses). Added once.
iptables -t nat -C POSTROUTING -s {{ pod.cidr }} ! -d {{ network.pod_cidr }} -m comment --comment clusterctl-pod-masq -j MASQUERADE 2>/dev/null ||
  iptables -t nat -A POSTROUTING -s {{ pod.cidr }} ! -d {{ network.pod_cidr }} -m comment --comment clusterctl-pod-masq -j MASQUERADE
