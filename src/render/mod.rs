//! Rendering the files a host receives from tera templates.
//!
//! The templates under `templates/` are compiled into the binary. A user overrides any of them
//! by putting a file with the same relative path under `clusters/<name>/templates/` (kubeasz's
//! "find the unit file of a component in seconds and change it"): `plan` lists the overrides.

pub mod addons;
mod vars;

/// haproxy's runtime API on every balancer (a Unix socket, root only; see haproxy.cfg).
pub const ADMIN_SOCKET: &str = "/run/haproxy-admin.sock";

use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub use vars::{
    DEFAULT_VIP_INTERFACE, ETCD_NODE_LABEL, ETCD_NODE_TAINT, EtcdStart, Mirror, host_vars,
    host_vars_etcd, node_taints, peer_url, registry_mirrors,
};

/// The components whose flags live in one template, `<name>/<name>.flags` (one flag a line),
/// rendered into both the systemd unit `<name>/<name>.service` and the static pod
/// `<name>/<name>.yaml` as the variable `flags`: the two modes cannot drift apart.
pub const FLAG_COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Every built-in template, by its path under `templates/`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "addons/coredns.yaml",
        include_str!("../../templates/addons/coredns.yaml"),
    ),
    (
        "addons/metrics-server.yaml",
        include_str!("../../templates/addons/metrics-server.yaml"),
    ),
    (
        "etcd/etcd.service",
        include_str!("../../templates/etcd/etcd.service"),
    ),
    (
        "etcd/etcd.flags",
        include_str!("../../templates/etcd/etcd.flags"),
    ),
    (
        "etcd/etcd.yaml",
        include_str!("../../templates/etcd/etcd.yaml"),
    ),
    (
        "etcd/etcd-backup.sh",
        include_str!("../../templates/etcd/etcd-backup.sh"),
    ),
    (
        "etcd/etcd-backup.service",
        include_str!("../../templates/etcd/etcd-backup.service"),
    ),
    (
        "etcd/etcd-backup.timer",
        include_str!("../../templates/etcd/etcd-backup.timer"),
    ),
    (
        "haproxy/haproxy.cfg",
        include_str!("../../templates/haproxy/haproxy.cfg"),
    ),
    (
        "keepalived/keepalived.conf",
        include_str!("../../templates/keepalived/keepalived.conf"),
    ),
    (
        "kube-apiserver/kube-apiserver.service",
        include_str!("../../templates/kube-apiserver/kube-apiserver.service"),
    ),
    (
        "kube-apiserver/kube-apiserver.flags",
        include_str!("../../templates/kube-apiserver/kube-apiserver.flags"),
    ),
    (
        "kube-apiserver/kube-apiserver.yaml",
        include_str!("../../templates/kube-apiserver/kube-apiserver.yaml"),
    ),
    (
        "kube-apiserver/audit-policy.yaml",
        include_str!("../../templates/kube-apiserver/audit-policy.yaml"),
    ),
    (
        "kube-controller-manager/kube-controller-manager.service",
        include_str!("../../templates/kube-controller-manager/kube-controller-manager.service"),
    ),
    (
        "kube-controller-manager/kube-controller-manager.flags",
        include_str!("../../templates/kube-controller-manager/kube-controller-manager.flags"),
    ),
    (
        "kube-controller-manager/kube-controller-manager.yaml",
        include_str!("../../templates/kube-controller-manager/kube-controller-manager.yaml"),
    ),
    (
        "kube-scheduler/kube-scheduler.service",
        include_str!("../../templates/kube-scheduler/kube-scheduler.service"),
    ),
    (
        "kube-scheduler/kube-scheduler.flags",
        include_str!("../../templates/kube-scheduler/kube-scheduler.flags"),
    ),
    (
        "kube-scheduler/kube-scheduler.yaml",
        include_str!("../../templates/kube-scheduler/kube-scheduler.yaml"),
    ),
    (
        "kube-scheduler/kube-scheduler-config.yaml",
        include_str!("../../templates/kube-scheduler/kube-scheduler-config.yaml"),
    ),
    (
        "system/sysctl-kubernetes.conf",
        include_str!("../../templates/system/sysctl-kubernetes.conf"),
    ),
    (
        "system/modules-kubernetes.conf",
        include_str!("../../templates/system/modules-kubernetes.conf"),
    ),
    (
        "containerd/config.toml",
        include_str!("../../templates/containerd/config.toml"),
    ),
    (
        "containerd/config-v3.toml",
        include_str!("../../templates/containerd/config-v3.toml"),
    ),
    (
        "containerd/hosts.toml",
        include_str!("../../templates/containerd/hosts.toml"),
    ),
    (
        "kubelet/kubelet-config.yaml",
        include_str!("../../templates/kubelet/kubelet-config.yaml"),
    ),
    (
        "kubelet/kubelet.service",
        include_str!("../../templates/kubelet/kubelet.service"),
    ),
    (
        "kube-proxy/kube-proxy-config.yaml",
        include_str!("../../templates/kube-proxy/kube-proxy-config.yaml"),
    ),
    (
        "kube-proxy/kube-proxy.service",
        include_str!("../../templates/kube-proxy/kube-proxy.service"),
    ),
    (
        "kube-proxy/kube-proxy-node.conf",
        include_str!("../../templates/kube-proxy/kube-proxy-node.conf"),
    ),
    (
        "network/10-clusterctl.conflist",
        include_str!("../../templates/network/10-clusterctl.conflist"),
    ),
    (
        "network/pod-routes.sh",
        include_str!("../../templates/network/pod-routes.sh"),
    ),
    (
        "network/clusterctl-pod-routes.service",
        include_str!("../../templates/network/clusterctl-pod-routes.service"),
    ),
];

pub struct Renderer {
    tera: tera::Tera,
    /// Templates replaced by the user's files.
    pub overrides: Vec<PathBuf>,
}

impl Renderer {
    /// Built-in templates, each replaced by `override_dir/<same path>` when that file exists.
    pub fn new(override_dir: Option<&Path>) -> anyhow::Result<Renderer> {
        let mut tera = tera::Tera::new();
        // A string as a double-quoted YAML scalar (JSON's string syntax is YAML's): flags and
        // paths in manifests, whatever characters a user's extra argument holds.
        tera.register_filter("yaml_str", |s: &str, _: tera::Kwargs, _: &tera::State| {
            serde_json::to_string(s).expect("a string serializes")
        });
        // Each config syntax gets its own escaping (the inventory's checks come first; these
        // make a value that slipped past them harmless, or fail the render):
        tera.register_filter("toml_str", |s: &str, _: tera::Kwargs, _: &tera::State| {
            toml_str(s)
        });
        tera.register_filter(
            "systemd_arg",
            |s: &str, _: tera::Kwargs, _: &tera::State| {
                systemd_arg(s).map_err(tera::Error::message)
            },
        );
        tera.register_filter(
            "keepalived_word",
            |s: &str, _: tera::Kwargs, _: &tera::State| {
                keepalived_word(s).map_err(tera::Error::message)
            },
        );
        let mut overrides = Vec::new();
        for (name, builtin) in BUILTIN {
            let user = override_dir.map(|d| d.join(name)).filter(|p| p.is_file());
            let text = match &user {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading template override {}", p.display()))?,
                None => builtin.to_string(),
            };
            tera.add_raw_template(name, &text).map_err(|e| {
                let origin = user.as_ref().map_or_else(
                    || format!("built-in template {name}"),
                    |p| p.display().to_string(),
                );
                anyhow::anyhow!("{origin}: {e}")
            })?;
            overrides.extend(user);
        }
        Ok(Renderer { tera, overrides })
    }

    pub fn render(&self, name: &str, ctx: &tera::Context) -> anyhow::Result<String> {
        self.tera
            .render(name, ctx)
            .map_err(|e| anyhow::anyhow!("rendering template {name}: {e}"))
    }

    /// The flags of one of [`FLAG_COMPONENTS`]: its `.flags` template's lines, without blank
    /// lines and `#` comments.
    pub fn flags(&self, component: &str, vars: &tera::Context) -> anyhow::Result<Vec<String>> {
        let text = self.render(&format!("{component}/{component}.flags"), vars)?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect())
    }
}

/// `s` as a TOML basic string, quotes included: `"` and `\` escaped, every control
/// character (DEL too, which TOML forbids raw) as `\uXXXX`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as one word of a systemd `ExecStart=` line: `%` (specifiers) and `$` (environment
/// expansion) doubled; anything beyond a plain word double-quoted with `\` and `"` escaped.
/// Control characters cannot be written safely (a newline would start a new directive): error.
pub fn systemd_arg(s: &str) -> Result<String, String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "`{}` contains the control character {c:?}: it cannot be one argument of a unit",
            crate::diag::escape(s)
        ));
    }
    let escaped = s.replace('%', "%%").replace('$', "$$");
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@*%$".contains(c));
    if plain {
        return Ok(escaped);
    }
    Ok(format!(
        "\"{}\"",
        escaped.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// `s` as one bare word of keepalived.conf (interface names, addresses, names), which has no
/// quoting that every keyword honours: anything but letters, digits and `._:/@-` fails the
/// render.
pub fn keepalived_word(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c))
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{}` cannot be written into keepalived.conf as one word",
            crate::diag::escape(s)
        ))
    }
}

/// Template variables for one of [`FLAG_COMPONENTS`] on `host`: [`host_vars`] plus `flags`.
pub fn component_vars(
    r: &Renderer,
    inv: &crate::inventory::Inventory,
    host: &crate::inventory::Host,
    component: &str,
) -> anyhow::Result<tera::Context> {
    with_flags(r, host_vars(inv, host), component)
}

/// [`component_vars`] for etcd, the member starting with `start` (see [`EtcdStart`]).
pub fn etcd_component_vars(
    r: &Renderer,
    inv: &crate::inventory::Inventory,
    host: &crate::inventory::Host,
    start: &EtcdStart,
) -> anyhow::Result<tera::Context> {
    with_flags(r, host_vars_etcd(inv, host, start), "etcd")
}

fn with_flags(
    r: &Renderer,
    mut v: tera::Context,
    component: &str,
) -> anyhow::Result<tera::Context> {
    let flags = r.flags(component, &v)?;
    v.insert("flags", &flags);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::types::{FlagName, FlagValue, ImageRef, InterfaceName};

    #[test]
    fn every_template_file_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk.push(
                        p.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        on_disk.sort();
        let mut builtin: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        builtin.sort();
        assert_eq!(
            on_disk, builtin,
            "templates/ and render::BUILTIN must list the same files"
        );
    }

    #[test]
    fn a_user_file_overrides_the_builtin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("haproxy")).unwrap();
        std::fs::write(dir.path().join("haproxy/haproxy.cfg"), "custom {{ x }}").unwrap();
        let r = Renderer::new(Some(dir.path())).unwrap();
        let mut ctx = tera::Context::new();
        ctx.insert("x", &1);
        assert_eq!(r.render("haproxy/haproxy.cfg", &ctx).unwrap(), "custom 1");
        assert_eq!(r.overrides.len(), 1);
    }

    #[test]
    fn a_broken_override_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etcd")).unwrap();
        std::fs::write(dir.path().join("etcd/etcd.service"), "{% if %}").unwrap();
        let e = Renderer::new(Some(dir.path())).err().unwrap().to_string();
        assert!(e.contains("etcd/etcd.service"), "{e}");
    }

    fn example(name: &str) -> crate::inventory::Inventory {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "~/.ssh/id_ed25519",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        );
        crate::inventory::load_str(&text, &path).unwrap().inventory
    }

    /// Where the minor deprecated `--container-runtime-endpoint` and `--register-with-taints`
    /// (flags/v1.34/DEPRECATED), the kubelet gets both settings from its config file instead:
    /// the same values, not dropped.
    #[test]
    fn kubelet_settings_move_to_the_config_file_where_the_minor_deprecated_the_flags() {
        let mut inv = example("ha-vip.yaml");
        inv.spec.kubernetes_version = "v1.34.2".parse().unwrap();
        inv.spec.hosts[3].taints = vec!["dedicated=infra:NoSchedule".parse().unwrap()];
        let r = Renderer::new(None).unwrap();
        for (name, taint) in [
            ("cp1", ("node-role.kubernetes.io/control-plane", None)),
            ("w1", ("dedicated", Some("infra"))),
        ] {
            let h = inv.host(name).unwrap().clone();
            let unit = r
                .render("kubelet/kubelet.service", &host_vars(&inv, &h))
                .unwrap();
            assert!(!unit.contains("--container-runtime-endpoint"), "{unit}");
            assert!(!unit.contains("--register-with-taints"), "{unit}");
            let cfg = r
                .render("kubelet/kubelet-config.yaml", &host_vars(&inv, &h))
                .unwrap();
            let doc: serde_json::Value = serde_saphyr::from_str(&cfg).unwrap();
            assert_eq!(
                doc["containerRuntimeEndpoint"],
                "unix:///run/containerd/containerd.sock"
            );
            let t = &doc["registerWithTaints"][0];
            assert_eq!(t["key"], taint.0, "{cfg}");
            assert_eq!(t["value"].as_str(), taint.1, "{cfg}");
            assert_eq!(t["effect"], "NoSchedule", "{cfg}");
            assert_eq!(doc["registerWithTaints"].as_array().unwrap().len(), 1);
        }
        // Without taints the list is left out (the kubelet's default: none).
        inv.spec.control_plane.taint_nodes = false;
        let h = inv.host("cp1").unwrap().clone();
        let cfg = r
            .render("kubelet/kubelet-config.yaml", &host_vars(&inv, &h))
            .unwrap();
        assert!(!cfg.contains("registerWithTaints"), "{cfg}");
    }

    #[test]
    fn node_templates_follow_the_inventory() {
        let mut inv = example("ha-vip.yaml");
        inv.spec.container_runtime.cgroup_driver = crate::inventory::CgroupDriver::Cgroupfs;
        inv.spec.container_runtime.restrict_oom_score_adj = true;
        inv.spec.network.proxy_manages_conntrack = false;
        inv.spec.hosts[3].taints = vec!["dedicated=infra:NoSchedule".parse().unwrap()];
        let r = Renderer::new(None).unwrap();
        let cp = inv.host("cp1").unwrap().clone();
        let w1 = inv.host("w1").unwrap().clone();
        let (cp, w1) = (&cp, &w1);
        let cfg = r
            .render("containerd/config.toml", &host_vars(&inv, cp))
            .unwrap();
        assert!(
            cfg.contains("sandbox_image = \"k8s.gcr.io/pause:3.2\""),
            "{cfg}"
        );
        assert!(cfg.contains("restrict_oom_score_adj = true"), "{cfg}");
        assert!(cfg.contains("SystemdCgroup = false"), "{cfg}");
        let kubelet = r
            .render("kubelet/kubelet-config.yaml", &host_vars(&inv, w1))
            .unwrap();
        assert!(kubelet.contains("cgroupDriver: cgroupfs"), "{kubelet}");
        assert!(kubelet.contains("  - 10.96.0.10"), "{kubelet}");
        // Control-plane nodes get kubeadm's taint; workers only the inventory's.
        let unit = r
            .render("kubelet/kubelet.service", &host_vars(&inv, cp))
            .unwrap();
        assert!(
            unit.contains("--register-with-taints=node-role.kubernetes.io/master:NoSchedule"),
            "{unit}"
        );
        assert!(unit.contains("--container-runtime=remote"), "{unit}");
        let unit = r
            .render("kubelet/kubelet.service", &host_vars(&inv, w1))
            .unwrap();
        assert!(
            unit.contains("--register-with-taints=dedicated=infra:NoSchedule \\"),
            "{unit}"
        );
        inv.spec.control_plane.taint_nodes = false;
        let unit = r
            .render("kubelet/kubelet.service", &host_vars(&inv, cp))
            .unwrap();
        assert!(!unit.contains("register-with-taints"), "{unit}");
        let proxy = r
            .render("kube-proxy/kube-proxy-config.yaml", &host_vars(&inv, w1))
            .unwrap();
        assert!(
            proxy.contains("maxPerCore: 0") && proxy.contains("mode: iptables"),
            "{proxy}"
        );
        // Both are YAML a kubelet / kube-proxy can parse.
        serde_saphyr::from_str::<serde_json::Value>(&kubelet).unwrap();
        serde_saphyr::from_str::<serde_json::Value>(&proxy).unwrap();
    }

    #[test]
    fn registry_mirrors_become_hosts_toml() {
        let mut inv = example("ha-vip.yaml");
        inv.spec.container_runtime.registry_mirrors.insert(
            "docker.io".parse().unwrap(),
            vec!["https://mirror.example.cn".parse().unwrap()],
        );
        let r = Renderer::new(None).unwrap();
        let mut v = host_vars(&inv, inv.host("w1").unwrap());
        v.insert("mirror", &registry_mirrors(&inv)[0]);
        let t = r.render("containerd/hosts.toml", &v).unwrap();
        assert!(
            t.contains("server = \"https://registry-1.docker.io\""),
            "{t}"
        );
        assert!(t.contains("[host.\"https://mirror.example.cn\"]"), "{t}");
    }

    #[test]
    fn escaping_filters_keep_each_value_one_value() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_str("x\ny = 1"), r#""x\u000Ay = 1""#);
        assert_eq!(toml_str("\u{7f}"), r#""\u007F""#);
        assert_eq!(systemd_arg("--v=2").unwrap(), "--v=2");
        assert_eq!(systemd_arg("--a=%h$HOME").unwrap(), "--a=%%h$$HOME");
        assert_eq!(
            systemd_arg(r#"--a=x "y" \z"#).unwrap(),
            r#""--a=x \"y\" \\z""#
        );
        assert!(systemd_arg("--a=x\nExecStartPre=/bin/sh").is_err());
        assert_eq!(keepalived_word("eth0").unwrap(), "eth0");
        assert!(keepalived_word("eth0 }").is_err());
        assert!(keepalived_word("").is_err());
    }

    #[test]
    fn rendered_files_quote_what_the_inventory_gave() {
        let mut inv = example("ha-vip.yaml");
        // Values that skip the types' checks (only tests can build them) stay one value: the
        // escaping holds on its own.
        inv.spec.kubelet.extra_args.insert(
            FlagName::unchecked("node-labels"),
            FlagValue::unchecked("a=b c=\"d\""),
        );
        inv.spec.container_runtime.sandbox_image =
            Some(ImageRef::unchecked("pause:3.2\"\nx = \"y"));
        let r = Renderer::new(None).unwrap();
        let w1 = inv.host("w1").unwrap().clone();
        let unit = r
            .render("kubelet/kubelet.service", &host_vars(&inv, &w1))
            .unwrap();
        assert!(
            unit.contains(r#"  "--node-labels=a=b c=\"d\"" \"#),
            "{unit}"
        );
        let cfg = r
            .render("containerd/config.toml", &host_vars(&inv, &w1))
            .unwrap();
        assert!(
            cfg.contains(r#"sandbox_image = "pause:3.2\"\u000Ax = \"y""#),
            "{cfg}"
        );
        // A newline cannot become a directive: the render fails instead.
        inv.spec.kubelet.extra_args.insert(
            FlagName::unchecked("v"),
            FlagValue::unchecked("2\nExecStartPre=/bin/true"),
        );
        let e = r
            .render("kubelet/kubelet.service", &host_vars(&inv, &w1))
            .unwrap_err();
        assert!(format!("{e:#}").contains("control character"), "{e:#}");
        // keepalived.conf: a word or nothing.
        let mut inv = example("ha-vip.yaml");
        inv.spec.ha.vip.as_mut().unwrap().interface = Some(InterfaceName::unchecked("eth1 }"));
        let cp1 = inv.host("cp1").unwrap().clone();
        assert!(
            r.render("keepalived/keepalived.conf", &host_vars(&inv, &cp1))
                .is_err()
        );
        inv.spec.ha.vip.as_mut().unwrap().interface = Some("eth1".parse().unwrap());
        let k = r
            .render("keepalived/keepalived.conf", &host_vars(&inv, &cp1))
            .unwrap();
        assert!(k.contains("include /etc/keepalived/auth.conf"), "{k}");
        assert!(
            !k.lines().any(|l| l.trim().starts_with("auth_pass")),
            "no secret in keepalived.conf: {k}"
        );
    }

    /// The words of keepalived.conf's `unicast_peer { ... }` block.
    fn unicast_peers(conf: &str) -> Vec<String> {
        let block = conf
            .split("unicast_peer {")
            .nth(1)
            .expect("a unicast_peer block");
        let block = &block[..block.find('}').unwrap()];
        block.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn keepalived_stays_in_unicast_mode_with_one_balancer_or_more() {
        let r = Renderer::new(None).unwrap();
        let mut inv = example("ha-vip.yaml");
        let cp1 = inv.host("cp1").unwrap().clone();
        let k = r
            .render("keepalived/keepalived.conf", &host_vars(&inv, &cp1))
            .unwrap();
        let others: Vec<String> = inv
            .lb_hosts()
            .iter()
            .filter(|h| h.name != "cp1")
            .map(|h| h.address.to_string())
            .collect();
        assert_eq!(others.len(), 2);
        assert_eq!(unicast_peers(&k), others, "{k}");
        assert!(k.contains("check_unicast_src"), "{k}");
        // Alone: its peer is the VIP (an empty block would mean multicast, and the reload that
        // adds its first peers would then drop the VIP).
        inv.spec
            .hosts
            .retain(|h| h.name == "cp1" || !h.has(crate::inventory::Role::ControlPlane));
        let k = r
            .render("keepalived/keepalived.conf", &host_vars(&inv, &cp1))
            .unwrap();
        let (vip, _) = inv.spec.ha.vip.as_ref().unwrap().ip_and_prefix();
        assert_eq!(unicast_peers(&k), [vip.to_string()], "{k}");
        assert!(k.contains("check_unicast_src"), "{k}");
    }
}
