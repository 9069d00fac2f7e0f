//! The inventory: model, loading (with positions), validation, and imports from other tools.

pub mod kubeasz;
pub mod lifetime;
mod load;
pub mod model;
pub mod source_map;
pub mod types;
pub mod validate;

pub use load::{Loaded, load, load_str};
pub use model::*;

use std::net::IpAddr;

use crate::version::KubeVersion;

impl Inventory {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn hosts_with(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.spec.hosts.iter().filter(move |h| h.has(role))
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.spec.hosts.iter().find(|h| h.name == name)
    }

    pub fn control_plane_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts_with(Role::ControlPlane)
    }

    pub fn etcd_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts_with(Role::Etcd)
    }

    /// Hosts that run a kubelet (see [`Inventory::runs_kubelet`]): the cluster's nodes.
    pub fn node_hosts(&self) -> impl Iterator<Item = &Host> {
        self.spec.hosts.iter().filter(|h| self.runs_kubelet(h))
    }

    /// `spec.controlPlane.mode: static-pods`: etcd and the control plane run as static pods.
    pub fn static_pods(&self) -> bool {
        self.spec.control_plane.mode == ControlPlaneMode::StaticPods
    }

    /// Whether `host` runs a kubelet and registers as a node: control-plane hosts (tainted by
    /// default) and workers, and in static-pods mode etcd-only hosts too, whose kubelet runs
    /// the etcd static pod (kubeadm runs a kubelet on every host it sets up). Such a node is
    /// tainted like a control-plane node, so workloads stay off it.
    pub fn runs_kubelet(&self, host: &Host) -> bool {
        host.has(Role::ControlPlane)
            || host.has(Role::Worker)
            || (self.static_pods() && host.has(Role::Etcd))
    }

    /// Whether `host`'s kubelet joins by TLS bootstrap (`kubelet.certificates: bootstrap`):
    /// worker nodes only. A control-plane host's kubelet (and in static-pods mode an etcd
    /// host's) runs before an apiserver could sign its request, so it keeps pushed ones.
    pub fn kubelet_bootstraps(&self, host: &Host) -> bool {
        self.spec.kubelet.certificates == KubeletCertificates::Bootstrap
            && self.runs_kubelet(host)
            && !host.has(Role::ControlPlane)
            && !(self.static_pods() && host.has(Role::Etcd))
    }

    /// An etcd host that is a node only because of static-pods mode (no other node role).
    pub fn is_etcd_only_node(&self, host: &Host) -> bool {
        self.runs_kubelet(host) && !host.has(Role::ControlPlane) && !host.has(Role::Worker)
    }

    /// Hosts that run keepalived + haproxy in `vip` mode: the `lb` hosts, else the control plane.
    pub fn lb_hosts(&self) -> Vec<&Host> {
        let lb: Vec<&Host> = self.hosts_with(Role::Lb).collect();
        if lb.is_empty() {
            self.control_plane_hosts().collect()
        } else {
            lb
        }
    }

    /// The port haproxy serves the API on: the VIP's in `vip` mode, else the local proxy's.
    pub fn balancer_port(&self) -> u16 {
        match (self.spec.ha.mode, &self.spec.ha.vip) {
            (HaMode::Vip, Some(v)) => v.port,
            _ => self.spec.ha.local_proxy_port,
        }
    }

    /// Parsed Kubernetes version (validated on load).
    pub fn kube_version(&self) -> KubeVersion {
        self.spec.kubernetes_version
    }

    pub fn service_cidr(&self) -> ipnet::IpNet {
        self.spec.network.service_cidr
    }

    pub fn pod_cidr(&self) -> ipnet::IpNet {
        self.spec.network.pod_cidr
    }

    /// The `kubernetes` Service IP: first address of the service CIDR.
    pub fn kubernetes_service_ip(&self) -> IpAddr {
        nth_addr(&self.service_cidr(), 1)
    }

    /// The cluster DNS IP: from the inventory, else the 10th address of the service CIDR.
    pub fn dns_ip(&self) -> IpAddr {
        self.spec
            .network
            .dns_ip
            .unwrap_or_else(|| nth_addr(&self.service_cidr(), 10))
    }

    /// The CoreDNS image: the inventory's, else the one kubeadm uses for this minor.
    pub fn coredns_image(&self) -> String {
        self.spec
            .addons
            .coredns
            .image
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| self.kube_version().default_coredns_image().to_string())
    }

    /// The metrics-server image: the inventory's, else the default for this minor.
    pub fn metrics_server_image(&self) -> String {
        self.spec
            .addons
            .metrics_server
            .image
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| {
                self.kube_version()
                    .default_metrics_server_image()
                    .to_string()
            })
    }

    /// Where kubelets, kube-proxy and controllers on `host` reach the API.
    /// vip: the VIP and its port; local-proxy: 127.0.0.1 and the proxy port; external: as given.
    pub fn apiserver_endpoint_for(&self, _host: &Host) -> (String, u16) {
        self.apiserver_endpoint_inner(true)
    }

    /// Where the operator's machine reaches the API (the admin kubeconfig): the VIP or external
    /// endpoint, or in local-proxy mode the first control-plane host's apiserver.
    pub fn apiserver_endpoint_for_admin(&self) -> (String, u16) {
        self.apiserver_endpoint_inner(false)
    }

    fn apiserver_endpoint_inner(&self, on_node: bool) -> (String, u16) {
        let ha = &self.spec.ha;
        match ha.mode {
            HaMode::Vip => {
                let vip = ha.vip.as_ref().expect("validated on load");
                // The address only: `192.168.56.10/24` names the subnet keepalived uses, and a
                // prefix in a SAN or a URL is wrong.
                (vip.ip_and_prefix().0.to_string(), vip.port)
            }
            HaMode::External => {
                let ep = ha.external_endpoint.as_ref().expect("validated on load");
                (ep.host.to_string(), ep.port)
            }
            HaMode::LocalProxy if on_node => ("127.0.0.1".into(), ha.local_proxy_port),
            HaMode::LocalProxy => {
                let first = self
                    .control_plane_hosts()
                    .next()
                    .expect("validated on load");
                (
                    first.address.to_string(),
                    self.spec.control_plane.apiserver_port,
                )
            }
        }
    }

    /// `https://host:port`, with brackets for IPv6.
    pub fn url(host: impl std::fmt::Display, port: u16) -> String {
        let host = host.to_string();
        if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        }
    }
}

/// The n-th address of a network (n=1: first usable address).
pub fn nth_addr(net: &ipnet::IpNet, n: u32) -> IpAddr {
    match net {
        ipnet::IpNet::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4.network()).wrapping_add(n),
        )),
        ipnet::IpNet::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6.network()).wrapping_add(n as u128),
        )),
    }
}
