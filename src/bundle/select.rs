//! What a host needs from a bundle, and what must actually be sent to it.

use std::collections::{BTreeMap, BTreeSet};

use crate::inventory::Role;

use super::manifest::{Item, Manifest};

/// Items the host with `roles` needs. When the bundle holds several versions of one component
/// (e.g. etcd 3.4 and 3.5 for an upgrade), `pins` (name -> version) chooses; without a pin such a
/// component is an error, never a silent pick.
pub fn items_for_roles<'a>(
    m: &'a Manifest,
    roles: &[Role],
    pins: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<&'a Item>> {
    let mut by_name: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for it in m.items.iter().filter(|it| it.needed_by(roles)) {
        by_name.entry(&it.name).or_default().push(it);
    }
    let mut out = Vec::new();
    for (name, items) in by_name {
        match (items.as_slice(), pins.get(name)) {
            ([one], None) => out.push(*one),
            (_, Some(v)) => match items.iter().find(|i| &i.version == v) {
                Some(i) => out.push(*i),
                None => anyhow::bail!(
                    "{name} {v} is not in bundle {} {} (it has: {})",
                    m.name,
                    m.version,
                    items
                        .iter()
                        .map(|i| i.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            (many, None) => anyhow::bail!(
                "bundle {} {} holds {} versions of {name} ({}): say which one to use",
                m.name,
                m.version,
                many.len(),
                many.iter()
                    .map(|i| i.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    // Keep the manifest's order: it is the install order its author chose.
    out.sort_by_key(|it| m.items.iter().position(|x| std::ptr::eq(x, *it)));
    Ok(out)
}

/// Content-addressed transfer: which of `items` a host lacks, given the sha256 values it already
/// has (e.g. from `sha256sum` of its cache). Each distinct blob is sent once.
pub fn to_transfer<'a>(
    items: &[&'a Item],
    host_has: &BTreeSet<String>,
) -> (Vec<&'a Item>, Vec<&'a Item>) {
    let mut send = Vec::new();
    let mut skip = Vec::new();
    let mut queued = BTreeSet::new();
    for it in items {
        let sha = it.sha256.as_deref().unwrap_or_default();
        if host_has.contains(sha) || !queued.insert(sha.to_string()) {
            skip.push(*it);
        } else {
            send.push(*it);
        }
    }
    (send, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Manifest {
        let sha = |n: u8| format!("{:064x}", n);
        let item = |name: &str, ver: &str, roles: &str, s: u8| {
            format!(
                "  - {{name: {name}, version: '{ver}', kind: deb, url: 'file:///{name}', sha256: '{}', size: 1, roles: [{roles}], hashSource: x}}\n",
                sha(s)
            )
        };
        let y = format!(
            "name: t\nversion: '1'\nitems:\n{}{}{}{}{}{}",
            item("etcd", "3.4.23", "etcd", 1),
            item("etcd", "3.5.16", "etcd", 2),
            item("kube-apiserver", "1.20.2", "control-plane", 3),
            item("kubelet", "1.20.2", "control-plane, worker", 4),
            item("haproxy", "2.6.12", "lb", 5),
            item("runc", "1.1.5", "all", 4),
        );
        Manifest::from_yaml(&y).unwrap()
    }

    fn names(v: &[&Item]) -> Vec<String> {
        v.iter().map(|i| i.label()).collect()
    }

    #[test]
    fn worker_gets_only_worker_items() {
        let m = m();
        let got = items_for_roles(&m, &[Role::Worker], &BTreeMap::new()).unwrap();
        assert_eq!(names(&got), ["kubelet 1.20.2", "runc 1.1.5"]);
    }

    #[test]
    fn two_versions_need_a_pin() {
        let m = m();
        let e = items_for_roles(&m, &[Role::Etcd], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 versions of etcd (3.4.23, 3.5.16)"), "{e}");
        let pins = BTreeMap::from([("etcd".to_string(), "3.5.16".to_string())]);
        let got = items_for_roles(&m, &[Role::Etcd, Role::ControlPlane], &pins).unwrap();
        assert_eq!(
            names(&got),
            [
                "etcd 3.5.16",
                "kube-apiserver 1.20.2",
                "kubelet 1.20.2",
                "runc 1.1.5"
            ]
        );
        let bad = BTreeMap::from([("etcd".to_string(), "3.6.0".to_string())]);
        assert!(
            items_for_roles(&m, &[Role::Etcd], &bad)
                .unwrap_err()
                .to_string()
                .contains("it has: 3.4.23, 3.5.16")
        );
    }

    #[test]
    fn transfer_skips_what_the_host_has_and_duplicates() {
        let m = m();
        let items = items_for_roles(&m, &[Role::Worker, Role::Lb], &BTreeMap::new()).unwrap();
        // kubelet and runc share a blob in this fixture: sent once.
        let (send, skip) = to_transfer(&items, &BTreeSet::new());
        assert_eq!(names(&send), ["kubelet 1.20.2", "haproxy 2.6.12"]);
        assert_eq!(names(&skip), ["runc 1.1.5"]);
        let has = BTreeSet::from([format!("{:064x}", 5)]);
        let (send, skip) = to_transfer(&items, &has);
        assert_eq!(names(&send), ["kubelet 1.20.2"]);
        assert_eq!(names(&skip), ["haproxy 2.6.12", "runc 1.1.5"]);
    }
}
