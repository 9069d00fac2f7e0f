//! upgrade-rollback (`upgrade --rollback --hosts X`, `playbooks/upgrade-rollback.yaml`): each
//! named host gets back the binaries the last upgrade kept on it, one host at a time behind
//! the upgrade's gates: out of the balancers while its apiserver restarts, cordoned and drained
//! when its kubelet or kube-proxy goes back (uncordoned after, whatever happened). etcd is never
//! rolled back: a member that ran 3.5 has moved the cluster's data to 3.5.
//!
//! What goes back is read from the hosts by the command before the run ([`RollbackInputs`]).
//! Per component the plan writes a stamp file naming the kept copy and the run (a change
//! restarts the unit, so the engine records the restart in the host's pending record before
//! anything is replaced), installs the kept copy, and restarts the unit: a run killed anywhere
//! in between is finished by the next run of any playbook that manages the unit.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

use super::binaries::{self, Component};

use crate::engine::{Action, Cmd, Context, Executor, Order, Phase, PhasePlan, Script};
use crate::inventory::Host;

pub struct UpgradeRollback;

/// Where the stamps of the rolled-back components are kept (one file per component).
pub const STAMP_DIR: &str = "/var/lib/clusterctl/rollback";

/// A component to return on one host: its kept copy, that copy's sha256 and version.
#[derive(Debug, Clone)]
pub struct Back {
    pub comp: Component,
    pub install: String,
    pub kept: String,
    pub sha: String,
    pub version: String,
}

/// What a rollback run returns, decided once by the command before the run.
#[derive(Debug, Clone, Default)]
pub struct RollbackInputs {
    /// Per host, the components whose kept copy differs from what is installed.
    pub backs: BTreeMap<String, Vec<Back>>,
    /// The run's time: a stamp differs from the last rollback's, so the unit restarts.
    pub stamp: String,
}

fn backs<'a>(ctx: &'a Context, host: &Host) -> &'a [Back] {
    ctx.options
        .inputs
        .get::<RollbackInputs>()
        .and_then(|r| r.backs.get(host.name.as_str()))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn has_node(backs: &[Back]) -> bool {
    backs.iter().any(|b| binaries::NODE.contains(&b.comp))
}

impl Phase for UpgradeRollback {
    fn name(&self) -> &'static str {
        "upgrade-rollback"
    }
    fn summary(&self) -> &'static str {
        "the kept binaries back, one host at a time: out of the balancers, cordoned and drained when its node's binaries go back; gate: the kept binaries run, /readyz, Ready"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::OneAtATime);
        let stamp = ctx
            .options
            .inputs
            .get::<RollbackInputs>()
            .map(|r| r.stamp.clone())
            .unwrap_or_else(|| "<time>".into());
        for h in ctx.hosts_where(|_| true) {
            let backs = backs(ctx, h);
            if backs.is_empty() {
                continue;
            }
            let mut actions = vec![Action::dir(STAMP_DIR, 0o700)];
            for b in backs {
                let unit = b.comp.unit.expect("only components with a unit go back");
                actions.push(Action::rendered(
                    format!("{STAMP_DIR}/{}", b.comp.name),
                    0o600,
                    "(rollback stamp)",
                    format!(
                        "{} {} rolled back to {} (sha256 {}) at {stamp}\n",
                        b.comp.name, b.install, b.kept, b.sha
                    ),
                    &[unit],
                ));
            }
            for b in backs {
                let dir = std::path::Path::new(&b.install)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "/usr/local/bin".into());
                let tmp = format!("{dir}/.{}.rollback", b.comp.name);
                actions.push(Action::run(
                    &format!("install the kept {} {}", b.comp.name, b.version),
                    Cmd::new("install")
                        .args(["-m", "0755"])
                        .arg(&b.kept)
                        .arg(&tmp)
                        .and(Cmd::new("mv").arg("-f").arg(&tmp).arg(&b.install)),
                    Some(
                        Script::new(r#"[ "$(sha256sum <"$1" | cut -c1-64)" = "$2" ]"#)
                            .arg(&b.install)
                            .arg(&b.sha)
                            .into(),
                    ),
                ));
            }
            for b in backs {
                actions.push(Action::service(b.comp.unit.expect("checked above")));
            }
            plan.host(h, actions);
        }
        plan.notes.push(
            "etcd stays as it is (a member is never downgraded: restore a backup instead)".into(),
        );
        Ok(plan)
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if !has_node(backs(ctx, host)) {
                return Ok(vec![]);
            }
            Ok(vec![
                super::drain::drain_for_upgrade(ctx, exec, host).await?,
            ])
        })
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let backs = backs(ctx, host);
            let want: Vec<(String, String)> = backs
                .iter()
                .filter_map(|b| b.comp.unit.map(|u| (u.to_string(), b.sha.clone())))
                .collect();
            binaries::wait_running(exec, host, &want, Duration::from_secs(60)).await?;
            // What the gates it reuses report (e.g. a static pod the kubelet was restarted
            // to admit) is this step's report too.
            let mut report = Vec::new();
            if backs
                .iter()
                .any(|b| binaries::CONTROL_PLANE.contains(&b.comp))
            {
                report.extend(
                    crate::phases::control_plane::ControlPlane
                        .verify(ctx, host, exec)
                        .await?,
                );
            }
            if has_node(backs) {
                let kubelet = backs.iter().find(|b| b.comp.name == "kubelet");
                let api = ctx.kube_admin()?;
                let path = format!("/api/v1/nodes/{}", host.name);
                crate::kube::wait_until(
                    &format!("node {} Ready", host.name),
                    Duration::from_secs(180),
                    Duration::from_millis(500),
                    || async {
                        let n = crate::kube::nodes::Node::from_json(&api.get(&path).await?)?;
                        Ok(match (kubelet, n.not_ready_because) {
                            (Some(k), _)
                                if !super::same_version(&n.kubelet_version, &k.version) =>
                            {
                                crate::kube::Wait::Pending(format!(
                                    "kubelet reports {}",
                                    n.kubelet_version
                                ))
                            }
                            (_, Some(why)) => {
                                crate::kube::Wait::Pending(format!("not Ready ({why})"))
                            }
                            _ => crate::kube::Wait::Done(()),
                        })
                    },
                )
                .await?;
                report.extend(
                    crate::phases::kube_proxy::KubeProxy
                        .verify(ctx, host, exec)
                        .await?,
                );
            }
            report.push(format!(
                "{}: {}",
                host.name,
                backs
                    .iter()
                    .map(|b| format!("{} {}", b.comp.name, b.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok(report)
        })
    }
    fn after_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
        _ok: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            // (Also where nothing goes back: a node a killed run cordoned is uncordoned.)
            if exec.is_dry_run() || !ctx.inv().runs_kubelet(host) {
                return Ok(vec![]);
            }
            let api = ctx.kube_admin()?;
            super::drain::uncordon(&api, exec, host).await?;
            Ok(vec![])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::executor::{converge, fake::FakeHosts};
    use crate::engine::guarded_fake::{resolve, test_context};

    const INV: &str = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: w1, address: 10.0.0.4, roles: [worker]}
"#;

    fn inputs(stamp: &str) -> crate::engine::RunOptions {
        let back = Back {
            comp: binaries::CONTROL_PLANE[2],
            install: "/usr/local/bin/kube-scheduler".into(),
            kept: "/usr/local/lib/clusterctl/previous/kube-scheduler-v1.20.2".into(),
            sha: "ab".repeat(32),
            version: "v1.20.2".into(),
        };
        let mut options = crate::engine::RunOptions::default();
        options.inputs.insert(RollbackInputs {
            backs: [("cp1".to_string(), vec![back])].into(),
            stamp: stamp.into(),
        });
        options
    }

    /// The stamp makes the engine restart the unit (and so record it in the host's pending
    /// record and take it through the rotation); a re-run of the same rollback changes
    /// nothing, a later rollback restarts again.
    #[test]
    fn a_rollback_restarts_through_its_stamp_once_per_run() {
        let d = tempfile::tempdir().unwrap();
        let fake = FakeHosts::default();
        fake.active
            .lock()
            .unwrap()
            .insert(("cp1".into(), "kube-scheduler.service".into()));
        let run = |stamp: &str| {
            let ctx = test_context(INV, d.path(), &["cp1"], inputs(stamp));
            let plan = UpgradeRollback.plan(&ctx).unwrap();
            assert_eq!(
                plan.hosts.len(),
                1,
                "only the host with something to return"
            );
            let kinds: Vec<&str> = plan.hosts[0]
                .actions
                .iter()
                .map(|a| match a {
                    Action::Directory { .. } => "dir",
                    Action::File { .. } => "stamp",
                    Action::Run { .. } => "install",
                    Action::Service { .. } => "service",
                    Action::Check { .. } => "check",
                })
                .collect();
            assert_eq!(kinds, ["dir", "stamp", "install", "service"]);
            let h = ctx.inv().host("cp1").unwrap().clone();
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(converge(&fake, &h, &plan.hosts[0], &resolve))
                .unwrap()
        };
        let first = run("2026-12-05T01:00:00Z");
        assert_eq!(first.restarts, ["kube-scheduler.service"]);
        assert!(fake.pending("cp1").is_empty(), "{:?}", fake.pending("cp1"));
        let again = run("2026-12-05T01:00:00Z");
        assert!(again.is_noop(), "{again:?}");
        let later = run("2026-12-05T02:00:00Z");
        assert_eq!(later.restarts, ["kube-scheduler.service"]);
    }
}
