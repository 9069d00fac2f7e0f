//! `clusterctl inventory import --from kubeasz clusters/<name>/hosts`: a kubeasz Ansible INI
//! inventory (and its `config.yml` beside it, when present) to a clusterctl inventory.
//!
//! Both kubeasz layouts are read: 3.x (`[kube_master]`, `[kube_node]`, `[ex_lb]`,
//! `k8s_nodename=`) and 2.x (`[kube-master]`, `[kube-node]`, `[ex-lb]`). What has no equivalent
//! (harbor, chrony, unsupported CNIs) is reported as a note on stderr, never dropped silently.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};

use super::model::*;

/// One host line of the INI file: `ADDRESS [var=value ...]`.
#[derive(Debug, Clone, PartialEq)]
struct HostLine {
    host: String,
    vars: BTreeMap<String, String>,
}

/// The parsed INI: groups of host lines (section names normalised to `_`) and `[all:vars]`.
#[derive(Debug, Default)]
struct AnsibleInventory {
    groups: BTreeMap<String, Vec<HostLine>>,
    /// Order in which hosts first appear, to keep the user's order.
    order: Vec<String>,
    vars: BTreeMap<String, String>,
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

/// Splits `a=1 b='x y' c="z"` into pairs, honouring quotes.
fn split_vars(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    let (mut cur, mut quote) = (String::new(), None::<char>);
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    for t in tokens {
        if let Some((k, v)) = t.split_once('=') {
            out.push((k.to_string(), unquote(v)));
        }
    }
    out
}

fn parse_ini(text: &str, file: &Path) -> anyhow::Result<AnsibleInventory> {
    let mut inv = AnsibleInventory::default();
    let mut section = String::from("ungrouped");
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
                bail!(
                    "{}:{}: `{line}` is not a section header like [kube_master]",
                    file.display(),
                    n + 1
                );
            };
            section = name.trim().replace('-', "_");
            continue;
        }
        if section == "all:vars" {
            let Some((k, v)) = line.split_once('=') else {
                bail!(
                    "{}:{}: `{line}` in [all:vars] is not KEY=value",
                    file.display(),
                    n + 1
                );
            };
            inv.vars.insert(k.trim().to_string(), unquote(v));
            continue;
        }
        if section.ends_with(":vars") || section.ends_with(":children") {
            continue; // group vars / nesting: nothing in kubeasz's hosts uses them for us
        }
        let (host, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let vars: BTreeMap<String, String> = split_vars(rest).into_iter().collect();
        if !inv.order.iter().any(|h| h == host) {
            inv.order.push(host.to_string());
        }
        inv.groups
            .entry(section.clone())
            .or_default()
            .push(HostLine {
                host: host.to_string(),
                vars,
            });
    }
    Ok(inv)
}

/// Reads kubeasz's `config.yml` loosely: only the scalar keys the import uses.
fn read_config(path: &Path) -> anyhow::Result<BTreeMap<String, serde_saphyr_value::Scalar>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))
}

/// Loose scalar/list values of kubeasz's config.yml.
mod serde_saphyr_value {
    use serde::Deserialize;

    #[derive(Debug, Clone, Deserialize)]
    #[serde(untagged)]
    pub enum Scalar {
        Bool(bool),
        Int(i64),
        Str(String),
        List(Vec<Scalar>),
        Other(serde::de::IgnoredAny),
    }

    impl Scalar {
        pub fn as_string(&self) -> Option<String> {
            match self {
                Scalar::Bool(b) => Some(b.to_string()),
                Scalar::Int(i) => Some(i.to_string()),
                Scalar::Str(s) => Some(s.clone()),
                _ => None,
            }
        }
        pub fn as_list(&self) -> Vec<String> {
            match self {
                Scalar::List(l) => l.iter().filter_map(Scalar::as_string).collect(),
                _ => Vec::new(),
            }
        }
    }
}

/// Options the kubeasz files may not carry.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Used when config.yml is absent or still has its `__k8s_ver__` placeholder.
    pub kubernetes_version: Option<String>,
    /// Cluster name; default: config.yml's CLUSTER_NAME, else the directory holding `hosts`.
    pub name: Option<String>,
}

/// The result of an import: the inventory and notes about what did not carry over.
#[derive(Debug)]
pub struct Imported {
    pub inventory: Inventory,
    pub notes: Vec<String>,
}

pub fn import(hosts_file: &Path, opts: &ImportOptions) -> anyhow::Result<Imported> {
    // Every value becomes the inventory's type here, or the import stops naming the kubeasz
    // variable it came from: nothing unchecked reaches the written inventory.
    fn typed<T: std::str::FromStr<Err = super::types::Invalid>>(
        file: &Path,
        what: &str,
        v: &str,
    ) -> anyhow::Result<T> {
        v.parse::<T>()
            .map_err(|e| anyhow::anyhow!("{}: {what}: {}; {}", file.display(), e.message, e.fix))
    }
    let f = hosts_file;
    let text = std::fs::read_to_string(hosts_file)
        .with_context(|| format!("cannot read kubeasz hosts file {}", hosts_file.display()))?;
    let ini = parse_ini(&text, hosts_file)?;
    let config_path = hosts_file.with_file_name("config.yml");
    let config = if config_path.is_file() {
        read_config(&config_path)?
    } else {
        BTreeMap::new()
    };
    let cfg = |k: &str| {
        config
            .get(k)
            .and_then(|v| v.as_string())
            .filter(|v| !v.starts_with("__"))
    };
    let mut notes = Vec::new();

    // Hosts: one entry per address, roles merged over groups, in the user's order.
    let group = |g: &str| ini.groups.get(g).map(Vec::as_slice).unwrap_or(&[]);
    let mut hosts: Vec<Host> = Vec::new();
    for addr_or_alias in &ini.order {
        let lines: Vec<(&str, &HostLine)> = ini
            .groups
            .iter()
            .flat_map(|(g, ls)| {
                ls.iter()
                    .filter(|l| &l.host == addr_or_alias)
                    .map(move |l| (g.as_str(), l))
            })
            .collect();
        let var = |k: &str| {
            lines
                .iter()
                .find_map(|(_, l)| l.vars.get(k).cloned())
                .filter(|v| !v.is_empty())
        };
        let mut roles = Vec::new();
        for (g, _) in &lines {
            let role = match *g {
                "etcd" => Some(Role::Etcd),
                "kube_master" => Some(Role::ControlPlane),
                "kube_node" => Some(Role::Worker),
                "ex_lb" => Some(Role::Lb),
                other => {
                    notes.push(format!("host {addr_or_alias}: group [{other}] has no clusterctl equivalent; not imported"));
                    None
                }
            };
            if let Some(r) = role
                && !roles.contains(&r)
            {
                roles.push(r);
            }
        }
        if roles.is_empty() {
            continue;
        }
        let address = var("ansible_host")
            .or_else(|| var("ansible_ssh_host"))
            .unwrap_or_else(|| addr_or_alias.clone());
        // kubeasz: node name = k8s_nodename ('_' -> '-', lowercased), else the inventory host.
        let name = var("k8s_nodename")
            .map(|n| n.replace('_', "-").to_lowercase())
            .unwrap_or_else(|| addr_or_alias.clone());
        let address: std::net::IpAddr = address.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: host {addr_or_alias}: `{address}` is not an IP address (set ansible_host to the host's IP)",
                f.display()
            )
        })?;
        hosts.push(Host {
            name: typed(f, &format!("host {addr_or_alias}: node name"), &name)?,
            address,
            port: var("ansible_port")
                .or_else(|| var("ansible_ssh_port"))
                .and_then(|p| p.parse().ok()),
            user: var("ansible_user")
                .or_else(|| var("ansible_ssh_user"))
                .map(|u| typed(f, &format!("host {addr_or_alias}: ansible_user"), &u))
                .transpose()?,
            key_file: var("ansible_ssh_private_key_file").map(Into::into),
            bastion: None,
            roles,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        });
    }

    let v = |k: &str| ini.vars.get(k).cloned().filter(|v| !v.is_empty());
    let mut network = Network::default();
    if let Some(c) = v("CLUSTER_CIDR") {
        network.pod_cidr = super::types::cidr::parse(&c).map_err(|e| {
            anyhow::anyhow!("{}: CLUSTER_CIDR: {}; {}", f.display(), e.message, e.fix)
        })?;
    }
    if let Some(s) = v("SERVICE_CIDR") {
        network.service_cidr = super::types::cidr::parse(&s).map_err(|e| {
            anyhow::anyhow!("{}: SERVICE_CIDR: {}; {}", f.display(), e.message, e.fix)
        })?;
    }
    if let Some(d) = v("CLUSTER_DNS_DOMAIN") {
        network.cluster_domain = typed(f, "CLUSTER_DNS_DOMAIN", d.trim_end_matches('.'))?;
    }
    if let Some(len) = cfg("NODE_CIDR_LEN").and_then(|l| l.parse().ok()) {
        network.node_cidr_mask_size = len;
    }
    // kubeasz puts CoreDNS on the 2nd address of the service CIDR; keep it so pods' resolv.conf
    // stays valid for users who move over.
    network.dns_ip = Some(super::nth_addr(&network.service_cidr, 2));
    network.proxy_mode = match v("PROXY_MODE").as_deref() {
        Some("iptables") => ProxyMode::Iptables,
        Some("ipvs") | None => ProxyMode::Ipvs,
        Some(other) => {
            notes.push(format!("PROXY_MODE=\"{other}\" is unknown; using ipvs"));
            ProxyMode::Ipvs
        }
    };
    network.cni = match v("CLUSTER_NETWORK").as_deref() {
        Some("calico") | None => Cni::Calico,
        Some("flannel") => Cni::Flannel,
        Some(other) => {
            notes.push(format!("CLUSTER_NETWORK=\"{other}\" is not supported by clusterctl; cni set to `none` (install it yourself or choose calico/flannel/host-routes)"));
            Cni::None
        }
    };
    if let Some(rt) = v("CONTAINER_RUNTIME")
        && rt != "containerd"
    {
        notes.push(format!(
            "CONTAINER_RUNTIME=\"{rt}\": clusterctl installs containerd"
        ));
    }

    let mut ha = Ha::default();
    let lbs = group("ex_lb");
    if let Some(vip) = lbs.iter().find_map(|l| l.vars.get("EX_APISERVER_VIP")) {
        let port = lbs
            .iter()
            .find_map(|l| l.vars.get("EX_APISERVER_PORT"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(8443);
        ha.mode = HaMode::Vip;
        ha.vip = Some(Vip {
            address: typed(f, "EX_APISERVER_VIP", vip)?,
            interface: None,
            router_id: 51,
            port,
        });
    } else {
        // kubeasz without ex_lb runs kube-lb: a local haproxy on every node, 127.0.0.1:6443.
        ha.mode = HaMode::LocalProxy;
    }

    let mut pki = Pki::default();
    if let Some(ca) = cfg("CA_EXPIRY") {
        pki.ca_validity = typed(f, "CA_EXPIRY", &ca)?;
    }
    if let Some(c) = cfg("CERT_EXPIRY") {
        pki.cert_validity = typed(f, "CERT_EXPIRY", &c)?;
    }
    if let Some(sans) = config.get("MASTER_CERT_HOSTS") {
        pki.extra_sans = sans
            .as_list()
            .iter()
            .map(|s| typed(f, "MASTER_CERT_HOSTS", s))
            .collect::<anyhow::Result<_>>()?;
    }
    let mut control_plane = ControlPlane::default();
    if let Some(p) = v("SECURE_PORT").and_then(|p| p.parse().ok()) {
        control_plane.apiserver_port = p;
    }
    let mut etcd = Etcd::default();
    if let Some(d) = cfg("ETCD_DATA_DIR") {
        etcd.data_dir = typed(f, "ETCD_DATA_DIR", &d)?;
    }
    let mut addons = Addons::default();
    let yes = |k: &str| cfg(k).map(|v| v == "yes" || v == "true");
    if let Some(d) = yes("dns_install") {
        addons.coredns.enabled = d;
    }
    if let Some(m) = yes("metricsserver_install") {
        addons.metrics_server.enabled = m;
    }

    let version = match (cfg("K8S_VER"), &opts.kubernetes_version) {
        (_, Some(v)) => v.clone(),
        (Some(v), None) => {
            if v.starts_with('v') {
                v
            } else {
                format!("v{v}")
            }
        }
        (None, None) => bail!(
            "{}: the Kubernetes version is not in the kubeasz files (no config.yml with K8S_VER beside hosts); pass --kubernetes-version v1.X.Y",
            hosts_file.display()
        ),
    };
    let name = opts
        .name
        .clone()
        .or_else(|| cfg("CLUSTER_NAME"))
        .or_else(|| {
            hosts_file
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "cluster1".into());

    Ok(Imported {
        inventory: Inventory {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: typed(f, "the cluster name (CLUSTER_NAME or --name)", &name)?,
            },
            spec: ClusterSpec {
                kubernetes_version: version.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "{}: K8S_VER: {e}; pass --kubernetes-version v1.X.Y",
                        f.display()
                    )
                })?,
                ssh: SshDefaults::default(),
                hosts,
                network,
                ha,
                pki,
                etcd,
                control_plane,
                container_runtime: ContainerRuntime::default(),
                kubelet: Default::default(),
                addons,
                bundle: None,
                backup: Default::default(),
            },
        },
        notes,
    })
}

/// Imports, renders YAML, and checks the result with the same validation as `inventory validate`
/// (so an import never hands the user an inventory that would be rejected later without saying so).
pub fn import_to_yaml(
    hosts_file: &Path,
    opts: &ImportOptions,
) -> anyhow::Result<(String, Vec<String>)> {
    let imported = import(hosts_file, opts)?;
    let body =
        serde_saphyr::to_string(&imported.inventory).context("rendering the inventory as YAML")?;
    let mut yaml = format!(
        "# Imported from kubeasz {} by clusterctl {}\n{body}",
        hosts_file.display(),
        env!("CARGO_PKG_VERSION")
    );
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    Ok((yaml, imported.notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_vars() {
        let v = split_vars("k8s_nodename='master-01' LB_ROLE=backup X=\"a b\"");
        assert_eq!(
            v,
            vec![
                ("k8s_nodename".into(), "master-01".into()),
                ("LB_ROLE".into(), "backup".into()),
                ("X".into(), "a b".into())
            ]
        );
    }

    #[test]
    fn old_and_new_section_names_mean_the_same() {
        let text = "[kube-master]\n10.0.0.1\n[kube_node]\n10.0.0.2\n[all:vars]\nSERVICE_CIDR=\"10.68.0.0/16\"\n";
        let ini = parse_ini(text, Path::new("hosts")).unwrap();
        assert_eq!(ini.groups["kube_master"][0].host, "10.0.0.1");
        assert_eq!(ini.groups["kube_node"][0].host, "10.0.0.2");
        assert_eq!(ini.vars["SERVICE_CIDR"], "10.68.0.0/16");
    }

    #[test]
    fn bad_section_header_names_the_line() {
        let e = parse_ini("[etcd\n10.0.0.1\n", Path::new("h"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("h:1: "), "{e}");
    }
}
