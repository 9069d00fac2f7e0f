//! The variables every template sees, computed from the inventory for one host.

use serde::Serialize;

use crate::inventory::types::{FlagName, FlagValue};
use crate::inventory::{CgroupDriver, Cni, HaMode, Host, Inventory, ProxyMode, Role};

/// The role label of an etcd-only node (static-pods mode): `kubectl get nodes` shows `etcd`.
pub const ETCD_NODE_LABEL: &str = "node-role.kubernetes.io/etcd";
/// The taint of an etcd-only node (static-pods mode), so workloads stay off it.
pub const ETCD_NODE_TAINT: &str = "node-role.kubernetes.io/etcd:NoSchedule";

/// The taints a node registers with: the inventory's, plus kubeadm's control-plane taint on
/// control-plane hosts (and [`ETCD_NODE_TAINT`] on etcd-only nodes of static-pods mode)
/// unless `controlPlane.taintNodes` is off (or the inventory already sets a taint with that
/// key).
pub fn node_taints(inv: &Inventory, host: &Host) -> Vec<String> {
    let mut t: Vec<String> = host.taints.iter().map(|t| t.to_string()).collect();
    let role_taint = if host.has(Role::ControlPlane) {
        Some(inv.kube_version().control_plane_taint())
    } else if inv.is_etcd_only_node(host) {
        Some(ETCD_NODE_TAINT)
    } else {
        None
    };
    if let Some(cp) = role_taint
        && inv.spec.control_plane.taint_nodes
    {
        let key = cp.split(':').next().unwrap_or(cp);
        if !host.taints.iter().any(|x| x.key == key) {
            t.push(cp.to_string());
        }
    }
    t
}

#[derive(Serialize)]
struct Vars<'a> {
    cluster: ClusterVars<'a>,
    /// The facts of the cluster's Kubernetes minor (`crate::version::MINOR_FACTS`): templates
    /// branch on these, never on a minor number.
    k8s: &'static crate::version::MinorFacts,
    host: HostVars<'a>,
    network: NetworkVars,
    etcd: EtcdVars,
    apiserver: ApiserverVars,
    controller_manager: ExtraArgs,
    scheduler: ExtraArgs,
    control_plane: ControlPlaneVars,
    apiserver_port: u16,
    ha: HaVars,
    lb: LbVars,
    vip: Option<VipVars>,
    runtime: RuntimeVars,
    kubelet: KubeletVars,
    proxy: ProxyVars,
}

#[derive(Serialize)]
struct RuntimeVars {
    sandbox_image: String,
    cgroup_driver: &'static str,
    restrict_oom_score_adj: bool,
    /// Registries with mirrors: containerd `certs.d/<registry>/hosts.toml`.
    mirrors: Vec<Mirror>,
}

/// A registry with mirrors (`spec.containerRuntime.registryMirrors`): one containerd
/// `certs.d/<registry>/hosts.toml`, rendered with it as `mirror`.
#[derive(Serialize)]
pub struct Mirror {
    pub registry: String,
    /// `https://registry-1.docker.io` for docker.io, else `https://<registry>`.
    pub server: String,
    pub endpoints: Vec<String>,
}

/// The inventory's registry mirrors, in registry order.
pub fn registry_mirrors(inv: &Inventory) -> Vec<Mirror> {
    inv.spec
        .container_runtime
        .registry_mirrors
        .iter()
        .map(|(reg, eps)| Mirror {
            registry: reg.to_string(),
            server: if reg == "docker.io" {
                "https://registry-1.docker.io".into()
            } else {
                format!("https://{reg}")
            },
            endpoints: eps.iter().map(|e| e.to_string()).collect(),
        })
        .collect()
}

/// One taint split into the fields of a Kubernetes `Taint` (`key[=value]:effect`).
#[derive(Serialize)]
struct TaintVar {
    key: String,
    value: Option<String>,
    effect: String,
}

impl TaintVar {
    fn parse(t: &str) -> TaintVar {
        let (kv, effect) = t.rsplit_once(':').unwrap_or((t, ""));
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        TaintVar {
            key: key.to_string(),
            value,
            effect: effect.to_string(),
        }
    }
}

#[derive(Serialize)]
struct KubeletVars {
    /// `--register-with-taints`: the inventory's taints, plus the control-plane taint.
    taints: String,
    /// The same taints as KubeletConfiguration's `registerWithTaints` entries, for minors
    /// whose kubelet deprecated the flag (`k8s.kubelet_runtime_and_taints_in_config`).
    taint_list: Vec<TaintVar>,
    /// `https://endpoint:port` the node's kubelet and kube-proxy use.
    server: String,
    eviction_hard: Vec<Arg>,
    image_gc_high: u8,
    image_gc_low: u8,
    extra_args: Vec<Arg>,
}

#[derive(Serialize)]
struct ProxyVars {
    manages_conntrack: bool,
}

#[derive(Serialize)]
struct ClusterVars<'a> {
    name: &'a str,
    version: String,
}

#[derive(Serialize)]
struct HostVars<'a> {
    name: &'a str,
    address: String,
    roles: Vec<&'static str>,
}

#[derive(Serialize)]
struct NetworkVars {
    pod_cidr: String,
    service_cidr: String,
    node_cidr_mask_size: u8,
    cluster_domain: String,
    dns_ip: String,
    proxy_mode: &'static str,
    cni: &'static str,
    /// The controller-manager hands out node pod CIDRs, except with host-routes, where
    /// clusterctl allocates them (clusters/<name>/pod-cidrs.yaml) and sets them on the nodes.
    allocate_node_cidrs: bool,
}

#[derive(Serialize)]
struct EtcdVars {
    data_dir: String,
    initial_cluster: String,
    token: String,
    initial_state: String,
    snapshot_count: u64,
    quota_backend_bytes: u64,
    extra_args: Vec<Arg>,
}

#[derive(Serialize)]
struct ApiserverVars {
    bind_address: String,
    etcd_servers: String,
    extra_args: Vec<Arg>,
}

#[derive(Serialize)]
struct ExtraArgs {
    extra_args: Vec<Arg>,
}

#[derive(Serialize)]
struct ControlPlaneVars {
    encrypt_secrets: bool,
    audit_log: bool,
}

#[derive(Serialize)]
struct HaVars {
    mode: &'static str,
}

#[derive(Serialize)]
struct Backend {
    name: String,
    address: String,
}

#[derive(Serialize)]
struct LbVars {
    bind_address: &'static str,
    admin_socket: &'static str,
    port: u16,
    backends: Vec<Backend>,
}

#[derive(Serialize)]
struct VipVars {
    address: String,
    prefix: u8,
    interface: String,
    router_id: u8,
    priority: u32,
    peers: Vec<String>,
}

/// The keepalived interface when the inventory names none.
pub const DEFAULT_VIP_INTERFACE: &str = "eth0";

#[derive(Serialize)]
struct Arg {
    name: String,
    value: String,
}

/// User extra args (`--foo: bar` or `foo: bar`) as `--name=value` items.
fn args(m: &std::collections::BTreeMap<FlagName, FlagValue>) -> Vec<Arg> {
    m.iter()
        .map(|(k, v)| Arg {
            name: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// How an etcd member starts: `--initial-cluster` and `--initial-cluster-state`. A member of
/// a new cluster starts with every etcd host of the inventory and `new`; one added later
/// (`member add`) with the members of that time plus itself and `existing`. Each member keeps
/// the flags it started with (clusters/<name>/etcd-members.json), so a grown cluster does not
/// change, and so restart, the units of the members that were there before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStart {
    pub initial_cluster: String,
    pub initial_state: String,
}

impl EtcdStart {
    /// A member of a new cluster: every etcd host of the inventory, `new`.
    pub fn new_cluster(inv: &Inventory) -> EtcdStart {
        EtcdStart {
            initial_cluster: inv
                .etcd_hosts()
                .map(|h| format!("{}={}", h.name, peer_url(h)))
                .collect::<Vec<_>>()
                .join(","),
            initial_state: "new".into(),
        }
    }
}

/// The peer URL of the etcd member on `h`.
pub fn peer_url(h: &Host) -> String {
    Inventory::url(h.address, 2380)
}

/// Template variables for `host`, its etcd member starting as a member of a new cluster.
pub fn host_vars(inv: &Inventory, host: &Host) -> tera::Context {
    host_vars_etcd(inv, host, &EtcdStart::new_cluster(inv))
}

/// Template variables for `host`, its etcd member starting with `start`.
pub fn host_vars_etcd(inv: &Inventory, host: &Host, start: &EtcdStart) -> tera::Context {
    let spec = &inv.spec;
    let version = inv.kube_version();
    let etcd_hosts: Vec<&Host> = inv.etcd_hosts().collect();
    let etcd_servers = etcd_hosts
        .iter()
        .map(|h| format!("https://{}:2379", h.address))
        .collect::<Vec<_>>()
        .join(",");
    let apiserver_port = spec.control_plane.apiserver_port;
    // In local-proxy mode haproxy owns 127.0.0.1:<port> on every node; when that is the
    // apiserver's port too, the apiserver listens on the host address only.
    let bind_address =
        if spec.ha.mode == HaMode::LocalProxy && spec.ha.local_proxy_port == apiserver_port {
            host.address.to_string()
        } else {
            "0.0.0.0".to_string()
        };
    let lb_port = inv.balancer_port();
    let lb_hosts = inv.lb_hosts();
    let vip = match (spec.ha.mode, &spec.ha.vip) {
        (HaMode::Vip, Some(v))
            if host.has(Role::Lb) || lb_hosts.iter().any(|h| h.name == host.name) =>
        {
            let (ip, prefix) = v.ip_and_prefix();
            let idx = lb_hosts
                .iter()
                .position(|h| h.name == host.name)
                .unwrap_or(0);
            Some(VipVars {
                address: ip.to_string(),
                prefix,
                interface: v
                    .interface
                    .as_ref()
                    .map_or(DEFAULT_VIP_INTERFACE, |i| i.as_str())
                    .to_string(),
                router_id: v.router_id,
                // The first election goes to the first lb host; afterwards the VIP stays
                // where it is (every host BACKUP with nopreempt, see keepalived.conf).
                priority: if idx == 0 { 150 } else { 100 - idx as u32 },
                peers: {
                    let others: Vec<String> = lb_hosts
                        .iter()
                        .filter(|h| h.name != host.name)
                        .map(|h| h.address.to_string())
                        .collect();
                    // A lone balancer names the VIP as its peer: keepalived stays in unicast
                    // mode (with no peer it falls back to multicast), so the reload that gives
                    // it its first peers (a `join`), or takes its last (a `reset`), does not
                    // switch modes. That switch re-initialises the VRRP instance, which drops
                    // the VIP for its master-down time (3.4 s in the lab: 1-4 failed reads
                    // through the VIP per such reload, 0 without the switch). Its adverts then
                    // go to itself and are dropped, without a log line, by
                    // `check_unicast_src` (their source is not a peer).
                    if others.is_empty() {
                        vec![ip.to_string()]
                    } else {
                        others
                    }
                },
            })
        }
        _ => None,
    };
    let vars = Vars {
        cluster: ClusterVars {
            name: inv.name(),
            version: version.to_string(),
        },
        k8s: version.facts(),
        host: HostVars {
            name: &host.name,
            address: host.address.to_string(),
            roles: host.roles.iter().map(|r| r.as_str()).collect(),
        },
        network: NetworkVars {
            pod_cidr: spec.network.pod_cidr.to_string(),
            service_cidr: spec.network.service_cidr.to_string(),
            node_cidr_mask_size: spec.network.node_cidr_mask_size,
            cluster_domain: spec.network.cluster_domain.to_string(),
            dns_ip: inv.dns_ip().to_string(),
            proxy_mode: match spec.network.proxy_mode {
                ProxyMode::Iptables => "iptables",
                ProxyMode::Ipvs => "ipvs",
            },
            cni: match spec.network.cni {
                Cni::HostRoutes => "host-routes",
                Cni::Flannel => "flannel",
                Cni::Calico => "calico",
                Cni::None => "none",
            },
            allocate_node_cidrs: spec.network.cni != Cni::HostRoutes,
        },
        etcd: EtcdVars {
            data_dir: spec.etcd.data_dir.to_string(),
            initial_cluster: start.initial_cluster.clone(),
            token: format!("etcd-{}", inv.name()),
            initial_state: start.initial_state.clone(),
            snapshot_count: spec.etcd.snapshot_count,
            quota_backend_bytes: spec.etcd.quota_backend_bytes,
            extra_args: args(&spec.etcd.extra_args),
        },
        apiserver: ApiserverVars {
            bind_address,
            etcd_servers,
            extra_args: args(&spec.control_plane.apiserver_extra_args),
        },
        controller_manager: ExtraArgs {
            extra_args: args(&spec.control_plane.controller_manager_extra_args),
        },
        scheduler: ExtraArgs {
            extra_args: args(&spec.control_plane.scheduler_extra_args),
        },
        control_plane: ControlPlaneVars {
            encrypt_secrets: spec.control_plane.encrypt_secrets,
            audit_log: spec.control_plane.audit_log,
        },
        apiserver_port,
        ha: HaVars {
            mode: match spec.ha.mode {
                HaMode::Vip => "vip",
                HaMode::LocalProxy => "local-proxy",
                HaMode::External => "external",
            },
        },
        lb: LbVars {
            bind_address: if spec.ha.mode == HaMode::LocalProxy {
                "127.0.0.1"
            } else {
                "0.0.0.0"
            },
            admin_socket: super::ADMIN_SOCKET,
            port: lb_port,
            backends: inv
                .control_plane_hosts()
                .map(|h| Backend {
                    name: h.name.to_string(),
                    address: h.address.to_string(),
                })
                .collect(),
        },
        vip,
        runtime: RuntimeVars {
            sandbox_image: spec
                .container_runtime
                .sandbox_image
                .as_ref()
                .map_or(version.default_sandbox_image(), |i| i.as_str())
                .to_string(),
            cgroup_driver: match spec.container_runtime.cgroup_driver {
                CgroupDriver::Systemd => "systemd",
                CgroupDriver::Cgroupfs => "cgroupfs",
            },
            restrict_oom_score_adj: spec.container_runtime.restrict_oom_score_adj,
            mirrors: registry_mirrors(inv),
        },
        kubelet: KubeletVars {
            taints: node_taints(inv, host).join(","),
            taint_list: node_taints(inv, host)
                .iter()
                .map(|t| TaintVar::parse(t))
                .collect(),
            server: {
                let (h, p) = inv.apiserver_endpoint_for(host);
                Inventory::url(&h, p)
            },
            eviction_hard: spec
                .kubelet
                .eviction_hard
                .iter()
                .map(|(k, v)| Arg {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            image_gc_high: spec.kubelet.image_gc_thresholds().0,
            image_gc_low: spec.kubelet.image_gc_thresholds().1,
            extra_args: args(&spec.kubelet.extra_args),
        },
        proxy: ProxyVars {
            manages_conntrack: spec.network.proxy_manages_conntrack,
        },
    };
    tera::Context::from_serialize(&vars).expect("template variables serialize")
}
