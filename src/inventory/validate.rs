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
    v.network(&inv.spec);
    v.host_addresses_outside(&inv.spec);
    v.ha(&inv.spec);
    v.ssh(&inv.spec, file);
    v.pki(&inv.spec.pki);
    v.misc(&inv.spec, file);
    v.out
}

struct Validator<'a> {
    file: &'a Path,
    map: &'a SourceMap,
    out: Diagnostics,
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
    }

    fn version(&mut self, spec: &ClusterSpec) {
        let v = spec.kubernetes_version;
        if !v.is_supported() {
            self.error(
                "spec.kubernetesVersion",
                None,
                format!("Kubernetes {v} is not supported"),
                &format!(
                    "use a version of a supported minor: {}",
                    KubeVersion::supported_list()
                ),
            );
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
            let ip = h.address;
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

    fn network(&mut self, spec: &ClusterSpec) {
        let n = &spec.network;
        // Both were parsed when the file was read (types::cidr); the checks here relate them.
        let (p, s) = (n.pod_cidr, n.service_cidr);
        if p.contains(&s.network()) || s.contains(&p.network()) {
            self.error(
                "spec.network.serviceCIDR",
                None,
                format!("service CIDR {s} overlaps the pod CIDR {p}"),
                "choose disjoint ranges, e.g. podCIDR 10.244.0.0/16 and serviceCIDR 10.96.0.0/12",
            );
        }
        if let IpNet::V4(v4) = s
            && v4.prefix_len() < 12
        {
            self.error(
                "spec.network.serviceCIDR",
                None,
                format!("service CIDR {s} is larger than /12, which kube-apiserver refuses"),
                "use a /12 or smaller range, e.g. 10.96.0.0/12",
            );
        }
        {
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
        if let Some(ip) = n.dns_ip {
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
        if p.addr().is_ipv4() != s.addr().is_ipv4() {
            self.error(
                "spec.network.serviceCIDR",
                None,
                "pod and service CIDRs are of different IP families".into(),
                "use IPv4 for both (dual-stack is not supported yet)",
            );
        }
    }

    fn host_addresses_outside(&mut self, spec: &ClusterSpec) {
        for (i, h) in spec.hosts.iter().enumerate() {
            let ip = h.address;
            for (net, what, field) in [
                (spec.network.pod_cidr, "pod", "podCIDR"),
                (spec.network.service_cidr, "service", "serviceCIDR"),
            ] {
                if net.contains(&ip) {
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
                let ip = vip.address.ip;
                if let Some((i, h)) = spec.hosts.iter().enumerate().find(|(_, h)| h.address == ip) {
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
                let net = vip.address.network();
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
                let outside: Vec<&str> = lb
                    .iter()
                    .filter(|h| !net.contains(&h.address))
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
            HaMode::External => {
                if ha.external_endpoint.is_none() {
                    self.error(
                        "spec.ha",
                        None,
                        "mode `external` needs `externalEndpoint`".into(),
                        "add `externalEndpoint: <host>:<port>` of your load balancer under spec.ha",
                    );
                }
            }
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
        if !ssh.peer_copy.is_off() && ssh.peer_copy.port == 0 {
            self.error(
                "spec.ssh.peerCopy.port",
                None,
                "port 0 is not a port a seed can serve bundle items on".into(),
                "leave it out (default 10200) or pick a free TCP port the hosts can reach each other on",
            );
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
        let ca = pki.ca_validity.duration();
        let leaf = pki.cert_validity.duration();
        if leaf > ca {
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
    }
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
