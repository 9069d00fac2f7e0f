//! Semantic checks of an inventory, run before any host is contacted. Every problem is
//! collected (not only the first) and placed at its line with the source map.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::load::resolve_path;
use super::model::*;
use super::source_map::SourceMap;
use crate::diag::{Diagnostic, Diagnostics, Severity};
use crate::version::KubeVersion;

/// Most etcd members we accept: more only slows writes (every write waits for a majority).
pub const MAX_ETCD_MEMBERS: usize = 7;

pub fn validate(inv: &Inventory, file: &Path, map: &SourceMap) -> Diagnostics {
    let mut v = Validator {
        file,
        map,
        out: Diagnostics::default(),
    };
    v.header(inv);
    v.version(&inv.spec);
    v.hosts(&inv.spec);
    let nets = v.network(&inv.spec);
    v.host_addresses_outside(&inv.spec, &nets);
    v.ha(&inv.spec);
    v.ssh(&inv.spec, file);
    v.pki(&inv.spec.pki);
    v.misc(&inv.spec, file);
    v.strings(&inv.spec);
    v.out
}

struct Validator<'a> {
    file: &'a Path,
    map: &'a SourceMap,
    out: Diagnostics,
}

/// Parsed networks, when they parse (later checks skip what did not).
struct Nets {
    pod: Option<IpNet>,
    service: Option<IpNet>,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain, as Kubernetes requires of node names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl Validator<'_> {
    fn report(
        &mut self,
        severity: Severity,
        field: &str,
        host: Option<&str>,
        message: String,
        fix: &str,
    ) {
        // A problem with a whole list (e.g. "no etcd host") points at its key, not its first item.
        let pos = if field == "spec.hosts" {
            self.map.key(field)
        } else {
            self.map.value(field)
        };
        self.out.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: field.to_string(),
            host: host.map(str::to_string),
            message,
            fix: fix.to_string(),
        });
    }

    fn error(&mut self, field: &str, host: Option<&str>, message: String, fix: &str) {
        self.report(Severity::Error, field, host, message, fix);
    }

    fn warning(&mut self, field: &str, host: Option<&str>, message: String, fix: &str) {
        self.report(Severity::Warning, field, host, message, fix);
    }

    fn line_of(&self, field: &str) -> String {
        match self.map.exact_value(field) {
            Some(p) => format!(" (line {})", p.line),
            None => " (the default)".into(),
        }
    }

    fn header(&mut self, inv: &Inventory) {
        if inv.api_version != API_VERSION {
            self.error(
                "apiVersion",
                None,
                format!("unsupported apiVersion `{}`", inv.api_version),
                &format!("set `apiVersion: {API_VERSION}`"),
            );
        }
        if inv.kind != KIND {
            self.error(
                "kind",
                None,
                format!("unsupported kind `{}`", inv.kind),
                &format!("set `kind: {KIND}`"),
            );
        }
        if !is_dns_label(&inv.metadata.name) {
            self.error(
                "metadata.name",
                None,
                format!("cluster name `{}` is not a DNS label", inv.metadata.name),
                "use lowercase letters, digits and '-', at most 63 characters (it names clusters/<name>/)",
            );
        }
    }

    fn version(&mut self, spec: &ClusterSpec) {
        match spec.kubernetes_version.parse::<KubeVersion>() {
            Err(e) => self.error(
                "spec.kubernetesVersion",
                None,
                e,
                "write the version as v1.MINOR.PATCH, e.g. v1.20.2",
            ),
            Ok(v) if !v.is_supported() => self.error(
                "spec.kubernetesVersion",
                None,
                format!("Kubernetes {v} is not supported"),
                &format!(
                    "use a version of a supported minor: {}",
                    KubeVersion::supported_list()
                ),
            ),
            Ok(_) => {}
        }
    }

    fn hosts(&mut self, spec: &ClusterSpec) {
        if spec.hosts.is_empty() {
            self.error(
                "spec.hosts",
                None,
                "no hosts are listed".into(),
                "list the cluster's machines under spec.hosts",
            );
            return;
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let at = |f: &str| format!("spec.hosts[{i}].{f}");
            let name = h.name.as_str();
            if !is_dns_subdomain(name) {
                self.error(
                    &at("name"),
                    Some(name),
                    format!("host name `{name}` is not a valid node name"),
                    "use lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain), e.g. cp1",
                );
            }
            if let Some(&first) = names.get(name) {
                let line = self.line_of(&format!("spec.hosts[{first}].name"));
                self.error(
                    &at("name"),
                    Some(name),
                    format!("duplicate host name `{name}`, also used by spec.hosts[{first}]{line}"),
                    "give every host its own name",
                );
            } else {
                names.insert(name, i);
            }
            match h.address.parse::<IpAddr>() {
                Err(_) => self.error(
                    &at("address"),
                    Some(name),
                    format!("`{}` is not an IP address", h.address),
                    "write the host's IPv4 or IPv6 address, e.g. 192.168.56.11 (no host names, no prefix)",
                ),
                Ok(ip) => {
                    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                        self.error(
                            &at("address"),
                            Some(name),
                            format!("{ip} cannot be a host's address"),
                            "use the address other hosts reach this host at",
                        );
                    }
                    if let Some(&first) = addrs.get(&ip) {
                        let other = &spec.hosts[first].name;
                        let line = self.line_of(&format!("spec.hosts[{first}].address"));
                        self.error(
                            &at("address"),
                            Some(name),
                            format!("duplicate address {ip}, also used by host {other}{line}"),
                            "give every host its own address",
                        );
                    } else {
                        addrs.insert(ip, i);
                    }
                }
            }
            if h.roles.is_empty() {
                self.error(
                    &at("roles"),
                    Some(name),
                    "the host has no roles".into(),
                    "give it one or more of: etcd, control-plane, worker, lb",
                );
            }
            let mut seen = Vec::new();
            for r in &h.roles {
                if seen.contains(r) {
                    self.warning(
                        &at("roles"),
                        Some(name),
                        format!("role `{}` is listed twice", r.as_str()),
                        "list each role once",
                    );
                }
                seen.push(*r);
            }
            if h.port == Some(0) {
                self.error(
                    &at("port"),
                    Some(name),
                    "port 0 is not a valid SSH port".into(),
                    "use the port sshd listens on (usually 22)",
                );
            }
            for (t, taint) in h.taints.iter().enumerate() {
                if let Err(e) = check_taint(taint) {
                    self.error(&format!("spec.hosts[{i}].taints[{t}]"), Some(name), e, "write taints as key[=value]:Effect, Effect one of NoSchedule, PreferNoSchedule, NoExecute");
                }
            }
        }
        let cps = spec
            .hosts
            .iter()
            .filter(|h| h.has(Role::ControlPlane))
            .count();
        let etcds = spec.hosts.iter().filter(|h| h.has(Role::Etcd)).count();
        if cps == 0 {
            self.error(
                "spec.hosts",
                None,
                "no host has the `control-plane` role".into(),
                "add `control-plane` to the roles of one host, or three for HA",
            );
        }
        if etcds == 0 {
            self.error("spec.hosts", None, "no host has the `etcd` role".into(), "add `etcd` to the roles of one host, or three for HA (often the control-plane hosts)");
        } else if etcds > MAX_ETCD_MEMBERS {
            self.error(
                "spec.hosts",
                None,
                format!("{etcds} hosts have the `etcd` role; at most {MAX_ETCD_MEMBERS} are allowed"),
                "use 3 or 5 etcd members: more slow down every write and add no useful fault tolerance",
            );
        } else if etcds % 2 == 0 {
            self.warning(
                "spec.hosts",
                None,
                format!(
                    "{etcds} etcd members: an even number tolerates no more failures than {}",
                    etcds - 1
                ),
                "use an odd number of etcd members (1, 3, 5 or 7)",
            );
        }
    }

    fn network(&mut self, spec: &ClusterSpec) -> Nets {
        let n = &spec.network;
        let parse_net = |v: &mut Self, field: &str, s: &str, what: &str| -> Option<IpNet> {
            match s.parse::<IpNet>() {
                Ok(net) if net != net.trunc() => {
                    v.error(
                        field,
                        None,
                        format!("{what} `{s}` has host bits set"),
                        &format!("write the network address: {}", net.trunc()),
                    );
                    None
                }
                Ok(net) => Some(net),
                Err(_) => {
                    v.error(
                        field,
                        None,
                        format!("`{s}` is not a CIDR"),
                        &format!("write the {what} as address/prefix, e.g. 10.96.0.0/12"),
                    );
                    None
                }
            }
        };
        let pod = parse_net(self, "spec.network.podCIDR", &n.pod_cidr, "pod CIDR");
        let service = parse_net(
            self,
            "spec.network.serviceCIDR",
            &n.service_cidr,
            "service CIDR",
        );
        if let (Some(p), Some(s)) = (pod, service)
            && (p.contains(&s.network()) || s.contains(&p.network()))
        {
            self.error(
                "spec.network.serviceCIDR",
                None,
                format!("service CIDR {s} overlaps the pod CIDR {p}"),
                "choose disjoint ranges, e.g. podCIDR 10.244.0.0/16 and serviceCIDR 10.96.0.0/12",
            );
        }
        if let Some(s) = service
            && let IpNet::V4(v4) = s
            && v4.prefix_len() < 12
        {
            self.error(
                "spec.network.serviceCIDR",
                None,
                format!("service CIDR {s} is larger than /12, which kube-apiserver refuses"),
                "use a /12 or smaller range, e.g. 10.96.0.0/12",
            );
        }
        if let Some(p) = pod {
            let mask = n.node_cidr_mask_size;
            let max = if p.addr().is_ipv4() { 32 } else { 128 };
            if mask <= p.prefix_len() || mask > max {
                self.error(
                    "spec.network.nodeCIDRMaskSize",
                    None,
                    format!("node CIDR mask /{mask} does not fit inside the pod CIDR {p}"),
                    &format!(
                        "use a mask longer than /{} and at most /{max}, e.g. /24",
                        p.prefix_len()
                    ),
                );
            } else {
                let bits = u32::from(mask - p.prefix_len());
                let capacity: u64 = if bits >= 32 { u64::MAX } else { 1u64 << bits };
                let nodes = spec
                    .hosts
                    .iter()
                    .filter(|h| {
                        h.has(Role::ControlPlane)
                            || h.has(Role::Worker)
                            || (spec.control_plane.mode == ControlPlaneMode::StaticPods
                                && h.has(Role::Etcd))
                    })
                    .count() as u64;
                if nodes > capacity {
                    self.error(
                        "spec.network.podCIDR",
                        None,
                        format!("pod CIDR {p} with /{mask} per node has room for {capacity} nodes, but the inventory has {nodes}"),
                        "use a larger pod CIDR or a longer nodeCIDRMaskSize",
                    );
                }
            }
        }
        if let Some(dns) = &n.dns_ip {
            match dns.parse::<IpAddr>() {
                Err(_) => self.error(
                    "spec.network.dnsIP",
                    None,
                    format!("`{dns}` is not an IP address"),
                    "write an address inside the service CIDR, e.g. 10.96.0.10",
                ),
                Ok(ip) => {
                    if let Some(s) = service {
                        if !s.contains(&ip) {
                            self.error(
                                "spec.network.dnsIP",
                                None,
                                format!("DNS IP {ip} is outside the service CIDR {s}"),
                                &format!(
                                    "pick an address inside {s}, e.g. {}",
                                    super::nth_addr(&s, 10)
                                ),
                            );
                        } else if ip == super::nth_addr(&s, 1) {
                            self.error(
                                "spec.network.dnsIP",
                                None,
                                format!("DNS IP {ip} is the `kubernetes` Service's address"),
                                &format!(
                                    "pick another address inside {s}, e.g. {}",
                                    super::nth_addr(&s, 10)
                                ),
                            );
                        }
                    }
                }
            }
        }
        if !n.cluster_domain.split('.').all(is_dns_label) {
            self.error(
                "spec.network.clusterDomain",
                None,
                format!("`{}` is not a DNS domain", n.cluster_domain),
                "use e.g. cluster.local",
            );
        }
        if let (Some(p), Some(s)) = (pod, service)
            && p.addr().is_ipv4() != s.addr().is_ipv4()
        {
            self.error(
                "spec.network.serviceCIDR",
                None,
                "pod and service CIDRs are of different IP families".into(),
                "use IPv4 for both (dual-stack is not supported yet)",
            );
        }
        Nets { pod, service }
    }

    fn host_addresses_outside(&mut self, spec: &ClusterSpec, nets: &Nets) {
        for (i, h) in spec.hosts.iter().enumerate() {
            let Ok(ip) = h.address.parse::<IpAddr>() else {
                continue;
            };
            for (net, what, field) in [
                (nets.pod, "pod", "podCIDR"),
                (nets.service, "service", "serviceCIDR"),
            ] {
                if let Some(net) = net
                    && net.contains(&ip)
                {
                    self.error(
                        &format!("spec.hosts[{i}].address"),
                        Some(&h.name),
                        format!(
                            "address {ip} lies inside the {what} CIDR {net}{}",
                            self.line_of(&format!("spec.network.{field}"))
                        ),
                        &format!("choose a {what} CIDR that does not contain any host address"),
                    );
                }
            }
        }
    }

    fn ha(&mut self, spec: &ClusterSpec) {
        let ha = &spec.ha;
        match ha.mode {
            HaMode::Vip => {
                let Some(vip) = &ha.vip else {
                    self.error(
                        "spec.ha.vip",
                        None,
                        "mode `vip` needs a VIP".into(),
                        "add `vip: {address: <free address in the hosts' subnet>}` under spec.ha",
                    );
                    return;
                };
                let Some((ip, prefix)) = parse_ip_prefix(&vip.address) else {
                    self.error(
                        "spec.ha.vip.address",
                        None,
                        format!("`{}` is not an IP address (with an optional /prefix)", vip.address),
                        "write a free address in the hosts' subnet, e.g. 192.168.56.10 or 10.0.0.100/16",
                    );
                    return;
                };
                if let Some((i, h)) = spec
                    .hosts
                    .iter()
                    .enumerate()
                    .find(|(_, h)| h.address.parse::<IpAddr>() == Ok(ip))
                {
                    self.error(
                        "spec.ha.vip.address",
                        None,
                        format!(
                            "the VIP {ip} is the address of host {}{}",
                            h.name,
                            self.line_of(&format!("spec.hosts[{i}].address"))
                        ),
                        "the VIP must be a free address that no host owns",
                    );
                }
                let net = IpNet::new(ip, prefix).map(|n| n.trunc()).ok();
                let lb: Vec<&Host> = {
                    let l: Vec<&Host> = spec.hosts.iter().filter(|h| h.has(Role::Lb)).collect();
                    if l.is_empty() {
                        spec.hosts
                            .iter()
                            .filter(|h| h.has(Role::ControlPlane))
                            .collect()
                    } else {
                        l
                    }
                };
                if let Some(net) = net {
                    let outside: Vec<&str> = lb
                        .iter()
                        .filter(|h| h.address.parse::<IpAddr>().is_ok_and(|a| !net.contains(&a)))
                        .map(|h| h.name.as_str())
                        .collect();
                    if !outside.is_empty() {
                        self.error(
                            "spec.ha.vip.address",
                            None,
                            format!("the VIP {ip} is not in the subnet {net} of the hosts that will hold it ({})", outside.join(", ")),
                            "pick a free address in those hosts' subnet, or write the VIP with the subnet's prefix (e.g. 10.0.0.100/16) if it is larger than /24",
                        );
                    }
                }
                if vip.port == spec.control_plane.apiserver_port
                    && lb.iter().any(|h| h.has(Role::ControlPlane))
                {
                    self.error(
                        "spec.ha.vip.port",
                        None,
                        format!("haproxy on the control-plane hosts cannot listen on {} too: kube-apiserver uses it", vip.port),
                        "use another port for the VIP (default 8443)",
                    );
                }
                if vip.router_id == 0 {
                    self.error(
                        "spec.ha.vip.routerID",
                        None,
                        "VRRP router id 0 is invalid".into(),
                        "use 1-255, unique on the network segment",
                    );
                }
            }
            HaMode::External => match &ha.external_endpoint {
                None => self.error(
                    "spec.ha",
                    None,
                    "mode `external` needs `externalEndpoint`".into(),
                    "add `externalEndpoint: <host>:<port>` of your load balancer under spec.ha",
                ),
                Some(ep) if super::split_endpoint(ep).is_none() => self.error(
                    "spec.ha.externalEndpoint",
                    None,
                    format!("`{ep}` is not host:port"),
                    "write the load balancer as host:port, e.g. lb.example.internal:6443",
                ),
                Some(_) => {}
            },
            HaMode::LocalProxy => {
                if ha.vip.is_some() {
                    self.warning(
                        "spec.ha.vip",
                        None,
                        "a VIP is set but mode is `local-proxy`; it is ignored".into(),
                        "set `mode: vip` to use it, or remove it",
                    );
                }
                let reserved = [2379u16, 2380, 10250, 10257, 10259];
                if ha.local_proxy_port == 0 || reserved.contains(&ha.local_proxy_port) {
                    self.error(
                        "spec.ha.localProxyPort",
                        None,
                        format!(
                            "port {} is taken by a cluster component",
                            ha.local_proxy_port
                        ),
                        "use 6443 (default) or another free port",
                    );
                }
            }
        }
        if ha.mode != HaMode::Vip && spec.hosts.iter().any(|h| h.has(Role::Lb)) {
            self.warning(
                "spec.ha.mode",
                None,
                "hosts have the `lb` role but the HA mode is not `vip`; they run no load balancer"
                    .into(),
                "set `mode: vip`, or drop the `lb` role",
            );
        }
    }

    fn ssh(&mut self, spec: &ClusterSpec, file: &Path) {
        let ssh = &spec.ssh;
        let key = |v: &mut Self,
                   field: &str,
                   host: Option<&str>,
                   p: &Option<std::path::PathBuf>| {
            if let Some(p) = p {
                let r = resolve_path(file, p);
                if !r.is_file() {
                    v.error(
                        field,
                        host,
                        format!("key file {} does not exist", r.display()),
                        "point keyFile at an existing private key (relative paths are relative to the inventory file), or create one with ssh-keygen",
                    );
                }
            }
        };
        key(self, "spec.ssh.keyFile", None, &ssh.key_file);
        if let Some(p) = &ssh.known_hosts_file {
            let r = resolve_path(file, p);
            if ssh.known_hosts == KnownHostsPolicy::Strict && !r.is_file() {
                self.error(
                    "spec.ssh.knownHostsFile",
                    None,
                    format!("known_hosts file {} does not exist, and host keys are checked strictly", r.display()),
                    "point knownHostsFile at an existing file, or set `knownHosts: accept-new` to pin keys on first contact",
                );
            }
        }
        if ssh.concurrency == 0 {
            self.error(
                "spec.ssh.concurrency",
                None,
                "concurrency 0 would never contact a host".into(),
                "use a positive number (default 64)",
            );
        }
        if ssh.port == 0 {
            self.error(
                "spec.ssh.port",
                None,
                "port 0 is not a valid SSH port".into(),
                "use the port sshd listens on (usually 22)",
            );
        }
        if ssh.user != "root"
            && !ssh.sudo
            && spec
                .hosts
                .iter()
                .all(|h| h.user.as_deref().is_none_or(|u| u != "root"))
        {
            self.warning(
                "spec.ssh.sudo",
                None,
                format!("user `{}` is not root and sudo is off", ssh.user),
                "set `sudo: true`: installing needs root",
            );
        }
        let mut bastion_names: HashMap<&str, usize> = HashMap::new();
        for (i, b) in ssh.bastions.iter().enumerate() {
            if let Some(first) = bastion_names.insert(&b.name, i) {
                let line = self.line_of(&format!("spec.ssh.bastions[{first}].name"));
                self.error(
                    &format!("spec.ssh.bastions[{i}].name"),
                    None,
                    format!("duplicate bastion name `{}`{line}", b.name),
                    "give every bastion its own name",
                );
            }
            key(
                self,
                &format!("spec.ssh.bastions[{i}].keyFile"),
                None,
                &b.key_file,
            );
        }
        let known = |n: &str| ssh.bastions.iter().any(|b| b.name == n);
        let defined = if ssh.bastions.is_empty() {
            "no bastions are defined".to_string()
        } else {
            format!(
                "defined: {}",
                ssh.bastions
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        if let Some(b) = &ssh.bastion
            && !known(b)
        {
            self.error(
                "spec.ssh.bastion",
                None,
                format!("bastion `{b}` is not defined ({defined})"),
                "add it under spec.ssh.bastions with a name and address, or fix the name",
            );
        }
        for (i, h) in spec.hosts.iter().enumerate() {
            key(
                self,
                &format!("spec.hosts[{i}].keyFile"),
                Some(&h.name),
                &h.key_file,
            );
            if let Some(b) = &h.bastion
                && !known(b)
            {
                self.error(
                    &format!("spec.hosts[{i}].bastion"),
                    Some(&h.name),
                    format!("bastion `{b}` is not defined ({defined})"),
                    "add it under spec.ssh.bastions with a name and address, or fix the name",
                );
            }
        }
    }

    fn pki(&mut self, pki: &Pki) {
        let ca = super::lifetime::parse(&pki.ca_validity);
        let leaf = super::lifetime::parse(&pki.cert_validity);
        if let Err(e) = &ca {
            self.error(
                "spec.pki.caValidity",
                None,
                e.clone(),
                "write a lifetime like 100y or 3650d",
            );
        }
        if let Err(e) = &leaf {
            self.error(
                "spec.pki.certValidity",
                None,
                e.clone(),
                "write a lifetime like 50y or 365d",
            );
        }
        if let (Ok(ca), Ok(leaf)) = (ca, leaf)
            && leaf > ca
        {
            self.error(
                "spec.pki.certValidity",
                None,
                format!(
                    "certificates ({}) would outlive their CA ({})",
                    pki.cert_validity, pki.ca_validity
                ),
                "make certValidity at most caValidity",
            );
        }
        for (i, san) in pki.extra_sans.iter().enumerate() {
            if san.parse::<IpAddr>().is_err()
                && !is_dns_subdomain(&san.trim_start_matches("*.").to_ascii_lowercase())
            {
                self.error(
                    &format!("spec.pki.extraSANs[{i}]"),
                    None,
                    format!("`{san}` is neither an IP address nor a DNS name"),
                    "write an IP address or a DNS name",
                );
            }
        }
    }

    fn misc(&mut self, spec: &ClusterSpec, file: &Path) {
        if spec.control_plane.apiserver_port == 0 {
            self.error(
                "spec.controlPlane.apiserverPort",
                None,
                "port 0 is invalid".into(),
                "use 6443 (default)",
            );
        }
        self.addons(&spec.addons);
        for (i, m) in spec.addons.extra_manifests.iter().enumerate() {
            let r = resolve_path(file, m);
            if !r.is_file() {
                self.error(
                    &format!("spec.addons.extraManifests[{i}]"),
                    None,
                    format!("manifest {} does not exist", r.display()),
                    "fix the path (relative to the inventory file)",
                );
            }
        }
        const SIGNALS: &[&str] = &[
            "memory.available",
            "nodefs.available",
            "nodefs.inodesFree",
            "imagefs.available",
            "imagefs.inodesFree",
            "pid.available",
        ];
        for (k, v) in &spec.kubelet.eviction_hard {
            let field = format!("spec.kubelet.evictionHard.{k}");
            if !SIGNALS.contains(&k.as_str()) {
                self.error(
                    &field,
                    None,
                    format!("`{k}` is not an eviction signal"),
                    &format!("use one of {}", SIGNALS.join(", ")),
                );
            } else if !is_threshold(v) {
                self.error(
                    &field,
                    None,
                    format!("`{v}` is not a threshold"),
                    "write a percentage (`5%`) or a quantity (`500Mi`, `2Gi`)",
                );
            }
        }
        let (high, low) = spec.kubelet.image_gc_thresholds();
        for (name, v) in [
            ("imageGCHighThresholdPercent", high),
            ("imageGCLowThresholdPercent", low),
        ] {
            if v > 100 {
                self.error(
                    &format!("spec.kubelet.{name}"),
                    None,
                    format!("{v} is not a percentage"),
                    "write a number from 0 to 100",
                );
            }
        }
        if low >= high {
            self.error(
                "spec.kubelet.imageGCLowThresholdPercent",
                None,
                format!(
                    "the low image GC threshold {low}% must be below the high one ({high}%){}",
                    if spec.kubelet.image_gc_low_threshold_percent.is_none() {
                        " (80% is the default)"
                    } else {
                        ""
                    }
                ),
                "set imageGCLowThresholdPercent below imageGCHighThresholdPercent",
            );
        }
        for (reg, mirrors) in &spec.container_runtime.registry_mirrors {
            for (i, m) in mirrors.iter().enumerate() {
                if !(m.starts_with("https://") || m.starts_with("http://")) {
                    self.error(
                        &format!("spec.containerRuntime.registryMirrors.{reg}[{i}]"),
                        None,
                        format!("mirror `{m}` is not a URL"),
                        "write the mirror as https://host[:port]",
                    );
                }
            }
        }
    }
}

/// An eviction threshold: `N%` (0-100) or a quantity such as `500Mi`, `2Gi`, `1000`.
fn is_threshold(v: &str) -> bool {
    if let Some(p) = v.strip_suffix('%') {
        return p.parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p));
    }
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &v[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
        && ["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&unit)
}

impl Validator<'_> {
    fn addons(&mut self, a: &Addons) {
        if a.coredns.enabled && a.coredns.replicas == 0 {
            self.error(
                "spec.addons.coredns.replicas",
                None,
                "CoreDNS is enabled with 0 replicas: the cluster would have no DNS".into(),
                "use 1 or more (default 2), or set `enabled: false`",
            );
        }
        for (field, image) in [
            ("spec.addons.coredns.image", &a.coredns.image),
            ("spec.addons.metricsServer.image", &a.metrics_server.image),
        ] {
            if let Some(img) = image
                && let Err(e) = check_image_reference(img)
            {
                self.error(
                    field,
                    None,
                    format!("`{img}` is not an image reference: {e}"),
                    "write [registry/]repository[:tag][@sha256:digest], e.g. registry.example.cn/coredns:1.7.0",
                );
            }
        }
        if a.wait_timeout.is_zero() {
            self.error(
                "spec.addons.waitTimeout",
                None,
                "a wait timeout of 0 s would fail every wait".into(),
                "use a positive duration such as 5m (the default); `waitForPods: never` skips waiting",
            );
        }
    }
}

/// A container image reference as containerd parses it (distribution's reference grammar,
/// simplified): `[host[:port]/]path[:tag][@algo:hex]`, path components lowercase.
pub fn check_image_reference(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = r.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("it contains {c:?}"));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| format!("digest `{d}` is not algorithm:hex"))?;
        if algo.is_empty()
            || hex.len() < 32
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("digest `{d}` is not algorithm:hex"));
        }
    }
    // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !ok {
            return Err(format!("tag `{t}` is not valid"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry host when it looks like one (a dot, a port, or localhost).
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || port.is_some_and(|p| p.parse::<u16>().is_err())
        {
            return Err(format!("registry `{host}` is not host[:port]"));
        }
    }
    for p in &parts {
        let ok = !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository component `{p}` must be lowercase letters, digits and . _ -"
            ));
        }
    }
    Ok(())
}

/// `key[=value]:Effect`, key and value by Kubernetes' rules for label keys and values.
fn check_taint(t: &str) -> Result<(), String> {
    let shown = crate::diag::escape(t);
    let (kv, effect) = t
        .rsplit_once(':')
        .ok_or_else(|| format!("taint `{shown}` has no effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "taint `{shown}` has unknown effect `{}`",
            crate::diag::escape(effect)
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("taint `{shown}` has no key"));
    }
    check_label_key(key).map_err(|e| format!("taint `{shown}`: {e}"))?;
    check_label_value(value).map_err(|e| format!("taint `{shown}`: {e}"))?;
    Ok(())
}

/// A Kubernetes qualified name (the name part of a label key): at most 63 characters,
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn is_qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key as Kubernetes validates it: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let shown = crate::diag::escape(k);
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_dns_subdomain(p))
    {
        return Err(format!(
            "key `{shown}`: prefix `{}` is not a DNS subdomain",
            crate::diag::escape(p)
        ));
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "key `{shown}`: name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value as Kubernetes validates it: empty, or a qualified name.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_qualified_name(v) {
        Ok(())
    } else {
        Err(format!(
            "value `{}` must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            crate::diag::escape(v)
        ))
    }
}

/// A network interface name as the kernel accepts it (`dev_valid_name`: at most 15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace), further limited to letters, digits and `._@-`, so it
/// is a single word in keepalived.conf and in shell commands.
pub fn check_interface(s: &str) -> Result<(), String> {
    let shown = crate::diag::escape(s);
    if s.is_empty() || s.len() > 15 {
        return Err(format!("`{shown}` is not 1-15 characters long"));
    }
    if s == "." || s == ".." {
        return Err(format!("`{shown}` is not a valid interface name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        return Err(format!("`{shown}` contains {c:?}"));
    }
    Ok(())
}

/// A host name or IP address (where a load balancer or bastion is reached).
fn check_host(h: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if is_dns_subdomain(&h.to_ascii_lowercase()) && !h.is_empty() {
        return Ok(());
    }
    Err(format!(
        "`{}` is neither an IP address nor a DNS name",
        crate::diag::escape(h)
    ))
}

/// A registry host as containerd names its `certs.d/<host>` directory: `host[:port]`, or
/// `_default` (containerd's fallback for every registry).
pub fn check_registry_host(r: &str) -> Result<(), String> {
    if r == "_default" {
        return Ok(());
    }
    let (h, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!(
            "`{}`: the port is not a number 1-65535",
            crate::diag::escape(r)
        ));
    }
    if !is_dns_subdomain(&h.to_ascii_lowercase()) || h.is_empty() {
        return Err(format!(
            "`{}` is not a registry host (host[:port], e.g. docker.io or registry.example.cn:5000)",
            crate::diag::escape(r)
        ));
    }
    Ok(())
}

/// A mirror endpoint: `http(s)://host[:port][/path]`, nothing a TOML string or a shell could
/// read differently.
fn check_mirror_url(m: &str) -> Result<(), String> {
    let rest = m
        .strip_prefix("https://")
        .or_else(|| m.strip_prefix("http://"))
        .ok_or_else(|| "not an http:// or https:// URL".to_string())?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host_ok = check_registry_host(hostport).is_ok()
        || hostport
            .strip_prefix('[')
            .and_then(|x| x.split_once(']'))
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    if !host_ok {
        return Err(format!(
            "host `{}` is not host[:port]",
            crate::diag::escape(hostport)
        ));
    }
    if let Some(c) = path.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~' | '%' | '+'))
    }) {
        return Err(format!("its path contains {c:?}"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err("its path contains `..`".into());
    }
    Ok(())
}

/// A login name as `useradd` accepts by default: letters, digits, `_`, `-`, `.`, starting with
/// a letter or `_`, at most 32 characters.
fn check_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a user name (letters, digits, '_', '-', '.', starting with a letter or '_')",
            crate::diag::escape(u)
        ))
    }
}

/// A flag name for `extraArgs` (without the leading `--`).
fn check_flag_name(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.len() <= 100
        && k.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a flag name (lowercase letters, digits and '-', without the leading --)",
            crate::diag::escape(k)
        ))
    }
}

/// A flag value: one line of printable text (it becomes one argument of a unit's ExecStart
/// or one item of a static pod's command).
fn check_flag_value(v: &str) -> Result<(), String> {
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(format!(
            "value `{}` contains the control character {c:?}",
            crate::diag::escape(v)
        ));
    }
    if v.len() > 4096 {
        return Err("value is longer than 4096 characters".into());
    }
    Ok(())
}

/// Directories a data directory must never be: `reset` empties it, `restore` moves it.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/sbin",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/var/cache",
    "/var/backups",
    "/etc/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/containerd",
];

/// An absolute, normalised host directory that clusterctl may own and delete.
pub fn check_data_dir(p: &str) -> Result<(), String> {
    crate::bundle::manifest::check_host_path(p)?;
    let p = p.trim_end_matches('/');
    if SYSTEM_DIRS.contains(&p) {
        return Err(format!(
            "`{p}` is a system directory (clusterctl's reset empties the data directory)"
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')))
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

impl Validator<'_> {
    /// Every free-form string that reaches a host (a command, a path or a config file) has a
    /// format here; the renderers and command builders quote them as well.
    fn strings(&mut self, spec: &ClusterSpec) {
        let fix_label = "write label keys as [prefix/]name and values as up to 63 letters, digits, '-', '_', '.' (Kubernetes' rules)";
        if let Err(e) = check_user(&spec.ssh.user) {
            self.error(
                "spec.ssh.user",
                None,
                e,
                "write the SSH login name, e.g. root or deploy",
            );
        }
        if let Some(env) = &spec.ssh.passphrase_env
            && !(env.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            self.error(
                "spec.ssh.passphraseEnv",
                None,
                format!(
                    "`{}` is not an environment variable name",
                    crate::diag::escape(env)
                ),
                "write a name like CLUSTERCTL_KEY_PASSPHRASE",
            );
        }
        for (i, b) in spec.ssh.bastions.iter().enumerate() {
            if let Err(e) = check_host(&b.address) {
                self.error(
                    &format!("spec.ssh.bastions[{i}].address"),
                    None,
                    e,
                    "write the jump host's IP address or DNS name",
                );
            }
            if let Some(u) = &b.user
                && let Err(e) = check_user(u)
            {
                self.error(
                    &format!("spec.ssh.bastions[{i}].user"),
                    None,
                    e,
                    "write the SSH login name",
                );
            }
        }
        for (i, h) in spec.hosts.iter().enumerate() {
            let name = Some(h.name.as_str());
            if let Some(u) = &h.user
                && let Err(e) = check_user(u)
            {
                self.error(
                    &format!("spec.hosts[{i}].user"),
                    name,
                    e,
                    "write the SSH login name",
                );
            }
            for (k, v) in &h.labels {
                let field = format!("spec.hosts[{i}].labels.{k}");
                if let Err(e) = check_label_key(k) {
                    self.error(&field, name, format!("label {e}"), fix_label);
                }
                if let Err(e) = check_label_value(v) {
                    self.error(
                        &field,
                        name,
                        format!("label `{}`: {e}", crate::diag::escape(k)),
                        fix_label,
                    );
                }
            }
        }
        if let Some(vip) = &spec.ha.vip
            && let Some(ifname) = &vip.interface
            && let Err(e) = check_interface(ifname)
        {
            self.error(
                "spec.ha.vip.interface",
                None,
                format!("interface {e}"),
                "write the name of the interface holding the hosts' addresses, e.g. eth0 (at most 15 letters, digits, '.', '_', '@', '-')",
            );
        }
        if let Some(ep) = &spec.ha.external_endpoint
            && let Some((h, port)) = super::split_endpoint(ep)
        {
            if let Err(e) = check_host(&h) {
                self.error(
                    "spec.ha.externalEndpoint",
                    None,
                    e,
                    "write the load balancer as host:port, e.g. lb.example.internal:6443",
                );
            }
            if port == 0 {
                self.error(
                    "spec.ha.externalEndpoint",
                    None,
                    "port 0 is invalid".into(),
                    "write the load balancer's port, e.g. 6443",
                );
            }
        }
        if let Err(e) = check_data_dir(&spec.etcd.data_dir) {
            self.error(
                "spec.etcd.dataDir",
                None,
                format!("`{}` {e}", crate::diag::escape(&spec.etcd.data_dir)),
                "use a directory of its own, e.g. /var/lib/etcd (the default)",
            );
        }
        if let Some(v) = &spec.etcd.version
            && let Err(e) = crate::bundle::manifest::check_item_version(v)
        {
            self.error(
                "spec.etcd.version",
                None,
                e,
                "write a version the bundle holds, e.g. 3.4.23",
            );
        }
        for (section, args) in [
            ("spec.etcd.extraArgs", &spec.etcd.extra_args),
            (
                "spec.controlPlane.apiserverExtraArgs",
                &spec.control_plane.apiserver_extra_args,
            ),
            (
                "spec.controlPlane.controllerManagerExtraArgs",
                &spec.control_plane.controller_manager_extra_args,
            ),
            (
                "spec.controlPlane.schedulerExtraArgs",
                &spec.control_plane.scheduler_extra_args,
            ),
            ("spec.kubelet.extraArgs", &spec.kubelet.extra_args),
        ] {
            for (k, v) in args {
                let field = format!("{section}.{k}");
                if let Err(e) = check_flag_name(k) {
                    self.error(
                        &field,
                        None,
                        e,
                        "write the flag's name as in the component's --help, e.g. `event-ttl: 2h`",
                    );
                }
                if let Err(e) = check_flag_value(v) {
                    self.error(
                        &field,
                        None,
                        e,
                        "write the value on one line, without control characters",
                    );
                }
            }
        }
        let cr = &spec.container_runtime;
        if let Some(img) = &cr.sandbox_image
            && let Err(e) = check_image_reference(img)
        {
            self.error(
                "spec.containerRuntime.sandboxImage",
                None,
                format!(
                    "`{}` is not an image reference: {e}",
                    crate::diag::escape(img)
                ),
                "write [registry/]repository[:tag][@sha256:digest], e.g. k8s.gcr.io/pause:3.2",
            );
        }
        for (reg, mirrors) in &cr.registry_mirrors {
            let field = format!("spec.containerRuntime.registryMirrors.{reg}");
            if let Err(e) = check_registry_host(reg) {
                self.error(
                    &field,
                    None,
                    e,
                    "key each mirror list by the registry's host[:port], e.g. docker.io",
                );
            }
            for (i, m) in mirrors.iter().enumerate() {
                if (m.starts_with("https://") || m.starts_with("http://"))
                    && let Err(e) = check_mirror_url(m)
                {
                    self.error(
                        &format!("{field}[{i}]"),
                        None,
                        format!("mirror `{}`: {e}", crate::diag::escape(m)),
                        "write the mirror as https://host[:port][/path]",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_image_reference as check;

    #[test]
    fn image_references() {
        for ok in [
            "k8s.gcr.io/coredns:1.7.0",
            "k8s.gcr.io/metrics-server/metrics-server:v0.5.2",
            "registry.example.cn:5000/google_containers/coredns:1.7.0",
            "coredns/coredns",
            "busybox",
            "localhost/pause:3.2",
            "k8s.gcr.io/pause@sha256:927d98197ec1141a368550822d18fa1c60bdae27b78b0c004f705f548c07814f",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
        for (bad, why) in [
            ("", "empty"),
            ("k8s.gcr.io/coredns 1.7.0", "contains"),
            ("k8s.gcr.io/CoreDNS:1.7.0", "lowercase"),
            ("k8s.gcr.io/coredns:", "tag"),
            ("k8s.gcr.io//coredns", "component"),
            ("k8s.gcr.io/coredns@sha256:xyz", "digest"),
            ("reg.example:port/x:1", "registry"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
