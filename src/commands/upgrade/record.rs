//! `clusters/<name>/versions.json`: the versions the cluster runs, as clusterctl last made
//! them. The inventory says what the user wants; this file says what is there. `init` and
//! `join` refuse an inventory whose versions differ from it (they would silently downgrade or
//! upgrade hosts by converging them to the inventory's binaries); `upgrade` is the one command
//! that moves it, and records an unfinished run and rolled-back hosts so that the others refuse
//! until it is finished.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::diag::UserError;
use crate::engine::Context;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// `spec.kubernetesVersion` the cluster runs.
    pub kubernetes_version: String,
    /// `spec.etcd.version` the members run (None: not pinned in the inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// An `upgrade` that started and did not finish: its targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrading: Option<Targets>,
    /// Hosts returned to their previous binaries by `upgrade --rollback`: what they run now.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rolled_back: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    pub kubernetes_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
}

pub fn path(ctx: &Context) -> PathBuf {
    ctx.state.root.join("versions.json")
}

pub fn load(ctx: &Context) -> anyhow::Result<Option<Record>> {
    let p = path(ctx);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).map_err(|e| {
            UserError::bad_input(format!(
                "{}: not a clusterctl versions record: {e}\n  fix: restore it from a backup of the state directory",
                p.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", p.display())),
    }
}

pub fn save(ctx: &Context, r: &Record) -> anyhow::Result<()> {
    let p = path(ctx);
    std::fs::create_dir_all(&ctx.state.root)?;
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)?;
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

pub use crate::phases::upgrade::same_version as same;

/// What the inventory asks for, as a record.
pub fn of_inventory(ctx: &Context) -> Record {
    Record {
        kubernetes_version: ctx.inv().spec.kubernetes_version.to_string(),
        etcd_version: ctx.inv().spec.etcd.version.as_ref().map(|v| v.to_string()),
        ..Default::default()
    }
}

/// Why `command` (init, join) must not run with this inventory against this record, if so.
pub fn conflict(inv: &Record, rec: &Record, command: &str, file: &str) -> Option<String> {
    if let Some(t) = &rec.upgrading {
        return Some(format!(
            "an upgrade to Kubernetes {}{} started and did not finish: `{command}` now could leave hosts on two versions\n  fix: run `clusterctl upgrade` again (it resumes where it stopped)",
            t.kubernetes_version,
            t.etcd_version
                .as_ref()
                .map(|e| format!(" / etcd {e}"))
                .unwrap_or_default()
        ));
    }
    if !rec.rolled_back.is_empty() {
        let hosts: Vec<&str> = rec.rolled_back.keys().map(String::as_str).collect();
        return Some(format!(
            "host(s) {} were returned to their previous binaries by `upgrade --rollback`: `{command}` would move them forward again without the upgrade's drain and gates\n  fix: run `clusterctl upgrade` to bring them to Kubernetes {} again",
            hosts.join(", "),
            rec.kubernetes_version
        ));
    }
    if !same(&inv.kubernetes_version, &rec.kubernetes_version) {
        return Some(format!(
            "{file}: spec.kubernetesVersion is {} but the cluster runs {} (recorded by clusterctl): `{command}` would replace the running binaries with the inventory's and skip the upgrade's order, drain and gates\n  fix: set spec.kubernetesVersion: {} in {file}, or move the cluster with `clusterctl upgrade --to {}`",
            inv.kubernetes_version,
            rec.kubernetes_version,
            rec.kubernetes_version,
            inv.kubernetes_version
        ));
    }
    if let (Some(i), Some(r)) = (&inv.etcd_version, &rec.etcd_version)
        && !same(i, r)
    {
        return Some(format!(
            "{file}: spec.etcd.version is {i} but the etcd members run {r} (recorded by clusterctl): `{command}` would swap the members' binaries outside the upgrade's member-by-member order (and etcd is never downgraded)\n  fix: set spec.etcd.version: {r} in {file}, or run `clusterctl upgrade` to move etcd to {i}"
        ));
    }
    None
}

/// For `init` and `join`, before any host is touched: the inventory must match the record.
pub fn check_inventory(ctx: &Context, command: &str) -> anyhow::Result<()> {
    let Some(rec) = load(ctx)? else {
        return Ok(());
    };
    let file = ctx.loaded.path.display().to_string();
    match conflict(&of_inventory(ctx), &rec, command, &file) {
        Some(m) => Err(UserError::bad_input(m).into()),
        None => Ok(()),
    }
}

/// After a successful `init` or `join`: the cluster runs what the inventory says (first
/// record, or unchanged).
pub fn record_converged(ctx: &Context) -> anyhow::Result<()> {
    let mut r = load(ctx)?.unwrap_or_default();
    let inv = of_inventory(ctx);
    r.kubernetes_version = inv.kubernetes_version;
    if inv.etcd_version.is_some() {
        r.etcd_version = inv.etcd_version;
    }
    save(ctx, &r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, e: Option<&str>) -> Record {
        Record {
            kubernetes_version: k.into(),
            etcd_version: e.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn an_inventory_behind_the_cluster_is_refused_with_the_fix() {
        let m = conflict(
            &rec("v1.20.2", Some("3.4.23")),
            &rec("v1.20.3", Some("3.5.16")),
            "init",
            "inv.yaml",
        )
        .unwrap();
        assert!(
            m.contains("spec.kubernetesVersion is v1.20.2 but the cluster runs v1.20.3"),
            "{m}"
        );
        assert!(
            m.contains("fix: set spec.kubernetesVersion: v1.20.3 in inv.yaml"),
            "{m}"
        );
        let m = conflict(
            &rec("v1.20.3", Some("3.4.23")),
            &rec("1.20.3", Some("3.5.16")),
            "join",
            "inv.yaml",
        )
        .unwrap();
        assert!(
            m.contains("spec.etcd.version is 3.4.23 but the etcd members run 3.5.16"),
            "{m}"
        );
        assert!(
            conflict(
                &rec("1.20.3", None),
                &rec("v1.20.3", Some("3.5.16")),
                "init",
                "f"
            )
            .is_none()
        );
    }

    #[test]
    fn an_unfinished_upgrade_or_a_rollback_blocks_init() {
        let mut r = rec("v1.20.2", Some("3.4.23"));
        r.upgrading = Some(Targets {
            kubernetes_version: "v1.20.3".into(),
            etcd_version: None,
        });
        let m = conflict(&rec("v1.20.2", Some("3.4.23")), &r, "init", "f").unwrap();
        assert!(m.contains("run `clusterctl upgrade` again"), "{m}");
        let mut r = rec("v1.20.3", None);
        r.rolled_back.insert(
            "h2".into(),
            [("kube-apiserver".to_string(), "v1.20.2".to_string())].into(),
        );
        let m = conflict(&rec("v1.20.3", None), &r, "init", "f").unwrap();
        assert!(m.contains("h2 were returned"), "{m}");
    }
}
