//! The inventory: one YAML file that describes a whole cluster.
//!
//! Every field has a default except `hosts`; unknown keys are rejected (`deny_unknown_fields`).
//! Field names are camelCase in YAML, like Kubernetes objects. This module holds types and
//! defaults only; loading lives in `load.rs`, checks in `validate.rs`.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use super::types::*;
use crate::version::KubeVersion;

pub const API_VERSION: &str = "clusterctl.io/v1alpha1";
pub const KIND: &str = "Cluster";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Cluster name: also the name of its state directory `clusters/<name>/`.
    pub name: ClusterName,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    /// e.g. "v1.20.2"; its minor must be one of `crate::version::SUPPORTED_MINORS`.
    pub kubernetes_version: KubeVersion,
    #[serde(default)]
    pub ssh: SshDefaults,
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub ha: Ha,
    #[serde(default)]
    pub pki: Pki,
    #[serde(default)]
    pub etcd: Etcd,
    #[serde(default)]
    pub control_plane: ControlPlane,
    #[serde(default)]
    pub container_runtime: ContainerRuntime,
    #[serde(default)]
    pub kubelet: Kubelet,
    #[serde(default)]
    pub addons: Addons,
    /// The offline bundle: its path (`bundle: lab.tar.zst`), or with how it is trusted
    /// (`bundle: {path: lab.tar.zst, publicKey: keys/bundle.pub}`). Paths are relative to the
    /// inventory file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleSpec>,
    /// Who can read the archives `clusterctl backup` writes (they hold the CA keys).
    #[serde(default, skip_serializing_if = "BackupSpec::is_default")]
    pub backup: BackupSpec,
}

/// `spec.backup`: a backup archive holds every CA key, so it is encrypted (the `age` format)
/// to `recipients`; writing it in the clear needs `unencrypted: true`, said in every backup's
/// output. (Every archive is also signed with the cluster's backup-signing key, see
/// `commands::seal`; that needs no setting.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSpec {
    /// age X25519 public keys (`age1…`, as `age-keygen` prints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<AgeRecipient>,
    /// Write archives unencrypted (CA keys in the clear): an explicit opt-out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unencrypted: bool,
}

impl BackupSpec {
    fn is_default(&self) -> bool {
        *self == BackupSpec::default()
    }
}

/// An age X25519 recipient, parsed when the inventory is read: a value that is not one is a
/// schema error at its line, and nothing downstream parses the string again.
#[derive(Clone)]
pub struct AgeRecipient(pub age::x25519::Recipient);

impl std::fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl PartialEq for AgeRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl std::str::FromStr for AgeRecipient {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<age::x25519::Recipient>()
            .map(AgeRecipient)
            .map_err(|_| {
                "invalid backup recipient: expected an age X25519 public key `age1…` (as `age-keygen` prints it)"
                    .to_string()
            })
    }
}

impl Serialize for AgeRecipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for AgeRecipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map_err(serde::de::Error::custom)
    }
}

/// `spec.bundle`: where the offline bundle is and whose signature it must carry.
///
/// A bundle is installed only when its manifest's ed25519 signature verifies against
/// `publicKey`; a signed bundle without `publicKey` is refused (nothing to check it with), and
/// an unsigned one needs `allowUnsigned: true` (said in every plan).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleSpec {
    pub path: PathBuf,
    /// The signer's ed25519 public key (SPKI PEM, as `clusterctl bundle keygen` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
    /// Install a bundle whose signature is not checked (no `publicKey`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unsigned: bool,
}

impl BundleSpec {
    /// A bundle given by path only (its signature will be required unless allowed otherwise).
    pub fn path(p: impl Into<PathBuf>) -> BundleSpec {
        BundleSpec {
            path: p.into(),
            public_key: None,
            allow_unsigned: false,
        }
    }
}

/// The mapping form of `spec.bundle` (unknown keys are errors, as everywhere).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BundleSpecMap {
    path: PathBuf,
    #[serde(default)]
    public_key: Option<PathBuf>,
    #[serde(default)]
    allow_unsigned: bool,
}

impl<'de> Deserialize<'de> for BundleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BundleSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path, or a mapping with path, publicKey and allowUnsigned")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BundleSpec, E> {
                Ok(BundleSpec::path(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<BundleSpec, A::Error> {
                let b =
                    BundleSpecMap::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(BundleSpec {
                    path: b.path,
                    public_key: b.public_key,
                    allow_unsigned: b.allow_unsigned,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Etcd,
    ControlPlane,
    Worker,
    Lb,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Lb => "lb",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Host {
    /// Node name (also the kubelet's node name and the etcd member name).
    pub name: NodeName,
    /// IP address used for SSH and for cluster traffic.
    #[serde(with = "ip_address")]
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name of an entry in `spec.ssh.bastions`; overrides `spec.ssh.bastion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<String>,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<LabelKey, LabelValue>,
    /// Taints as `key[=value]:Effect`, e.g. `dedicated=infra:NoSchedule`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

impl Host {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The host's IP.
    pub fn ip(&self) -> IpAddr {
        self.address
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KnownHostsPolicy {
    /// Host keys must already be in the known_hosts file (default).
    #[default]
    Strict,
    /// Trust on first use, then pin into the cluster's own known_hosts.
    AcceptNew,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshDefaults {
    #[serde(default = "default_user")]
    pub user: UserName,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the passphrase of an encrypted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase_env: Option<EnvVarName>,
    /// Use the ssh-agent at $SSH_AUTH_SOCK.
    #[serde(default)]
    pub agent: bool,
    #[serde(default)]
    pub known_hosts: KnownHostsPolicy,
    /// known_hosts file to check; default `~/.ssh/known_hosts` plus the cluster's own
    /// `clusters/<name>/known_hosts` (where `accept-new` pins keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
    /// Default bastion for every host (name of an entry in `bastions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bastions: Vec<Bastion>,
    /// Prefix privileged commands with `sudo -n` (needed when `user` is not root).
    #[serde(default)]
    pub sudo: bool,
    /// How many hosts are worked on at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long to wait for a TCP connection + SSH handshake (e.g. 10s; a number is seconds).
    #[serde(
        default = "default_connect_timeout",
        alias = "connectTimeoutSecs",
        with = "crate::duration::serde_field"
    )]
    pub connect_timeout: std::time::Duration,
    /// Bundle items copied host to host: the operator sends each to this many hosts (seeds)
    /// only; the others fetch it from a seed over the hosts' own network (every byte checked
    /// against the manifest's sha256; nothing listens after the phase). 0: the operator sends
    /// every host its copy.
    #[serde(default, skip_serializing_if = "PeerCopy::is_off")]
    pub peer_copy: PeerCopy,
}

/// `spec.ssh.peerCopy`: how many seeds, and the TCP port a seed serves items on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerCopy {
    #[serde(default)]
    pub seeds: usize,
    #[serde(default = "default_peer_port")]
    pub port: u16,
}

impl PeerCopy {
    pub fn is_off(&self) -> bool {
        self.seeds == 0
    }
}

impl Default for PeerCopy {
    fn default() -> Self {
        PeerCopy {
            seeds: 0,
            port: default_peer_port(),
        }
    }
}

/// Free of every port Kubernetes, etcd and the balancers use (kubelet 10248/10250, kube-proxy
/// 10249/10256, controller-manager 10257, scheduler 10259).
fn default_peer_port() -> u16 {
    10200
}

impl Default for SshDefaults {
    fn default() -> Self {
        SshDefaults {
            user: default_user(),
            port: default_ssh_port(),
            key_file: None,
            passphrase_env: None,
            agent: false,
            known_hosts: KnownHostsPolicy::default(),
            known_hosts_file: None,
            bastion: None,
            bastions: Vec::new(),
            sudo: false,
            concurrency: default_concurrency(),
            connect_timeout: default_connect_timeout(),
            peer_copy: PeerCopy::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bastion {
    pub name: String,
    /// Host name or IP of the jump host.
    pub address: HostOrIp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Cni {
    /// bridge + host-local on each node and static routes to the other nodes' pod CIDRs
    /// (like flannel host-gw); hosts must share one L2 segment.
    #[default]
    HostRoutes,
    Flannel,
    Calico,
    /// Install no CNI (the user brings one).
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Iptables,
    Ipvs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    #[serde(default = "default_pod_cidr", rename = "podCIDR", with = "cidr")]
    pub pod_cidr: IpNet,
    #[serde(
        default = "default_service_cidr",
        rename = "serviceCIDR",
        with = "cidr"
    )]
    pub service_cidr: IpNet,
    /// Size of each node's slice of the pod CIDR.
    #[serde(default = "default_node_mask", rename = "nodeCIDRMaskSize")]
    pub node_cidr_mask_size: u8,
    #[serde(default = "default_domain")]
    pub cluster_domain: DnsDomain,
    /// CoreDNS service IP; default: the 10th address of the service CIDR.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "dnsIP",
        with = "opt_ip_address"
    )]
    pub dns_ip: Option<IpAddr>,
    #[serde(default)]
    pub cni: Cni,
    #[serde(default)]
    pub proxy_mode: ProxyMode,
    /// Let kube-proxy raise the kernel's conntrack limits and timeouts (as it does by
    /// default). Turn off where they are not writable (hosts that are containers).
    #[serde(default = "yes")]
    pub proxy_manages_conntrack: bool,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            pod_cidr: default_pod_cidr(),
            service_cidr: default_service_cidr(),
            node_cidr_mask_size: default_node_mask(),
            cluster_domain: default_domain(),
            dns_ip: None,
            cni: Cni::default(),
            proxy_mode: ProxyMode::default(),
            proxy_manages_conntrack: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HaMode {
    /// A haproxy on every node on 127.0.0.1:<localProxyPort> in front of all apiservers.
    #[default]
    LocalProxy,
    /// keepalived VRRP VIP + haproxy on the `lb` hosts (or the control-plane hosts if none).
    Vip,
    /// A load balancer the user runs; only its reachability is checked.
    External,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ha {
    #[serde(default)]
    pub mode: HaMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
    /// `host:port` of an external load balancer (mode `external`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_endpoint: Option<Endpoint>,
    /// Port haproxy listens on 127.0.0.1 in `local-proxy` mode.
    #[serde(default = "default_local_proxy_port")]
    pub local_proxy_port: u16,
}

impl Default for Ha {
    fn default() -> Self {
        Ha {
            mode: HaMode::default(),
            vip: None,
            external_endpoint: None,
            local_proxy_port: default_local_proxy_port(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vip {
    /// The VIP, optionally with the prefix length of the hosts' subnet (`10.0.0.100/16`);
    /// without one, /24 (IPv4) or /64 (IPv6) is assumed.
    pub address: VipAddress,
    /// Interface keepalived puts the VIP on; default: the one holding the host's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceName>,
    #[serde(default = "default_router_id", rename = "routerID")]
    pub router_id: u8,
    /// Port haproxy listens on at the VIP (apiservers keep 6443 on their own addresses).
    #[serde(default = "default_vip_port")]
    pub port: u16,
}

impl Vip {
    /// The VIP's address and the prefix length keepalived puts it on.
    pub fn ip_and_prefix(&self) -> (IpAddr, u8) {
        (self.address.ip, self.address.prefix)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa4096,
}

impl KeyAlgorithm {
    /// As written in the inventory.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa2048",
            KeyAlgorithm::Rsa4096 => "rsa4096",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pki {
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Lifetime of the CAs: a number with a unit y/d/h (e.g. `100y`, `3650d`).
    #[serde(default = "default_ca_validity")]
    pub ca_validity: Lifetime,
    /// Lifetime of every leaf certificate.
    #[serde(default = "default_cert_validity")]
    pub cert_validity: Lifetime,
    /// Extra SANs (IPs or DNS names) for the apiserver serving certificate.
    #[serde(default, rename = "extraSANs", skip_serializing_if = "Vec::is_empty")]
    pub extra_sans: Vec<San>,
    /// Directory holding a user-supplied `ca.crt`/`ca.key` (and optionally `etcd/ca.*`,
    /// `front-proxy-ca.*`), used instead of generating CAs. Relative to the inventory file.
    #[serde(
        default,
        rename = "externalCADir",
        alias = "externalCaDir",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ca_dir: Option<PathBuf>,
}

impl Default for Pki {
    fn default() -> Self {
        Pki {
            algorithm: KeyAlgorithm::default(),
            ca_validity: default_ca_validity(),
            cert_validity: default_cert_validity(),
            extra_sans: Vec::new(),
            external_ca_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Etcd {
    /// Which etcd of the bundle to install, when it holds several (e.g. "3.4.23").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<ItemVersion>,
    #[serde(default = "default_etcd_data_dir")]
    pub data_dir: DataDir,
    #[serde(default = "default_snapshot_count")]
    pub snapshot_count: u64,
    /// Backend quota in bytes (etcd default 2 GiB; 8 GiB is the recommended maximum).
    #[serde(default = "default_quota_backend")]
    pub quota_backend_bytes: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<FlagName, FlagValue>,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            version: None,
            data_dir: default_etcd_data_dir(),
            snapshot_count: default_snapshot_count(),
            quota_backend_bytes: default_quota_backend(),
            extra_args: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ControlPlaneMode {
    /// kube-apiserver & co. as systemd units running the bundle's binaries.
    #[default]
    Systemd,
    /// kubeadm's layout: static pods under /etc/kubernetes/manifests run by the kubelet.
    StaticPods,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    #[serde(default)]
    pub mode: ControlPlaneMode,
    #[serde(default = "default_apiserver_port")]
    pub apiserver_port: u16,
    /// Encrypt Secrets at rest (aescbc key generated into the PKI directory).
    #[serde(default = "yes")]
    pub encrypt_secrets: bool,
    #[serde(default = "yes")]
    pub audit_log: bool,
    /// Taint control-plane nodes `NoSchedule` (kubeadm's default), so workloads go to workers.
    #[serde(default = "yes")]
    pub taint_nodes: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apiserver_extra_args: BTreeMap<FlagName, FlagValue>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controller_manager_extra_args: BTreeMap<FlagName, FlagValue>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scheduler_extra_args: BTreeMap<FlagName, FlagValue>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            mode: ControlPlaneMode::default(),
            apiserver_port: default_apiserver_port(),
            encrypt_secrets: true,
            audit_log: true,
            taint_nodes: true,
            apiserver_extra_args: BTreeMap::new(),
            controller_manager_extra_args: BTreeMap::new(),
            scheduler_extra_args: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerRuntime {
    /// Registry host -> mirror endpoints, e.g. `docker.io: [https://mirror.example.cn]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_mirrors: BTreeMap<RegistryHost, Vec<MirrorUrl>>,
    /// Default: the pause image of the Kubernetes minor (k8s.gcr.io/pause:3.2 for 1.20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<ImageRef>,
    #[serde(default)]
    pub cgroup_driver: CgroupDriver,
    /// containerd's CRI `restrict_oom_score_adj`: needed where the machine lacks
    /// CAP_SYS_RESOURCE (containers such as LXC or systemd-nspawn), harmless elsewhere.
    #[serde(default, rename = "restrictOOMScoreAdj")]
    pub restrict_oom_score_adj: bool,
}

/// Kubelet settings beyond clusterctl's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kubelet {
    /// KubeletConfiguration `evictionHard`, e.g. `imagefs.available: 5%`, `memory.available:
    /// 200Mi`. Empty: the kubelet's defaults (nodefs 10%, imagefs 15%, memory 100Mi).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eviction_hard: BTreeMap<EvictionSignal, Threshold>,
    /// KubeletConfiguration `imageGCHighThresholdPercent`: the image disk usage (%) at which
    /// the kubelet starts deleting unused images. Default 100, never: an air-gapped node
    /// cannot pull a bundle image back (see [`Kubelet::image_gc_thresholds`]).
    #[serde(
        default,
        rename = "imageGCHighThresholdPercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_gc_high_threshold_percent: Option<u8>,
    /// KubeletConfiguration `imageGCLowThresholdPercent`: where that deletion stops. Default
    /// 80 (the kubelet's); must be below the high threshold.
    #[serde(
        default,
        rename = "imageGCLowThresholdPercent",
        skip_serializing_if = "Option::is_none"
    )]
    pub image_gc_low_threshold_percent: Option<u8>,
    /// Extra kubelet flags (`name: value`), checked against the version's flag table by tests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<FlagName, FlagValue>,
    /// KubeletConfiguration `protectKernelDefaults` (CIS 4.2.6): `auto` (default) turns it on
    /// on each node whose kernel settings read back as the kubelet wants them and that can
    /// keep them (not a container); `true` requires that of every node (preflight refuses a
    /// node that cannot); `false` leaves it off.
    #[serde(default, skip_serializing_if = "ProtectKernelDefaults::is_auto")]
    pub protect_kernel_defaults: ProtectKernelDefaults,
    /// How worker nodes get their kubelet certificates: `pushed` (default) or `bootstrap`
    /// (see [`KubeletCertificates`]).
    #[serde(default, skip_serializing_if = "KubeletCertificates::is_pushed")]
    pub certificates: KubeletCertificates,
}

/// `kubelet.certificates`: where a worker's kubelet client and serving certificates come from.
/// Control-plane hosts (and etcd hosts in static-pods mode) always get pushed ones: their
/// kubelet must run before (or without) an apiserver that could sign a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KubeletCertificates {
    /// clusterctl issues each node's client and serving certificate from the cluster CA on
    /// the operator's machine and copies them (with kube-proxy's) to the node; `renew-certs`
    /// renews them. The default: a serving certificate re-requested by a kubelet needs an
    /// approver, and clusterctl is not running between its commands.
    #[default]
    Pushed,
    /// Kubernetes' TLS bootstrap: the node gets the bundle and one bootstrap kubeconfig
    /// (a token of short TTL) and nothing else; its kubelet requests its client certificate
    /// (approved by the controller-manager) and its serving certificate (approved by
    /// clusterctl after checking the name and addresses against the inventory) and rotates
    /// them itself; kube-proxy uses the kubelet's client certificate.
    Bootstrap,
}

impl KubeletCertificates {
    pub fn is_pushed(&self) -> bool {
        *self == KubeletCertificates::Pushed
    }
}

/// `kubelet.protectKernelDefaults`: `auto`, `true` or `false` (YAML booleans or strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtectKernelDefaults {
    #[default]
    Auto,
    On,
    Off,
}

impl ProtectKernelDefaults {
    pub fn is_auto(&self) -> bool {
        *self == ProtectKernelDefaults::Auto
    }
}

impl Serialize for ProtectKernelDefaults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProtectKernelDefaults::Auto => s.serialize_str("auto"),
            ProtectKernelDefaults::On => s.serialize_bool(true),
            ProtectKernelDefaults::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for ProtectKernelDefaults {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `true` unquoted is a YAML boolean, `auto` a string: accept both shapes.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Bool(true)) => Ok(ProtectKernelDefaults::On),
            Ok(Raw::Bool(false)) => Ok(ProtectKernelDefaults::Off),
            Ok(Raw::Str(s)) if s == "auto" => Ok(ProtectKernelDefaults::Auto),
            Ok(Raw::Str(s)) if s == "true" => Ok(ProtectKernelDefaults::On),
            Ok(Raw::Str(s)) if s == "false" => Ok(ProtectKernelDefaults::Off),
            _ => Err(serde::de::Error::custom(
                "kubelet.protectKernelDefaults must be auto, true or false",
            )),
        }
    }
}

impl Kubelet {
    /// (high, low) image GC thresholds in percent, defaults applied. The default high of 100
    /// turns the kubelet's image garbage collection off: a node without a registry would
    /// lose a bundle image it cannot pull again (the runtime phase re-imports a missing one
    /// on every run, and `status` flags it, but a pod needing it meanwhile cannot start).
    pub fn image_gc_thresholds(&self) -> (u8, u8) {
        (
            self.image_gc_high_threshold_percent.unwrap_or(100),
            self.image_gc_low_threshold_percent.unwrap_or(80),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Addons {
    #[serde(default)]
    pub coredns: CoreDns,
    #[serde(default)]
    pub metrics_server: MetricsServer,
    /// Extra manifests (paths relative to the inventory) applied after the built-in add-ons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_manifests: Vec<PathBuf>,
    /// Whether `init` waits for the built-in add-ons' Deployments to become Available.
    #[serde(default)]
    pub wait_for_pods: WaitForPods,
    /// How long to wait for each add-on Deployment (e.g. 5m; a number is seconds).
    #[serde(
        default = "default_addon_wait",
        alias = "waitTimeoutSecs",
        with = "crate::duration::serde_field"
    )]
    pub wait_timeout: std::time::Duration,
}

impl Default for Addons {
    fn default() -> Self {
        Addons {
            coredns: CoreDns::default(),
            metrics_server: MetricsServer::default(),
            extra_manifests: Vec::new(),
            wait_for_pods: WaitForPods::default(),
            wait_timeout: default_addon_wait(),
        }
    }
}

/// When to wait for an add-on's pods to run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WaitForPods {
    /// Only when the add-on's image is an image item of the offline bundle (so it can run
    /// without a registry); otherwise say why the run does not wait.
    #[default]
    Auto,
    /// Always (the images come from a registry or mirror the nodes can reach).
    Always,
    /// Never: apply the objects only.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CoreDns {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_coredns_replicas")]
    pub replicas: u32,
    /// Image reference; default: the one kubeadm uses for the Kubernetes minor
    /// (`KubeVersion::default_coredns_image`). Set it to use a registry mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
}

impl Default for CoreDns {
    fn default() -> Self {
        CoreDns {
            enabled: true,
            replicas: default_coredns_replicas(),
            image: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsServer {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Image reference; default `KubeVersion::default_metrics_server_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
}

impl Default for MetricsServer {
    fn default() -> Self {
        MetricsServer {
            enabled: true,
            image: None,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_user() -> UserName {
    "root".parse().expect("a user name")
}
fn default_ssh_port() -> u16 {
    22
}
fn default_concurrency() -> usize {
    64
}
fn default_connect_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_pod_cidr() -> IpNet {
    "10.244.0.0/16".parse().expect("a CIDR")
}
fn default_service_cidr() -> IpNet {
    "10.96.0.0/12".parse().expect("a CIDR")
}
fn default_node_mask() -> u8 {
    24
}
fn default_domain() -> DnsDomain {
    "cluster.local".parse().expect("a DNS domain")
}
fn default_local_proxy_port() -> u16 {
    6443
}
fn default_router_id() -> u8 {
    51
}
fn default_vip_port() -> u16 {
    8443
}
fn default_ca_validity() -> Lifetime {
    "100y".parse().expect("a lifetime")
}
fn default_cert_validity() -> Lifetime {
    "50y".parse().expect("a lifetime")
}
fn default_etcd_data_dir() -> DataDir {
    "/var/lib/etcd".parse().expect("a data directory")
}
fn default_snapshot_count() -> u64 {
    50000
}
fn default_quota_backend() -> u64 {
    8 * 1024 * 1024 * 1024
}
fn default_apiserver_port() -> u16 {
    6443
}
fn default_coredns_replicas() -> u32 {
    2
}
fn default_addon_wait() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}
