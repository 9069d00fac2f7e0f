//! restore-control-plane: the apiservers start on the restored etcd, all at once (none
//! serves before). Gate: each one's /readyz, then the cluster endpoint's. No undo: from here
//! on the restored etcd stays (a point of no return; the old data stays aside).

use std::time::Duration;

use futures::future::BoxFuture;

use crate::engine::{Action, Context, Executor, Order, Phase, PhasePlan};
use crate::inventory::{Host, Inventory, Role};
use crate::kube::readyz_url;
use crate::phases::components::start_command;

pub struct RestoreControlPlane;

impl Phase for RestoreControlPlane {
    fn name(&self) -> &'static str {
        "restore-control-plane"
    }
    fn summary(&self) -> &'static str {
        "the apiservers start on the restored etcd; gate: /readyz"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in inv.hosts_with(Role::ControlPlane) {
            plan.host(
                h,
                vec![Action::run(
                    "start kube-apiserver",
                    start_command(inv.static_pods(), &["kube-apiserver"], super::HOLD),
                    None,
                )],
            );
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let client = ctx.admin_http()?;
            crate::kube::http::wait_ok(
                &client,
                &readyz_url(ctx.inv(), host),
                Duration::from_secs(180),
            )
            .await?;
            Ok(vec![])
        })
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
            let (ep_host, ep_port) = ctx.inv().apiserver_endpoint_for_admin();
            let url = format!("{}/readyz", Inventory::url(&ep_host, ep_port));
            crate::kube::http::wait_ok(&ctx.admin_http()?, &url, Duration::from_secs(60)).await?;
            Ok(vec![format!("{url}: ok")])
        })
    }
}
