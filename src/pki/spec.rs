//! The whole PKI as one declarative table (kubeadm's `certlist.go` idea).
//!
//! `cert_list` turns an inventory into every leaf certificate the cluster needs: its CA, subject,
//! SANs, usages, where it is kept locally (pki files and/or a kubeconfig) and which hosts get it
//! at which on-host path. Generation, renewal, expiry reports and `files_for_host` all read this
//! table; nothing is listed twice.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::inventory::{HaMode, Host, Inventory, Role};

/// The three CAs kubeadm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ca {
    /// `ca.crt`/`ca.key`: signs apiserver, kubelet and kubeconfig client certs.
    Cluster,
    /// `etcd/ca.crt`/`etcd/ca.key`: signs etcd server/peer/client certs.
    Etcd,
    /// `front-proxy-ca.crt`/`front-proxy-ca.key`: signs the aggregation-layer client cert.
    FrontProxy,
}

impl Ca {
    pub const ALL: [Ca; 3] = [Ca::Cluster, Ca::Etcd, Ca::FrontProxy];

    /// File base name under `pki/` (and under `spec.pki.externalCADir`).
    pub fn base(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    /// Common name, as kubeadm sets it.
    pub fn common_name(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    /// Roles whose hosts get the CA certificate (`/etc/kubernetes/pki/<base>.crt`).
    fn cert_to(self) -> &'static [Role] {
        match self {
            Ca::Cluster => &[Role::ControlPlane, Role::Worker],
            Ca::Etcd => &[Role::ControlPlane, Role::Etcd],
            Ca::FrontProxy => &[Role::ControlPlane],
        }
    }

    /// Roles whose hosts get the CA key. Only the cluster CA key leaves the operator's machine:
    /// kube-controller-manager signs kubelet CSRs with it. The etcd and front-proxy CA keys
    /// are not needed at run time and stay local.
    fn key_to(self) -> &'static [Role] {
        match self {
            Ca::Cluster => &[Role::ControlPlane],
            Ca::Etcd | Ca::FrontProxy => &[],
        }
    }
}

/// Extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Server and client (etcd server and peer certs).
    Both,
}

impl Usage {
    pub fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::Both)
    }
    pub fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::Both)
    }
}

/// A subject alternative name (one type with the inventory's `pki.extraSANs`).
pub use crate::inventory::types::San;

/// A kubeconfig that embeds a certificate from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigOut {
    /// Relative to the local `kubeconfig/` directory, e.g. `admin.conf`, `nodes/w1/kubelet.conf`.
    pub file: PathBuf,
    /// `https://host:port` of the apiserver (or the HA endpoint) this client talks to.
    pub server: String,
    /// On-host path, e.g. `/etc/kubernetes/kubelet.conf`.
    pub remote: Option<PathBuf>,
}

/// Which hosts receive a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    /// Every host that has one of these roles.
    Roles(&'static [Role]),
    /// Only this host.
    Host(String),
    /// Kept on the operator's machine only.
    Nowhere,
}

impl Deliver {
    fn includes(&self, h: &Host) -> bool {
        match self {
            Deliver::Roles(roles) => roles.iter().any(|r| h.has(*r)),
            Deliver::Host(name) => *name == h.name,
            Deliver::Nowhere => false,
        }
    }
}

/// One leaf certificate of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Unique name: kubeadm's name, plus `@host` for per-host certs (`etcd-server@cp1`).
    pub name: String,
    /// The host a per-host cert belongs to; None for cluster-wide certs.
    pub host: Option<String>,
    pub ca: Ca,
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Sorted and deduplicated.
    pub sans: Vec<San>,
    pub usage: Usage,
    /// Local `<base>.crt`/`<base>.key`, relative to `pki/`; None if only in a kubeconfig.
    pub files: Option<PathBuf>,
    /// On-host base path of the files (`/etc/kubernetes/pki/apiserver`), if they are shipped.
    pub remote: Option<PathBuf>,
    pub kubeconfig: Option<KubeconfigOut>,
    /// Hosts that get the files and/or the kubeconfig.
    pub deliver: Deliver,
}

pub const SA_KEY: &str = "sa.key";
/// The cluster CA's signing certificate alone (`ca.crt` may be a bundle: see rotation.rs),
/// for kube-controller-manager's --cluster-signing-cert-file; on the hosts that get the key.
pub const CA_SIGNING_CRT: &str = "ca-signing.crt";
pub const SA_PUB: &str = "sa.pub";
const REMOTE_PKI: &str = "/etc/kubernetes/pki";
const REMOTE_KUBELET_PKI: &str = "/var/lib/kubelet/pki";

/// `pki/nodes/<host>/...`: local base of a per-host file.
pub fn node_base(host: &str, rel: &str) -> PathBuf {
    Path::new("nodes").join(host).join(rel)
}

fn sans(items: impl IntoIterator<Item = San>) -> Vec<San> {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn localhost() -> [San; 2] {
    [
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        San::Dns("localhost".into()),
    ]
}

/// SANs of the apiserver serving certificate of control-plane host `host`, as kubeadm issues
/// it per node: the host's own name and address, the cluster endpoint (VIP or external; in
/// local-proxy mode the nodes' proxies reach it on 127.0.0.1), localhost, the
/// `kubernetes.default` names, the service IP and `spec.pki.extraSANs`. No other control-plane
/// host's name or address: a new control-plane host changes no existing apiserver's
/// certificate, and so restarts none.
pub fn apiserver_sans(inv: &Inventory, host: &Host) -> Vec<San> {
    let domain = &inv.spec.network.cluster_domain;
    let mut v: Vec<San> = vec![San::Ip(host.ip()), San::Dns(host.name.to_string())];
    match inv.spec.ha.mode {
        HaMode::Vip | HaMode::External => v.push(San::parse(&inv.apiserver_endpoint_for_admin().0)),
        HaMode::LocalProxy => {}
    }
    v.extend(localhost());
    for d in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
        v.push(San::Dns(d.into()));
    }
    v.push(San::Dns(format!("kubernetes.default.svc.{domain}")));
    v.push(San::Ip(inv.kubernetes_service_ip()));
    v.extend(inv.spec.pki.extra_sans.iter().cloned());
    sans(v)
}

#[allow(clippy::too_many_arguments)]
fn cert(
    name: &str,
    host: Option<&Host>,
    ca: Ca,
    cn: &str,
    orgs: &[&str],
    sans_: Vec<San>,
    usage: Usage,
    files: Option<PathBuf>,
    remote: Option<PathBuf>,
    kubeconfig: Option<KubeconfigOut>,
    deliver: Deliver,
) -> CertSpec {
    CertSpec {
        name: match host {
            Some(h) => format!("{name}@{}", h.name),
            None => name.to_string(),
        },
        host: host.map(|h| h.name.to_string()),
        ca,
        common_name: cn.to_string(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        sans: sans(sans_),
        usage,
        files,
        remote,
        kubeconfig,
        deliver,
    }
}

fn kc(file: PathBuf, (host, port): (String, u16), remote: Option<&str>) -> Option<KubeconfigOut> {
    Some(KubeconfigOut {
        file,
        server: Inventory::url(&host, port),
        remote: remote.map(PathBuf::from),
    })
}

fn remote(rel: &str) -> Option<PathBuf> {
    Some(Path::new(REMOTE_PKI).join(rel))
}

/// Every leaf certificate (and kubeconfig) of the cluster, in a stable order.
pub fn cert_list(inv: &Inventory) -> Vec<CertSpec> {
    use Deliver::Roles;
    use Usage::{Both, Client, Server};
    const CP: &[Role] = &[Role::ControlPlane];
    const ETCD: &[Role] = &[Role::Etcd];
    let p = |s: &str| Some(PathBuf::from(s));
    let mut v = vec![
        cert(
            "apiserver-kubelet-client",
            None,
            Ca::Cluster,
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            vec![],
            Client,
            p("apiserver-kubelet-client"),
            remote("apiserver-kubelet-client"),
            None,
            Roles(CP),
        ),
        cert(
            "apiserver-etcd-client",
            None,
            Ca::Etcd,
            "kube-apiserver-etcd-client",
            &["system:masters"],
            vec![],
            Client,
            p("apiserver-etcd-client"),
            remote("apiserver-etcd-client"),
            None,
            Roles(CP),
        ),
        cert(
            "front-proxy-client",
            None,
            Ca::FrontProxy,
            "front-proxy-client",
            &[],
            vec![],
            Client,
            p("front-proxy-client"),
            remote("front-proxy-client"),
            None,
            Roles(CP),
        ),
        cert(
            "etcd-healthcheck-client",
            None,
            Ca::Etcd,
            "kube-etcd-healthcheck-client",
            &[],
            vec![],
            Client,
            p("etcd/healthcheck-client"),
            remote("etcd/healthcheck-client"),
            None,
            Roles(ETCD),
        ),
        cert(
            "admin.conf",
            None,
            Ca::Cluster,
            "kubernetes-admin",
            &["system:masters"],
            vec![],
            Client,
            None,
            None,
            kc(
                "admin.conf".into(),
                inv.apiserver_endpoint_for_admin(),
                Some("/etc/kubernetes/admin.conf"),
            ),
            Roles(CP),
        ),
    ];
    for h in inv.etcd_hosts() {
        // kubeadm's etcd SANs: the host, localhost over IPv4 and IPv6.
        let s = || {
            sans(
                [
                    San::Ip(h.ip()),
                    San::Dns(h.name.to_string()),
                    San::Ip(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
                ]
                .into_iter()
                .chain(localhost()),
            )
        };
        let one = Deliver::Host(h.name.to_string());
        v.push(cert(
            "etcd-server",
            Some(h),
            Ca::Etcd,
            &h.name,
            &[],
            s(),
            Both,
            Some(node_base(&h.name, "etcd/server")),
            remote("etcd/server"),
            None,
            one.clone(),
        ));
        v.push(cert(
            "etcd-peer",
            Some(h),
            Ca::Etcd,
            &h.name,
            &[],
            s(),
            Both,
            Some(node_base(&h.name, "etcd/peer")),
            remote("etcd/peer"),
            None,
            one,
        ));
    }
    for h in inv.control_plane_hosts() {
        let own = (h.address.to_string(), inv.spec.control_plane.apiserver_port);
        let dir = Path::new("nodes").join(h.name.as_str());
        let one = Deliver::Host(h.name.to_string());
        // Its own serving certificate (kubeadm's per-node apiserver.crt), at the path every
        // apiserver reads.
        v.push(cert(
            "apiserver",
            Some(h),
            Ca::Cluster,
            "kube-apiserver",
            &[],
            apiserver_sans(inv, h),
            Server,
            Some(node_base(&h.name, "apiserver")),
            remote("apiserver"),
            None,
            one.clone(),
        ));
        v.push(cert(
            "controller-manager.conf",
            Some(h),
            Ca::Cluster,
            "system:kube-controller-manager",
            &[],
            vec![],
            Client,
            None,
            None,
            kc(
                dir.join("controller-manager.conf"),
                own.clone(),
                Some("/etc/kubernetes/controller-manager.conf"),
            ),
            one.clone(),
        ));
        v.push(cert(
            "scheduler.conf",
            Some(h),
            Ca::Cluster,
            "system:kube-scheduler",
            &[],
            vec![],
            Client,
            None,
            None,
            kc(
                dir.join("scheduler.conf"),
                own,
                Some("/etc/kubernetes/scheduler.conf"),
            ),
            one,
        ));
    }
    // A TLS-bootstrap worker gets no certificate from here: its kubelet requests its own
    // from the cluster (and kube-proxy uses the kubelet's client certificate).
    for h in inv.node_hosts().filter(|h| !inv.kubelet_bootstraps(h)) {
        let ep = inv.apiserver_endpoint_for(h);
        let dir = Path::new("nodes").join(h.name.as_str());
        let one = Deliver::Host(h.name.to_string());
        let node_user = format!("system:node:{}", h.name);
        // The kubelet's client cert lives in its kubeconfig on the host; the local files are
        // the operator's copy (not shipped separately).
        v.push(cert(
            "kubelet-client",
            Some(h),
            Ca::Cluster,
            &node_user,
            &["system:nodes"],
            vec![],
            Client,
            Some(node_base(&h.name, "kubelet-client")),
            None,
            kc(
                dir.join("kubelet.conf"),
                ep.clone(),
                Some("/etc/kubernetes/kubelet.conf"),
            ),
            one.clone(),
        ));
        v.push(cert(
            "kubelet",
            Some(h),
            Ca::Cluster,
            &h.name,
            &[],
            vec![San::Dns(h.name.to_string()), San::Ip(h.ip())],
            Server,
            Some(node_base(&h.name, "kubelet")),
            Some(Path::new(REMOTE_KUBELET_PKI).join("kubelet")),
            None,
            one.clone(),
        ));
        v.push(cert(
            "kube-proxy.conf",
            Some(h),
            Ca::Cluster,
            "system:kube-proxy",
            &[],
            vec![],
            Client,
            None,
            None,
            kc(
                dir.join("kube-proxy.conf"),
                ep,
                Some("/etc/kubernetes/kube-proxy.conf"),
            ),
            one,
        ));
    }
    debug_assert!(
        v.iter()
            .all(|c| c.files.is_some() || c.kubeconfig.is_some())
    );
    v
}

/// One file to copy to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    /// Relative to the cluster's state directory (`clusters/<name>/`), e.g. `pki/apiserver.crt`.
    pub local: PathBuf,
    /// Absolute path on the host, kubeadm's layout.
    pub remote: PathBuf,
    pub mode: u32,
}

pub const CERT_MODE: u32 = 0o644;
pub const KEY_MODE: u32 = 0o600;

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

pub fn crt_path(base: &Path) -> PathBuf {
    with_ext(base, "crt")
}

pub fn key_path(base: &Path) -> PathBuf {
    with_ext(base, "key")
}

/// Every PKI file and kubeconfig `host` needs, local (relative to the state dir) to remote.
/// Workers never get a CA key; etcd-only hosts get only etcd certs (in static-pods mode also
/// what their kubelet and kube-proxy need: they are nodes); lb-only hosts get nothing.
pub fn files_for_host(inv: &Inventory, host: &Host) -> Vec<HostFile> {
    let pki = Path::new("pki");
    let mut out = Vec::new();
    let mut add = |local: PathBuf, remote: PathBuf, mode: u32| {
        out.push(HostFile {
            local,
            remote,
            mode,
        })
    };
    for ca in Ca::ALL {
        let base = Path::new(ca.base());
        let rbase = Path::new(REMOTE_PKI).join(ca.base());
        // Every kubelet verifies clients against the cluster CA.
        if ca.cert_to().iter().any(|r| host.has(*r))
            || (ca == Ca::Cluster && inv.runs_kubelet(host))
        {
            add(pki.join(crt_path(base)), crt_path(&rbase), CERT_MODE);
        }
        if ca.key_to().iter().any(|r| host.has(*r)) {
            add(pki.join(key_path(base)), key_path(&rbase), KEY_MODE);
            if ca == Ca::Cluster {
                add(
                    pki.join(CA_SIGNING_CRT),
                    Path::new(REMOTE_PKI).join(CA_SIGNING_CRT),
                    CERT_MODE,
                );
            }
        }
    }
    if host.has(Role::ControlPlane) {
        add(
            pki.join(SA_KEY),
            Path::new(REMOTE_PKI).join(SA_KEY),
            KEY_MODE,
        );
        add(
            pki.join(SA_PUB),
            Path::new(REMOTE_PKI).join(SA_PUB),
            CERT_MODE,
        );
    }
    for c in cert_list(inv) {
        if !c.deliver.includes(host) {
            continue;
        }
        if let (Some(files), Some(r)) = (&c.files, &c.remote) {
            add(pki.join(crt_path(files)), crt_path(r), CERT_MODE);
            add(pki.join(key_path(files)), key_path(r), KEY_MODE);
        }
        if let Some(k) = &c.kubeconfig
            && let Some(r) = &k.remote
        {
            add(Path::new("kubeconfig").join(&k.file), r.clone(), KEY_MODE);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inventory::load_str;

    /// Etcd-only, control-plane-only, stacked, worker and lb hosts: every kind of host file.
    pub(crate) const INV: &str = "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: cp1, address: 10.77.0.11, roles: [control-plane]}
    - {name: e1, address: 10.77.0.21, roles: [etcd]}
    - {name: ce, address: 10.77.0.12, roles: [etcd, control-plane]}
    - {name: w1, address: 10.77.0.31, roles: [worker]}
    - {name: lb1, address: 10.77.0.41, roles: [lb]}
  ha: {mode: vip, vip: {address: 10.77.0.10}}
";

    fn files(host: &str) -> Vec<(String, String, u32)> {
        let inv = load_str(INV, Path::new("t.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory;
        let h = inv.host(host).unwrap();
        files_for_host(&inv, h)
            .into_iter()
            .map(|f| {
                (
                    f.local.display().to_string(),
                    f.remote.display().to_string(),
                    f.mode,
                )
            })
            .collect()
    }

    fn remotes(host: &str) -> Vec<String> {
        let mut v: Vec<String> = files(host).into_iter().map(|f| f.1).collect();
        v.sort();
        v
    }

    #[test]
    fn worker_gets_its_kubelet_files_and_no_ca_key() {
        assert_eq!(
            remotes("w1"),
            [
                "/etc/kubernetes/kube-proxy.conf",
                "/etc/kubernetes/kubelet.conf",
                "/etc/kubernetes/pki/ca.crt",
                "/var/lib/kubelet/pki/kubelet.crt",
                "/var/lib/kubelet/pki/kubelet.key",
            ]
        );
        let f = files("w1");
        assert!(f.contains(&(
            "kubeconfig/nodes/w1/kubelet.conf".into(),
            "/etc/kubernetes/kubelet.conf".into(),
            0o600
        )));
        assert!(f.contains(&(
            "pki/nodes/w1/kubelet.key".into(),
            "/var/lib/kubelet/pki/kubelet.key".into(),
            0o600
        )));
        assert!(f.contains(&(
            "pki/ca.crt".into(),
            "/etc/kubernetes/pki/ca.crt".into(),
            0o644
        )));
    }

    #[test]
    fn a_bootstrap_worker_gets_only_the_ca_certificate_and_control_planes_keep_theirs() {
        let text = INV.replace(
            "  ha: {mode: vip",
            "  kubelet: {certificates: bootstrap}\n  ha: {mode: vip",
        );
        let inv = load_str(&text, Path::new("t.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory;
        let w1 = inv.host("w1").unwrap();
        assert!(inv.kubelet_bootstraps(w1));
        let remotes: Vec<String> = files_for_host(&inv, w1)
            .into_iter()
            .map(|f| f.remote.display().to_string())
            .collect();
        assert_eq!(remotes, ["/etc/kubernetes/pki/ca.crt"]);
        assert!(
            !cert_list(&inv)
                .iter()
                .any(|c| c.host.as_deref() == Some("w1"))
        );
        // A control-plane node's kubelet runs before any apiserver could sign for it.
        let cp1 = inv.host("cp1").unwrap();
        assert!(!inv.kubelet_bootstraps(cp1));
        assert!(
            files_for_host(&inv, cp1)
                .iter()
                .any(|f| f.remote == Path::new("/var/lib/kubelet/pki/kubelet.crt"))
        );
    }

    #[test]
    fn etcd_only_host_gets_only_etcd_certs() {
        assert_eq!(
            remotes("e1"),
            [
                "/etc/kubernetes/pki/etcd/ca.crt",
                "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                "/etc/kubernetes/pki/etcd/healthcheck-client.key",
                "/etc/kubernetes/pki/etcd/peer.crt",
                "/etc/kubernetes/pki/etcd/peer.key",
                "/etc/kubernetes/pki/etcd/server.crt",
                "/etc/kubernetes/pki/etcd/server.key",
            ]
        );
        let f = files("e1");
        assert!(f.contains(&(
            "pki/nodes/e1/etcd/peer.key".into(),
            "/etc/kubernetes/pki/etcd/peer.key".into(),
            0o600
        )));
    }

    #[test]
    fn control_plane_gets_the_control_plane_set() {
        let cp = remotes("cp1");
        for want in [
            "/etc/kubernetes/admin.conf",
            "/etc/kubernetes/controller-manager.conf",
            "/etc/kubernetes/scheduler.conf",
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/kube-proxy.conf",
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/pki/ca.key",
            "/etc/kubernetes/pki/apiserver.crt",
            "/etc/kubernetes/pki/apiserver.key",
            "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
            "/etc/kubernetes/pki/apiserver-etcd-client.key",
            "/etc/kubernetes/pki/front-proxy-ca.crt",
            "/etc/kubernetes/pki/front-proxy-client.key",
            "/etc/kubernetes/pki/etcd/ca.crt",
            "/etc/kubernetes/pki/sa.key",
            "/etc/kubernetes/pki/sa.pub",
        ] {
            assert!(cp.iter().any(|r| r == want), "cp1 lacks {want}: {cp:?}");
        }
        // Not an etcd member: no etcd serving certs; CA keys other than ca.key stay local.
        for absent in [
            "etcd/server",
            "etcd/peer",
            "etcd/ca.key",
            "front-proxy-ca.key",
            "healthcheck",
        ] {
            assert!(
                !cp.iter().any(|r| r.contains(absent)),
                "cp1 must not get {absent}"
            );
        }
        let ce = remotes("ce");
        assert!(
            ce.iter()
                .any(|r| r == "/etc/kubernetes/pki/etcd/server.crt")
        );
        assert!(ce.iter().any(|r| r == "/etc/kubernetes/pki/apiserver.crt"));
        assert!(files("ce").contains(&(
            "pki/nodes/ce/etcd/server.crt".into(),
            "/etc/kubernetes/pki/etcd/server.crt".into(),
            0o644
        )));
        let remote_set: BTreeSet<_> = ce.iter().collect();
        assert_eq!(remote_set.len(), ce.len(), "no remote path twice");
    }

    #[test]
    fn etcd_only_host_of_static_pods_mode_is_a_node() {
        let text = INV.replace(
            "  ha: {mode: vip",
            "  controlPlane: {mode: static-pods}\n  ha: {mode: vip",
        );
        let inv = load_str(&text, Path::new("t.yaml")).unwrap().inventory;
        let e1 = inv.host("e1").unwrap();
        assert!(inv.runs_kubelet(e1) && inv.is_etcd_only_node(e1));
        let mut got: Vec<String> = files_for_host(&inv, e1)
            .into_iter()
            .map(|f| f.remote.display().to_string())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "/etc/kubernetes/kube-proxy.conf",
                "/etc/kubernetes/kubelet.conf",
                "/etc/kubernetes/pki/ca.crt",
                "/etc/kubernetes/pki/etcd/ca.crt",
                "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
                "/etc/kubernetes/pki/etcd/healthcheck-client.key",
                "/etc/kubernetes/pki/etcd/peer.crt",
                "/etc/kubernetes/pki/etcd/peer.key",
                "/etc/kubernetes/pki/etcd/server.crt",
                "/etc/kubernetes/pki/etcd/server.key",
                "/var/lib/kubelet/pki/kubelet.crt",
                "/var/lib/kubelet/pki/kubelet.key",
            ]
        );
        // Its kubelet's client certificate names the node, like every other node's.
        let list = cert_list(&inv);
        let kc = list.iter().find(|c| c.name == "kubelet-client@e1").unwrap();
        assert_eq!(kc.common_name, "system:node:e1");
        assert_eq!(kc.organizations, ["system:nodes"]);
        // Control-plane and worker hosts get the same files in both modes.
        let systemd = load_str(INV, Path::new("t.yaml")).unwrap().inventory;
        for h in ["cp1", "ce", "w1", "lb1"] {
            assert_eq!(
                files_for_host(&inv, inv.host(h).unwrap()),
                files_for_host(&systemd, systemd.host(h).unwrap()),
                "{h}"
            );
        }
    }

    #[test]
    fn each_control_plane_host_has_its_own_apiserver_certificate() {
        let inv = load_str(INV, Path::new("t.yaml")).unwrap().inventory;
        let list = cert_list(&inv);
        let api: Vec<&CertSpec> = list
            .iter()
            .filter(|c| c.name.starts_with("apiserver@"))
            .collect();
        assert_eq!(
            api.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["apiserver@cp1", "apiserver@ce"]
        );
        assert!(!list.iter().any(|c| c.name == "apiserver"), "no shared one");
        let cp1 = api[0];
        assert_eq!(cp1.deliver, Deliver::Host("cp1".into()));
        assert_eq!(cp1.files.as_deref(), Some(Path::new("nodes/cp1/apiserver")));
        assert_eq!(
            cp1.remote.as_deref(),
            Some(Path::new("/etc/kubernetes/pki/apiserver"))
        );
        let want: Vec<San> = sans(
            [
                "10.77.0.11",
                "cp1",
                "10.77.0.10", // the VIP
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ]
            .map(San::parse),
        );
        assert_eq!(cp1.sans, want);
        // The other control-plane host's name and address are not in it.
        assert!(!cp1.sans.contains(&San::parse("ce")));
        assert!(!cp1.sans.contains(&San::parse("10.77.0.12")));
        assert!(api[1].sans.contains(&San::parse("10.77.0.12")));
        // Only its own host gets it, at kubeadm's path.
        assert!(remotes("cp1").contains(&"/etc/kubernetes/pki/apiserver.crt".to_string()));
        assert!(files("cp1").contains(&(
            "pki/nodes/cp1/apiserver.key".into(),
            "/etc/kubernetes/pki/apiserver.key".into(),
            0o600
        )));
        assert!(!remotes("w1").iter().any(|r| r.contains("apiserver.")));
    }

    #[test]
    fn a_new_control_plane_host_changes_no_existing_apiserver_certificate() {
        let two = load_str(INV, Path::new("t.yaml")).unwrap().inventory;
        let text = INV.replace(
            "    - {name: w1,",
            "    - {name: cp3, address: 10.77.0.13, roles: [control-plane]}\n    - {name: w1,",
        );
        let three = load_str(&text, Path::new("t.yaml")).unwrap().inventory;
        for h in ["cp1", "ce"] {
            let name = format!("apiserver@{h}");
            let before = cert_list(&two).into_iter().find(|c| c.name == name);
            let after = cert_list(&three).into_iter().find(|c| c.name == name);
            assert_eq!(before, after, "{h}");
        }
        // Extra SANs and (local-proxy mode) no endpoint SAN beyond 127.0.0.1.
        let lp = text.replace(
            "  ha: {mode: vip, vip: {address: 10.77.0.10}}",
            "  ha: {mode: local-proxy}\n  pki: {extraSANs: [api.example.org]}",
        );
        let inv = load_str(&lp, Path::new("t.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory;
        let cp3 = cert_list(&inv)
            .into_iter()
            .find(|c| c.name == "apiserver@cp3")
            .unwrap();
        assert!(cp3.sans.contains(&San::parse("api.example.org")));
        assert!(cp3.sans.contains(&San::parse("127.0.0.1")));
        assert!(cp3.sans.contains(&San::parse("10.77.0.13")));
        assert!(!cp3.sans.contains(&San::parse("10.77.0.10")));
        assert!(!cp3.sans.contains(&San::parse("10.77.0.11")));
    }

    #[test]
    fn lb_only_host_gets_nothing() {
        assert!(files("lb1").is_empty());
    }

    #[test]
    fn every_name_is_unique() {
        let inv = load_str(INV, Path::new("t.yaml")).unwrap().inventory;
        let list = cert_list(&inv);
        let names: BTreeSet<_> = list.iter().map(|c| &c.name).collect();
        assert_eq!(names.len(), list.len());
        let files: BTreeSet<_> = list.iter().filter_map(|c| c.files.as_ref()).collect();
        assert_eq!(
            files.len(),
            list.iter().filter(|c| c.files.is_some()).count()
        );
    }
}
