//! The phases of `clusterctl restore ARCHIVE` (`playbooks/restore.yaml`), one per file, in
//! the order they run. The archive was verified on the operator's machine before (checksum,
//! manifest, this cluster's name and members) and the user confirmed.
//!
//! - [`upload`]: the snapshot onto every etcd host (nothing stopped yet);
//! - [`stop`]: every apiserver, controller-manager and scheduler, then every etcd member stop
//!   (undo: started again);
//! - [`etcd`]: each member's data directory moved aside (never deleted) and rebuilt from the
//!   snapshot with a new cluster token, the members started together; gate: healthy (undo:
//!   the old data directories put back);
//! - [`control_plane`]: the apiservers start; gate: /readyz (a point of no return: a failure
//!   from here on leaves the restored etcd);
//! - [`restart`]: one host at a time, the controller-managers and schedulers start and the
//!   kubelets restart (they cached the old cluster state); gates: running, node Ready;
//! - [`finish`]: the snapshot copies go; one cluster of the inventory's members, healthy.

pub mod control_plane;
pub mod etcd;
pub mod finish;
pub mod restart;
pub mod stop;
pub mod upload;

use std::path::PathBuf;

use crate::engine::Context;
pub use crate::engine::RestoreInputs;

/// Where the snapshot waits on the etcd hosts.
pub const REMOTE_DIR: &str = "/var/lib/clusterctl/restore";
/// Where static-pods mode keeps the manifests of stopped components (one fixed place, so a
/// re-run after a killed restore finds them).
pub const HOLD: &str = "/etc/kubernetes/manifests.restore";

/// The run's inputs, or placeholders for `plan --command restore` (no archive given).
pub fn inputs(ctx: &Context) -> RestoreInputs {
    ctx.options.restore.clone().unwrap_or(RestoreInputs {
        snapshot: PathBuf::from("<archive>/snapshot.db"),
        stamp: "<time>".into(),
    })
}

/// The snapshot's path on an etcd host.
pub fn remote(ctx: &Context) -> String {
    format!("{REMOTE_DIR}/{}-{}.db", ctx.inv().name(), inputs(ctx).stamp)
}

/// Where each member's old data directory goes.
pub fn aside(ctx: &Context) -> String {
    format!(
        "{}.before-restore-{}",
        ctx.inv().spec.etcd.data_dir,
        inputs(ctx).stamp
    )
}

/// The restored members' new cluster token: they can never join the old cluster's members.
pub fn token(ctx: &Context) -> String {
    format!("etcd-{}-restore-{}", ctx.inv().name(), inputs(ctx).stamp)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use crate::engine::guarded_fake::GuardedHosts;
    use crate::engine::runner::{ConsoleProgress, Journal, Runner};
    use crate::engine::{Action, Context};
    use crate::phases::playbook::Selection;

    const INV: &str = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: cp2, address: 10.0.0.2, roles: [etcd, control-plane]}
    - {name: e3, address: 10.0.0.3, roles: [etcd]}
    - {name: w1, address: 10.0.0.4, roles: [worker]}
"#;

    fn ctx(dir: &std::path::Path) -> Context {
        let snapshot = dir.join("snapshot.db");
        std::fs::write(&snapshot, b"snapshot").unwrap();
        let options = crate::engine::RunOptions {
            restore: Some(super::RestoreInputs {
                snapshot,
                stamp: "20261204T220000Z".into(),
            }),
            ..Default::default()
        };
        crate::engine::guarded_fake::test_context(INV, dir, &[], options)
    }

    /// The restore playbook up to the rebuilt etcd (the later phases' gates need an API).
    fn runner(ctx: &Context, only: &[&str]) -> Runner {
        let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
        let pb = crate::phases::playbook::load("restore", None, &known).unwrap();
        let sel = Selection {
            only: only.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let _ = ctx;
        pb.runner(&sel).unwrap()
    }

    use crate::engine::guarded_fake::resolve;

    fn apply(ctx: &Context, r: &Runner, exec: &GuardedHosts) -> anyhow::Result<()> {
        let journal = Journal::disabled();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(r.apply(ctx, exec, &resolve, &ConsoleProgress, &journal))
            .map(|_| ())
    }

    const TO_ETCD: [&str; 3] = ["restore-upload", "restore-stop", "restore-etcd"];

    #[test]
    fn the_plan_stops_the_control_plane_before_etcd_and_restarts_one_host_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let plans = runner(&ctx, &[]).plan(&ctx).unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(
            names,
            [
                "restore-upload",
                "restore-stop",
                "restore-etcd",
                "restore-control-plane",
                "restore-restart",
                "restore-finish"
            ]
        );
        let up: Vec<&str> = plans[0].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            up,
            ["cp1", "cp2", "e3"],
            "the snapshot goes to the etcd hosts"
        );
        let stop = &plans[1].hosts[0].actions;
        let words: Vec<String> = stop
            .iter()
            .filter_map(|a| match a {
                Action::Run { description, .. } => Some(description.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            words,
            [
                "stop kube-apiserver, kube-controller-manager, kube-scheduler",
                "stop etcd"
            ]
        );
        assert_eq!(plans[4].order, crate::engine::Order::OneAtATime);
        let restart: Vec<&str> = plans[4].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            restart,
            ["cp1", "cp2", "w1"],
            "every kubelet and controller host"
        );
    }

    #[test]
    fn a_failed_rebuild_puts_the_old_data_back_and_starts_what_was_stopped() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let r = runner(&ctx, &TO_ETCD);
        let mut host = GuardedHosts::for_plans(&r.plan(&ctx).unwrap());
        host.fail_on = Some("snapshot restore".into());
        let e = apply(&ctx, &r, &host).unwrap_err();
        assert!(format!("{e:#}").contains("restore-etcd"), "{e:#}");
        let log = host.log.lock().unwrap().join("\n");
        let put_back = log.find(r#"rm -rf "$1" && mv "$2" "$1""#);
        let start = log.rfind("systemctl start --no-block etcd.service");
        assert!(put_back.is_some() && start.is_some(), "{log}");
        assert!(
            put_back < start,
            "the old data first, then etcd starts:\n{log}"
        );
        assert!(
            log.contains("cp1: systemctl start --no-block kube-apiserver.service"),
            "{log}"
        );
    }

    #[test]
    fn a_failure_once_the_restored_members_are_healthy_undoes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let r = runner(
            &ctx,
            &[
                "restore-upload",
                "restore-stop",
                "restore-etcd",
                "restore-control-plane",
            ],
        );
        let mut host = GuardedHosts::for_plans(&r.plan(&ctx).unwrap());
        host.fail_on = Some("start --no-block kube-apiserver".into());
        let e = apply(&ctx, &r, &host).unwrap_err();
        assert!(format!("{e:#}").contains("restore-control-plane"), "{e:#}");
        let log = host.log.lock().unwrap().join("\n");
        assert!(!log.contains(r#"rm -rf "$1" && mv "$2" "$1""#), "{log}");
    }

    #[test]
    fn a_killed_restore_is_finished_by_a_rerun() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let r = runner(&ctx, &TO_ETCD);
        let mut host = GuardedHosts::for_plans(&r.plan(&ctx).unwrap());
        // Killed after the members stopped, before every one was rebuilt.
        host.budget = Some(AtomicUsize::new(6));
        assert!(apply(&ctx, &r, &host).is_err());
        host.budget = None;
        apply(&ctx, &r, &host).unwrap();
        let log = host.log.lock().unwrap().join("\n");
        for h in ["cp1", "cp2", "e3"] {
            assert!(
                log.contains(&format!("{h}: sh -c 'set -e; data=$1 aside=$2; owner=0:0")),
                "{h} rebuilt:\n{log}"
            );
            assert!(
                log.contains(&format!("{h}: systemctl start --no-block etcd.service")),
                "{h} started:\n{log}"
            );
        }
    }
}
