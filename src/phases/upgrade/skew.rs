//! The version skew check of `upgrade plan` (and of every `upgrade` before it touches a host):
//! what runs now on each host against the targets, under Kubernetes' version skew policy
//! (<https://kubernetes.io/releases/version-skew-policy/>; how far a node may lag is a fact
//! of the apiserver's minor, `KubeVersion::node_skew_minors`) and etcd's upgrade rules. Pure:
//! the observations come from the hosts, the verdict is computed here. Versions are
//! [`KubeVersion`]s (etcd's too: the same triple, compared alike).

use std::collections::BTreeMap;

use crate::version::KubeVersion;

/// The Kubernetes programs on a host, in upgrade order.
pub const CONTROL_PLANE: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
pub const NODE: [&str; 2] = ["kubelet", "kube-proxy"];

/// What one host runs now: component -> version of the running process (or, when the unit
/// is stopped, of the binary on disk).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub host: String,
    pub versions: BTreeMap<String, KubeVersion>,
}

#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub kube: KubeVersion,
    /// None: etcd is not changed (no etcd version pinned, or no etcd host in the run).
    pub etcd: Option<KubeVersion>,
}

/// Every violation, each a sentence naming the host and the fix. Empty: the plan may run.
pub fn check(hosts: &[Observed], t: &Targets) -> Vec<String> {
    let mut v = Vec::new();
    let all = |c: &'static str| {
        hosts
            .iter()
            .filter_map(move |h| h.versions.get(c).map(|ver| (h.host.as_str(), *ver)))
    };
    // Target against each running version, per component.
    for c in CONTROL_PLANE.iter().chain(NODE.iter()) {
        for (h, cur) in all(c) {
            if cur.major != t.kube.major {
                v.push(format!(
                    "{h}: {c} {cur} -> {}: a change of major version is not an upgrade clusterctl makes",
                    t.kube
                ));
            } else if cur > t.kube {
                v.push(format!(
                    "{h}: {c} runs {cur}, newer than the target {}: `upgrade` does not downgrade (set the target to {cur}, or return hosts to the binaries kept on them with `clusterctl upgrade --rollback --hosts {h}`)",
                    t.kube
                ));
            } else if CONTROL_PLANE.contains(c) && t.kube.minor > cur.minor + 1 {
                v.push(format!(
                    "{h}: {c} {cur} -> {}: the control plane may not skip a minor version; upgrade to 1.{}.x first",
                    t.kube,
                    cur.minor + 1
                ));
            } else if NODE.contains(c) && t.kube.minor > cur.minor + t.kube.node_skew_minors() {
                let n = t.kube.node_skew_minors();
                v.push(format!(
                    "{h}: {c} {cur} would be more than {n} minor versions older than the target apiservers {} (the skew policy of 1.{} allows {n}): upgrade the nodes to 1.{}.x or newer first",
                    t.kube,
                    t.kube.minor,
                    t.kube.minor - n
                ));
            }
        }
    }
    // What runs now must itself be within policy (a half-finished upgrade of another tool, a
    // node someone upgraded by hand): else each step would start from a violation.
    let api: Vec<(&str, KubeVersion)> = all("kube-apiserver").collect();
    if let (Some(lo), Some(hi)) = (
        api.iter().min_by_key(|(_, x)| *x),
        api.iter().max_by_key(|(_, x)| *x),
    ) {
        if hi.1.minor > lo.1.minor + 1 {
            v.push(format!(
                "apiservers differ by more than one minor now ({} runs {}, {} runs {}): bring them within one minor first",
                lo.0, lo.1, hi.0, hi.1
            ));
        }
        let oldest = lo.1;
        for c in ["kube-controller-manager", "kube-scheduler"] {
            for (h, cur) in all(c) {
                if (cur.major, cur.minor) > (oldest.major, oldest.minor) {
                    v.push(format!(
                        "{h}: {c} runs {cur}, newer than the oldest apiserver ({} on {}): the policy forbids it; upgrade the apiservers first",
                        oldest, lo.0
                    ));
                }
            }
        }
        for c in NODE {
            for (h, cur) in all(c) {
                if (cur.major, cur.minor) > (oldest.major, oldest.minor) {
                    v.push(format!(
                        "{h}: {c} runs {cur}, newer than the oldest apiserver ({} on {}): a node may not be newer than the API server",
                        oldest, lo.0
                    ));
                }
            }
        }
    }
    if let Some(te) = t.etcd {
        for (h, cur) in all("etcd") {
            // etcd writes its versions without a `v`.
            let (cur_n, te_n) = (cur.number(), te.number());
            if te < cur {
                v.push(format!(
                    "{h}: etcd runs {cur_n}, the target is {te_n}: etcd members are never downgraded (restore a backup taken before the upgrade instead)"
                ));
            } else if te.major != cur.major || te.minor > cur.minor + 1 {
                v.push(format!(
                    "{h}: etcd {cur_n} -> {te_n}: etcd upgrades one minor version at a time; go to {}.{}.x first",
                    cur.major,
                    cur.minor + 1
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ver(s: &str) -> KubeVersion {
        s.parse().unwrap()
    }

    fn host(name: &str, vs: &[(&str, &str)]) -> Observed {
        Observed {
            host: name.into(),
            versions: vs.iter().map(|(c, v)| (c.to_string(), ver(v))).collect(),
        }
    }

    fn cp(name: &str, k: &str, e: &str) -> Observed {
        host(
            name,
            &[
                ("etcd", e),
                ("kube-apiserver", k),
                ("kube-controller-manager", k),
                ("kube-scheduler", k),
                ("kubelet", k),
                ("kube-proxy", k),
            ],
        )
    }

    fn targets(k: &str, e: Option<&str>) -> Targets {
        Targets {
            kube: ver(k),
            etcd: e.map(ver),
        }
    }

    #[test]
    fn versions_are_read_from_version_output() {
        assert_eq!(
            KubeVersion::find_in("Kubernetes v1.20.3").unwrap(),
            (ver("1.20.3"), "v1.20.3".into())
        );
        assert_eq!(
            KubeVersion::find_in("etcd Version: 3.5.16\nGit SHA: GitNotFound\nGo Version: go1.22")
                .unwrap()
                .0,
            ver("3.5.16")
        );
        assert!(KubeVersion::find_in("command not found").is_none());
        assert_eq!(ver("v1.31.4-rc.1").patch, 4);
        assert!(
            "1.20".parse::<KubeVersion>().is_err() && "1.20.1.1".parse::<KubeVersion>().is_err()
        );
    }

    #[test]
    fn a_patch_upgrade_and_an_etcd_minor_pass() {
        let hosts = [
            cp("h1", "v1.20.2", "3.4.23"),
            cp("h2", "v1.20.2", "3.4.23"),
            host("h4", &[("kubelet", "v1.20.2"), ("kube-proxy", "v1.20.2")]),
        ];
        assert!(check(&hosts, &targets("v1.20.3", Some("3.5.16"))).is_empty());
        // A run that resumes: some hosts already at the target.
        let hosts = [cp("h1", "v1.20.3", "3.5.16"), cp("h2", "v1.20.2", "3.4.23")];
        assert!(check(&hosts, &targets("v1.20.3", Some("3.5.16"))).is_empty());
        // One minor up for the control plane, kubelets 2 minors behind the target.
        let hosts = [
            cp("h1", "v1.20.9", "3.4.23"),
            host("h4", &[("kubelet", "v1.19.1")]),
        ];
        assert!(check(&hosts, &targets("v1.21.0", None)).is_empty());
    }

    #[test]
    fn skipping_a_minor_downgrading_and_old_kubelets_are_refused() {
        let hosts = [cp("h1", "v1.20.2", "3.4.23")];
        let v = check(&hosts, &targets("v1.22.0", None));
        assert!(
            v.iter()
                .any(|m| m.contains("h1: kube-apiserver") && m.contains("skip a minor")),
            "{v:?}"
        );
        let v = check(&hosts, &targets("v1.20.1", None));
        assert!(
            v.iter()
                .any(|m| m.contains("does not downgrade") && m.contains("--rollback --hosts h1")),
            "{v:?}"
        );
        let hosts = [
            cp("h1", "v1.21.0", "3.4.23"),
            host("h4", &[("kubelet", "v1.18.0")]),
        ];
        let v = check(&hosts, &targets("v1.21.1", None));
        assert!(
            v.iter()
                .any(|m| m.starts_with("h4: kubelet") && m.contains("more than 2 minor")),
            "{v:?}"
        );
    }

    #[test]
    fn how_far_nodes_may_lag_is_a_fact_of_the_apiservers_minor() {
        let nodes = |v: &str| host("h4", &[("kubelet", v), ("kube-proxy", v)]);
        // (control plane, target, minors allowed, nodes just within, nodes one minor too old)
        // A 1.27 control plane: 2 (the policy before 1.28); a 1.30 one: 3 (from 1.28 on).
        for (now, to, n, within, too_old) in [
            ("v1.27.3", "v1.27.4", 2, "v1.25.0", "v1.24.9"),
            ("v1.30.2", "v1.30.5", 3, "v1.27.16", "v1.26.1"),
        ] {
            let cp = cp("h1", now, "3.5.9");
            let ok = check(&[cp.clone(), nodes(within)], &targets(to, None));
            assert!(ok.is_empty(), "{now} with {within} nodes: {ok:?}");
            let v = check(&[cp, nodes(too_old)], &targets(to, None));
            let lagging: Vec<&String> = v
                .iter()
                .filter(|m| m.starts_with("h4: ") && m.contains("minor versions older"))
                .collect();
            assert_eq!(lagging.len(), 2, "kubelet and kube-proxy: {v:?}");
            let (more, first) = (
                format!("more than {n} minor"),
                format!("{}.x or newer", &within[1..within.rfind('.').unwrap()]),
            );
            assert!(
                lagging
                    .iter()
                    .all(|m| m.contains(&more) && m.contains(&first)),
                "{lagging:?}"
            );
        }
        // The boundary: 1.25 nodes stay within policy when a 1.27 control plane goes to 1.28.
        let hosts = [cp("h1", "v1.27.3", "3.5.9"), nodes("v1.25.0")];
        assert!(check(&hosts, &targets("v1.28.0", None)).is_empty());
    }

    #[test]
    fn a_current_state_outside_the_policy_is_refused() {
        let mut h1 = cp("h1", "v1.20.2", "3.4.23");
        h1.versions.insert("kube-scheduler".into(), ver("v1.21.0"));
        let h4 = host("h4", &[("kubelet", "v1.21.0")]);
        let v = check(&[h1, h4], &targets("v1.21.0", None));
        assert!(
            v.iter().any(|m| m.starts_with("h1: kube-scheduler")
                && m.contains("newer than the oldest apiserver")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|m| m.starts_with("h4: kubelet") && m.contains("may not be newer")),
            "{v:?}"
        );
        let v = check(
            &[cp("h1", "v1.20.2", "3.4.23"), cp("h2", "v1.22.0", "3.4.23")],
            &targets("v1.22.0", None),
        );
        assert!(
            v.iter().any(|m| m.contains("more than one minor now")),
            "{v:?}"
        );
    }

    #[test]
    fn etcd_is_never_downgraded_and_goes_one_minor_at_a_time() {
        let hosts = [cp("h1", "v1.20.2", "3.5.16")];
        let v = check(&hosts, &targets("v1.20.2", Some("3.4.23")));
        assert!(v.iter().any(|m| m.contains("never downgraded")), "{v:?}");
        let hosts = [cp("h1", "v1.20.2", "3.3.0")];
        let v = check(&hosts, &targets("v1.20.2", Some("3.5.16")));
        assert!(
            v.iter().any(|m| m.contains("one minor version at a time")),
            "{v:?}"
        );
        assert!(
            check(&hosts, &targets("v1.20.2", None)).is_empty(),
            "etcd unchanged"
        );
    }
}
