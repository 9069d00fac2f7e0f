//! etcd-backup: a verified etcd snapshot (plus the local PKI and inventory) in one archive under
//! `clusters/<name>/backups/`, taken through the cluster's API-free path of `clusterctl backup`
//! before a command changes etcd (`upgrade`). A failed backup stops the run before anything
//! changed. Nothing to do on the hosts themselves.

use futures::future::BoxFuture;

use super::{Context, Order, Phase, PhasePlan};

pub struct EtcdBackup;

impl Phase for EtcdBackup {
    fn name(&self) -> &'static str {
        "etcd-backup"
    }
    fn summary(&self) -> &'static str {
        "an etcd snapshot with the local PKI and inventory, before anything changes"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        plan.local.push(format!(
            "snapshot etcd from a healthy member into {} (verified, with a .sha256; `clusterctl restore` takes it)",
            ctx.state.root.join("backups").display()
        ));
        Ok(plan)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if dry_run {
                return Ok(vec!["would snapshot etcd before changing anything".into()]);
            }
            let hosts: Vec<&crate::inventory::Host> = ctx.inv().etcd_hosts().collect();
            let pool = crate::ops::connect(ctx, &hosts).await?;
            let r = crate::ops::backup::take_backup(ctx, &pool, None).await;
            pool.close().await;
            let path = r?;
            Ok(vec![format!(
                "etcd backed up to {} (restore with `clusterctl restore {}`)",
                path.display(),
                path.display()
            )])
        })
    }
}
