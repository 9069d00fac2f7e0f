//! upgrade-nodes: kubelet and kube-proxy on every node; control-plane nodes one at a time,
//! then workers in batches of `--max-unavailable`. The driver cordons and drains each node
//! before its step and uncordons it after, even when the step fails (see `drain`). Gate: both
//! units run the new binaries, the node is Ready and reports the target kubelet version, and
//! kube-proxy answers /healthz.

use std::time::Duration;

use futures::future::BoxFuture;

use super::binaries::{self, NODE};
use crate::engine::{Context, Executor, Order, Phase, PhasePlan};
use crate::inventory::Host;

pub struct UpgradeNodes;

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
        let mut plan = PhasePlan::new(self, Order::OneAtATime);
        for hp in kubelet.hosts {
            let h = ctx.inv().host(&hp.host).expect("planned hosts exist");
            let mut base = hp.actions;
            if let Some(p) = proxy.hosts.iter().find(|p| p.host == hp.host) {
                base.extend(p.actions.iter().cloned());
            }
            plan.host(h, binaries::host_actions(ctx, h, &NODE, base)?);
        }
        plan.notes.push(
            "control-plane nodes one at a time, then workers in batches of --max-unavailable; each node is cordoned and drained (Eviction API: PodDisruptionBudgets hold, DaemonSet and mirror pods stay) before its step and uncordoned after it, also when it fails".into(),
        );
        Ok(plan)
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
            let target = ctx.inv().spec.kubernetes_version.clone();
            let path = format!("/api/v1/nodes/{}", host.name);
            crate::kube::wait_until(
                &format!("node {} Ready at {target}", host.name),
                Duration::from_secs(180),
                Duration::from_millis(500),
                || async {
                    let n = crate::kube::nodes::Node::from_json(&api.get(&path).await?)?;
                    Ok(if !super::record::same(&n.kubelet_version, &target) {
                        crate::kube::Wait::Pending(format!("kubelet reports {}", n.kubelet_version))
                    } else if let Some(why) = n.not_ready_because {
                        crate::kube::Wait::Pending(format!("not Ready ({why})"))
                    } else {
                        crate::kube::Wait::Done(())
                    })
                },
            )
            .await?;
            crate::phases::kube_proxy::KubeProxy
                .verify(ctx, host, exec)
                .await?;
            Ok(vec![format!("node {} Ready, kubelet {target}", host.name)])
        })
    }
}
