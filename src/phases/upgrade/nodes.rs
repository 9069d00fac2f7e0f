//! upgrade-nodes: kubelet and kube-proxy on every node, control-plane nodes first, in batches
//! of `--max-unavailable` (default one at a time). A node whose binaries change is cordoned and
//! drained right before its step (`before_host`) and uncordoned after it, also when it fails
//! (`after_host`); both are recorded on the host (see `drain`), so a killed run's re-run
//! uncordons it and does not drain it twice. Gate: both units run the new binaries, the node is
//! Ready and reports the target kubelet version, and kube-proxy answers /healthz.

use std::time::Duration;

use futures::future::BoxFuture;

use super::binaries::{self, NODE};
use crate::engine::{Context, Executor, Order, Phase, PhasePlan};
use crate::inventory::Host;
use crate::inventory::Role;

pub struct UpgradeNodes;

/// How long draining one node may take unless `--drain-timeout` says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

fn max_unavailable(ctx: &Context) -> usize {
    ctx.options.max_unavailable.unwrap_or(1).max(1)
}

impl Phase for UpgradeNodes {
    fn name(&self) -> &'static str {
        "upgrade-nodes"
    }
    fn summary(&self) -> &'static str {
        "kubelet + kube-proxy node by node (workers in batches of --max-unavailable), each cordoned and drained first and uncordoned after; gate: Ready at the target version"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let kubelet = crate::phases::kubelet::Kubelet.plan(ctx)?;
        let proxy = crate::phases::kube_proxy::KubeProxy.plan(ctx)?;
        let order = match max_unavailable(ctx) {
            1 => Order::OneAtATime,
            n => Order::Batches(n),
        };
        let mut plan = PhasePlan::new(self, order);
        let mut hosts = kubelet.hosts;
        // Control-plane nodes first (a stable sort keeps the inventory's order otherwise).
        hosts.sort_by_key(|hp| {
            !ctx.inv()
                .host(&hp.host)
                .is_some_and(|h| h.has(Role::ControlPlane))
        });
        for hp in hosts {
            let h = ctx.inv().host(&hp.host).expect("planned hosts exist");
            let mut base = hp.actions;
            if let Some(p) = proxy.hosts.iter().find(|p| p.host == hp.host) {
                base.extend(p.actions.iter().cloned());
            }
            plan.host(h, binaries::host_actions(ctx, h, &NODE, base)?);
        }
        plan.notes.push(format!(
            "control-plane nodes first, {} node(s) at a time (--max-unavailable); a node whose binaries change is cordoned and drained (Eviction API: PodDisruptionBudgets hold, DaemonSet and mirror pods stay; timeout {} s) before its step and uncordoned after it, also when it fails",
            max_unavailable(ctx),
            ctx.options.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT).as_secs()
        ));
        plan.notes.push(format!(
            "before a host's binaries are replaced, the ones it has are kept in {} (`upgrade --rollback`)",
            binaries::PREVIOUS_DIR
        ));
        Ok(plan)
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let mut lines = super::keep_current(ctx, exec, host, &NODE).await?;
            // Only a node whose kubelet or kube-proxy gets a new binary is drained: a config
            // change alone restarts them without touching the pods.
            let want = binaries::unit_targets(ctx, host, &NODE)?;
            if binaries::runs_targets(exec, host, &want).await? {
                return Ok(lines);
            }
            lines.push(super::drain::drain_for_upgrade(ctx, exec, host).await?);
            Ok(lines)
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
            if exec.is_dry_run() {
                return Ok(vec![]);
            }
            let api = ctx.kube_admin()?;
            super::drain::uncordon(&api, exec, host)
                .await
                .map_err(|e| {
                    e.context(format!(
                        "uncordoning {}: run `clusterctl upgrade` again, or `kubectl uncordon {}`",
                        host.name, host.name
                    ))
                })?;
            Ok(vec![])
        })
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            binaries::wait_targets(ctx, exec, host, &NODE).await?;
            // The restarted kubelet reports its version in the node's status; until then the
            // node's Ready condition is the old kubelet's.
            let api = ctx.kube_admin()?;
            let target = ctx.inv().spec.kubernetes_version.to_string();
            let path = format!("/api/v1/nodes/{}", host.name);
            crate::kube::wait_until(
                &format!("node {} Ready at {target}", host.name),
                Duration::from_secs(180),
                Duration::from_millis(500),
                || async {
                    let n = crate::kube::nodes::Node::from_json(&api.get(&path).await?)?;
                    Ok(if !super::same_version(&n.kubelet_version, &target) {
                        crate::kube::Wait::Pending(format!("kubelet reports {}", n.kubelet_version))
                    } else if let Some(why) = n.not_ready_because {
                        crate::kube::Wait::Pending(format!("not Ready ({why})"))
                    } else {
                        crate::kube::Wait::Done(())
                    })
                },
            )
            .await?;
            let mut report = crate::phases::kube_proxy::KubeProxy
                .verify(ctx, host, exec)
                .await?;
            report.push(format!("node {} Ready, kubelet {target}", host.name));
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: w1, address: 10.0.0.4, roles: [worker]}
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane, worker]}
    - {name: w2, address: 10.0.0.5, roles: [worker]}
    - {name: w3, address: 10.0.0.6, roles: [worker]}
"#;

    #[test]
    fn control_plane_nodes_go_first_and_max_unavailable_makes_batches() {
        let d = tempfile::tempdir().unwrap();
        let ctx = |n: Option<usize>| {
            crate::engine::guarded_fake::test_context(
                INV,
                d.path(),
                &[],
                crate::engine::RunOptions {
                    max_unavailable: n,
                    ..Default::default()
                },
            )
        };
        let one = UpgradeNodes.plan(&ctx(None)).unwrap();
        assert_eq!(one.order, Order::OneAtATime);
        let hosts: Vec<&str> = one.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["cp1", "w1", "w2", "w3"]);
        let two = UpgradeNodes.plan(&ctx(Some(2))).unwrap();
        assert_eq!(two.order, Order::Batches(2));
    }
}
