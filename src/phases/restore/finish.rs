//! restore-finish: the snapshot copies on the hosts hold every secret: they go. Then one
//! cluster of exactly the inventory's members, and the cluster's health as `verify` reads it.

use futures::future::BoxFuture;

use crate::engine::{Action, Cmd, Context, Order, Phase, PhasePlan};

pub struct RestoreFinish;

impl Phase for RestoreFinish {
    fn name(&self) -> &'static str {
        "restore-finish"
    }
    fn summary(&self) -> &'static str {
        "the snapshot copies removed; one cluster of the inventory's members, healthy"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let remote = super::remote(ctx);
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in ctx.inv().etcd_hosts() {
            plan.host(
                h,
                vec![Action::run(
                    &format!("remove {remote}"),
                    Cmd::new("rm").arg("-f").arg(&remote),
                    Some(Cmd::new("test").arg("!").arg("-e").arg(&remote).into()),
                )],
            );
        }
        Ok(plan)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if dry_run {
                return Ok(vec![]);
            }
            let n = crate::phases::etcd::members::Etcd::new(ctx)?
                .members()
                .await?
                .len();
            let want = ctx.inv().etcd_hosts().count();
            anyhow::ensure!(
                n == want,
                "the restored cluster has {n} member(s), the inventory {want}"
            );
            let h = crate::phases::verify::health(ctx, 60).await?;
            if !h.problems.is_empty() {
                anyhow::bail!(
                    "restored, but the cluster is not healthy yet:\n  {}\n(old data directories kept at {})",
                    h.problems.join("\n  "),
                    super::aside(ctx)
                );
            }
            Ok(h.healthy)
        })
    }
}
