//! Every flag the templates render exists in the Kubernetes version it is rendered for:
//! checked against the recorded per-minor flag tables (flags/v1.MINOR/), and in the lab test
//! against the real v1.20.2 binaries themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clusterctl::inventory::{self, Role};
use clusterctl::render::{FLAG_COMPONENTS, Renderer, component_vars, host_vars};
use clusterctl::version::SUPPORTED_MINORS;

const UNITS: &[(&str, &str)] = &[
    ("kube-apiserver", "kube-apiserver/kube-apiserver.service"),
    (
        "kube-controller-manager",
        "kube-controller-manager/kube-controller-manager.service",
    ),
    ("kube-scheduler", "kube-scheduler/kube-scheduler.service"),
    ("kubelet", "kubelet/kubelet.service"),
    ("kube-proxy", "kube-proxy/kube-proxy.service"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `--name=value` pairs of a unit's ExecStart (continued over `\` lines).
fn exec_flags(unit: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in unit.lines() {
        let l = line.trim();
        if l.starts_with("ExecStart=") {
            inside = true;
        }
        if inside {
            for tok in l.split_whitespace().filter(|t| t.starts_with("--")) {
                let t = tok.trim_start_matches("--");
                let (n, v) = t.split_once('=').unwrap_or((t, ""));
                out.push((n.to_string(), v.to_string()));
            }
            if !l.ends_with('\\') {
                inside = false;
            }
        }
    }
    out
}

/// Rendered flags per component for an inventory at `minor`, over every host of both HA modes.
fn rendered(minor: u32) -> BTreeMap<&'static str, BTreeSet<(String, String)>> {
    let mut m: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
    let r = Renderer::new(None).unwrap();
    for ex in ["ha-vip.yaml", "local-proxy.yaml"] {
        let text = std::fs::read_to_string(root().join("examples").join(ex)).unwrap();
        let mut inv = inventory::load_str(
            &text.replace(
                "~/.ssh/id_ed25519",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ),
            Path::new(ex),
        )
        .unwrap()
        .inventory;
        inv.spec.kubernetes_version = format!("v1.{minor}.0").parse().unwrap();
        for h in inv.hosts_with(Role::ControlPlane) {
            for (component, tpl) in UNITS {
                // The control plane's units take their flags from `<component>.flags`.
                let vars = if FLAG_COMPONENTS.contains(component) {
                    component_vars(&r, &inv, h, component).unwrap()
                } else {
                    host_vars(&inv, h)
                };
                m.entry(component)
                    .or_default()
                    .extend(exec_flags(&r.render(tpl, &vars).unwrap()));
            }
        }
    }
    m
}

fn table(minor: u32, component: &str) -> BTreeSet<String> {
    let dir = root().join(format!("flags/v1.{minor}"));
    let mut s: BTreeSet<String> = std::fs::read_to_string(dir.join(format!("{component}.txt")))
        .unwrap_or_else(|e| panic!("flags/v1.{minor}/{component}.txt: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if let Ok(hidden) = std::fs::read_to_string(dir.join("HIDDEN")) {
        s.extend(
            hidden
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.strip_prefix(&format!("{component} ")))
                .map(str::to_string),
        );
    }
    s
}

/// Flags of `component` that the minor's reference page marks deprecated
/// (flags/v1.MINOR/DEPRECATED, written by flags/record-docs.py; none recorded for 1.20, whose
/// table comes from the binaries' --help).
fn deprecated(minor: u32, component: &str) -> BTreeSet<String> {
    let path = root().join(format!("flags/v1.{minor}/DEPRECATED"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&format!("{component} ")))
        .map(str::to_string)
        .collect()
}

/// The rendered flags of `component` at `minor` that its table lacks or marks deprecated.
fn check_flags(
    minor: u32,
    component: &str,
    flags: &BTreeSet<(String, String)>,
) -> Result<(), String> {
    let known = table(minor, component);
    let dep = deprecated(minor, component);
    let unknown: Vec<&String> = flags
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !known.contains(*n))
        .collect();
    let old: Vec<&String> = flags
        .iter()
        .map(|(n, _)| n)
        .filter(|n| dep.contains(*n))
        .collect();
    if unknown.is_empty() && old.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "1.{minor} {component}: unknown --{unknown:?}, deprecated --{old:?}"
        ))
    }
}

#[test]
fn every_supported_minor_has_a_flag_table_and_templates_use_only_its_flags() {
    for &minor in SUPPORTED_MINORS {
        for (component, flags) in rendered(minor) {
            check_flags(minor, component, &flags).unwrap();
        }
    }
}

/// Minors that have facts but not every table yet (1.34: only the kubelet's page could be
/// pinned to the release, flags/README.md) still get each recorded table checked: the kubelet
/// units rendered for them use only flags the release has and has not deprecated.
#[test]
fn recorded_tables_of_minors_not_yet_supported_are_checked_too() {
    let mut checked = Vec::new();
    for f in clusterctl::version::MINOR_FACTS {
        if SUPPORTED_MINORS.contains(&f.minor) {
            continue;
        }
        let dir = root().join(format!("flags/v1.{}", f.minor));
        for (component, flags) in rendered(f.minor) {
            if dir.join(format!("{component}.txt")).exists() {
                check_flags(f.minor, component, &flags).unwrap();
                checked.push((f.minor, component));
            }
        }
    }
    assert!(checked.contains(&(34, "kubelet")), "{checked:?}");
    // The check can fail: what 1.20's kubelet unit renders is deprecated in 1.34.
    let v120 = &rendered(20)["kubelet"];
    let err = check_flags(34, "kubelet", v120).unwrap_err();
    assert!(err.contains("container-runtime-endpoint"), "{err}");
    assert!(err.contains("register-with-taints"), "{err}");
    // ... and a flag the release does not have at all.
    let made_up = BTreeSet::from([("container-runtime".to_string(), "remote".to_string())]);
    assert!(check_flags(34, "kubelet", &made_up).is_err());
}

#[test]
fn flags_removed_in_later_minors_are_not_rendered_for_them() {
    // --insecure-port (apiserver) is gone in 1.24, --port (controller-manager, scheduler: the
    // insecure health ports) after 1.21, the kubelet's --container-runtime in 1.27.
    let later = rendered(34);
    for (component, gone) in [
        ("kube-apiserver", "insecure-port"),
        ("kube-scheduler", "port"),
        ("kube-controller-manager", "port"),
        ("kubelet", "container-runtime"),
    ] {
        assert!(
            !later[component].iter().any(|(n, _)| n == gone),
            "1.34 {component} renders --{gone}"
        );
    }
    let v120 = rendered(20);
    assert!(v120["kube-apiserver"].contains(&("insecure-port".into(), "0".into())));
    assert!(v120["kube-scheduler"].contains(&("port".into(), "0".into())));
    assert!(v120["kubelet"].contains(&("container-runtime".into(), "remote".into())));
}

/// A minor whose scheduler reads a config file gets `--config` instead of the flags it
/// deprecated (`--kubeconfig`, `--profiling`); 1.20 stays on flags (its v1beta1 file would
/// reopen the insecure port 10251).
#[test]
fn the_scheduler_reads_its_config_file_where_the_minor_has_one() {
    let s34 = &rendered(34)["kube-scheduler"];
    let names: BTreeSet<&str> = s34.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains("config"), "{names:?}");
    for gone in ["kubeconfig", "profiling", "leader-elect", "port"] {
        assert!(!names.contains(gone), "1.34 scheduler renders --{gone}");
    }
    let s20 = &rendered(20)["kube-scheduler"];
    assert!(s20.contains(&("kubeconfig".into(), "/etc/kubernetes/scheduler.conf".into())));
    assert!(!s20.iter().any(|(n, _)| n == "config"));

    let r = Renderer::new(None).unwrap();
    let text = std::fs::read_to_string(root().join("examples/ha-vip.yaml")).unwrap();
    let mut inv = inventory::load_str(
        &text.replace(
            "~/.ssh/id_ed25519",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ),
        Path::new("ha-vip.yaml"),
    )
    .unwrap()
    .inventory;
    inv.spec.kubernetes_version = "v1.34.2".parse().unwrap();
    let h = inv.hosts_with(Role::ControlPlane).next().unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(
        &r.render(
            "kube-scheduler/kube-scheduler-config.yaml",
            &host_vars(&inv, h),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["apiVersion"], "kubescheduler.config.k8s.io/v1");
    assert_eq!(doc["kind"], "KubeSchedulerConfiguration");
    assert_eq!(
        doc["clientConnection"]["kubeconfig"],
        "/etc/kubernetes/scheduler.conf"
    );
    assert_eq!(doc["enableProfiling"], false);
    assert_eq!(doc["leaderElection"]["leaderElect"], true);
}

/// Templates branch on the facts of a minor (`k8s.*`, src/version.rs), never on its number:
/// a new minor then changes one table row, not every template.
#[test]
fn no_template_compares_a_minor_number() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("templates"), &mut files);
    assert!(files.len() > 20, "templates found: {}", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.contains("{%") || line.contains("{{");
            assert!(
                !(code
                    && (line.contains("minor") || line.contains("version"))
                    && (line.contains('<') || line.contains('>') || line.contains("==")))
                    && !line.contains("cluster.minor"),
                "{}:{}: branches on a version number: {line}",
                f.display(),
                i + 1
            );
        }
    }
}

/// Dotted JSON paths of a parsed config document: `a.b` for fields, `a[]` for list elements
/// (maps given as `.*` in the tables match any key at their place).
fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Whether `path` is in `fields`, where a recorded `a.*` (a map) takes any key under `a`,
/// dots included (evictionHard's `memory.available`).
fn known_path(fields: &BTreeSet<String>, path: &str) -> bool {
    if fields.contains(path) {
        return true;
    }
    let segs: Vec<&str> = path.split('.').collect();
    (1..segs.len()).any(|i| fields.contains(&format!("{}.*", segs[..i].join("."))))
}

fn config_fields(file: &str) -> BTreeSet<String> {
    std::fs::read_to_string(root().join("flags/config").join(file))
        .unwrap_or_else(|e| panic!("flags/config/{file}: {e}"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The KubeletConfiguration and KubeProxyConfiguration clusterctl renders for every minor it
/// has facts for (supported or not yet) use only fields of the published config API: the
/// field tables come from the Go types of a release (flags/config/record.sh says which).
#[test]
fn rendered_config_files_use_only_published_fields() {
    let kubelet = config_fields("kubelet.config.k8s.io-v1beta1-1.32.7.txt");
    let proxy = config_fields("kubeproxy.config.k8s.io-v1alpha1-1.36.4.txt");
    assert!(kubelet.contains("cgroupDriver") && proxy.contains("conntrack.maxPerCore"));
    let r = Renderer::new(None).unwrap();
    for f in clusterctl::version::MINOR_FACTS {
        for ex in ["ha-vip.yaml", "local-proxy.yaml"] {
            let text = std::fs::read_to_string(root().join("examples").join(ex)).unwrap();
            let mut inv = inventory::load_str(
                &text.replace(
                    "~/.ssh/id_ed25519",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
                ),
                Path::new(ex),
            )
            .unwrap()
            .inventory;
            inv.spec.kubernetes_version = format!("v1.{}.0", f.minor).parse().unwrap();
            // Every optional block on: evictionHard and the conntrack settings.
            inv.spec.network.proxy_manages_conntrack = false;
            inv.spec.kubelet.eviction_hard.insert(
                "memory.available".parse().unwrap(),
                "200Mi".parse().unwrap(),
            );
            for h in inv.hosts_with(Role::ControlPlane) {
                let vars = host_vars(&inv, h);
                for (tpl, fields, kind) in [
                    (
                        "kubelet/kubelet-config.yaml",
                        &kubelet,
                        "KubeletConfiguration",
                    ),
                    (
                        "kube-proxy/kube-proxy-config.yaml",
                        &proxy,
                        "KubeProxyConfiguration",
                    ),
                ] {
                    let doc: serde_json::Value =
                        serde_saphyr::from_str(&r.render(tpl, &vars).unwrap()).unwrap();
                    assert_eq!(doc["kind"], kind);
                    let mut p = BTreeSet::new();
                    paths(&doc, "", &mut p);
                    let unknown: Vec<&String> = p
                        .iter()
                        .filter(|p| *p != "apiVersion" && *p != "kind")
                        .filter(|p| !known_path(fields, p))
                        .collect();
                    assert!(
                        unknown.is_empty(),
                        "1.{} {kind} has fields the published API does not: {unknown:?}",
                        f.minor
                    );
                }
            }
        }
    }
    // The check can fail: a made-up field is caught.
    assert!(!known_path(&kubelet, "cgroupDrivers"));
    assert!(!known_path(&proxy, "conntrack.maxPerCores"));
    assert!(known_path(&kubelet, "evictionHard.memory.available"));
}

#[test]
#[ignore = "lab: run by tests/run.sh (needs the v1.20.2 build, ~5 min the first time)"]
fn flags_accepted_by_real_binaries() {
    let out = std::process::Command::new("bash")
        .arg(root().join("tests/lab/build-kubernetes.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    for (component, flags) in rendered(20) {
        let mut cmd = std::process::Command::new(bin.join(component));
        for (n, v) in &flags {
            cmd.arg(if v.is_empty() {
                format!("--{n}")
            } else {
                format!("--{n}={v}")
            });
        }
        let o = cmd.arg("--help").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !err.contains("unknown flag"),
            "{component} rejects a rendered flag: {err}"
        );
    }
}
