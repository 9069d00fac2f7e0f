//! upgrade-etcd: etcd members one at a time (etcd supports a rolling 3.4 -> 3.5 upgrade member
//! by member): the old binary kept on the host, the target swapped in, the member restarted;
//! gate: the member healthy, reporting the target version, and every member of the cluster
//! healthy (it rejoined) before the next one goes.

use std::time::Duration;

use futures::future::BoxFuture;

use super::binaries::{self, ETCD};
use crate::engine::{Context, Executor, Phase, PhasePlan};
use crate::inventory::Host;

pub struct UpgradeEtcd;

/// etcdctl against this host's member, with a short deadline: the gates poll it.
fn etcdctl(host: &Host, args: &[&str]) -> crate::engine::Shell {
    crate::phases::etcd::etcdctl(host)
        .arg("--command-timeout=5s")
        .args(args)
        .into()
}

/// The version the member on `host` reports (`endpoint status`).
pub async fn member_version(exec: &dyn Executor, host: &Host) -> anyhow::Result<String> {
    let o = exec
        .query(host, &etcdctl(host, &["endpoint", "status", "-w", "json"]))
        .await?;
    if o.status != 0 {
        anyhow::bail!("etcdctl endpoint status: {}", o.stderr.trim());
    }
    let v: serde_json::Value = serde_json::from_str(o.stdout.trim())
        .map_err(|e| anyhow::anyhow!("etcdctl endpoint status: not JSON ({e}): {}", o.stdout))?;
    v.pointer("/0/Status/version")
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("etcdctl endpoint status: no version in {v}"))
}

impl Phase for UpgradeEtcd {
    fn name(&self) -> &'static str {
        "upgrade-etcd"
    }
    fn summary(&self) -> &'static str {
        "etcd members one at a time: old binary kept, target swapped in, member restarted; gate: healthy at the target version, all members healthy"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let base = crate::phases::etcd::Etcd.plan(ctx)?;
        binaries::stage_plan(ctx, self, base, &ETCD)
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(super::keep_current(ctx, exec, host, &ETCD))
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            binaries::wait_targets(ctx, exec, host, &ETCD).await?;
            crate::phases::etcd::Etcd.verify(ctx, host, exec).await?;
            let v = member_version(exec, host).await?;
            if let Some(t) = &ctx.inv().spec.etcd.version
                && !super::same_version(&v, t)
            {
                anyhow::bail!("etcd member on {} reports {v}, not {t}", host.name);
            }
            // Every member healthy: this one rejoined and the others still answer.
            let cmd = etcdctl(host, &["endpoint", "health", "--cluster"]);
            let mut last = String::new();
            for _ in 0..30 {
                let o = exec.query(host, &cmd).await?;
                if o.status == 0 {
                    return Ok(vec![format!("etcd member on {} runs {v}", host.name)]);
                }
                last = format!("{} {}", o.stdout.trim(), o.stderr.trim());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            anyhow::bail!(
                "etcd cluster not healthy 30 s after {} restarted: {last}",
                host.name
            )
        })
    }
}
