//! upgrade-control-plane: one control-plane host at a time: the old kube-apiserver,
//! -controller-manager and -scheduler kept on the host, the targets swapped in (with the units
//! the control-plane phase renders for the target version), restarted; gate: each unit runs
//! the new binary, the apiserver's /readyz on the host and through the cluster endpoint, and
//! its /version reports the target.

use futures::future::BoxFuture;

use super::binaries::{self, CONTROL_PLANE};
use crate::engine::{Context, Executor, Phase, PhasePlan};
use crate::inventory::{Host, Inventory};

pub struct UpgradeControlPlane;

/// `gitVersion` of the apiserver on `host` (GET /version).
pub async fn apiserver_version(ctx: &Context, host: &Host) -> anyhow::Result<String> {
    let client = ctx.admin_http()?;
    let url = format!(
        "{}/version",
        Inventory::url(host.address, ctx.inv().spec.control_plane.apiserver_port)
    );
    let body = crate::kube::http::get(&client, &url).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("{url}: not JSON ({e}): {body}"))?;
    v.get("gitVersion")
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{url}: no gitVersion in {v}"))
}

impl Phase for UpgradeControlPlane {
    fn name(&self) -> &'static str {
        "upgrade-control-plane"
    }
    fn summary(&self) -> &'static str {
        "control-plane hosts one at a time: old binaries kept, targets swapped in, restarted; gate: new binaries run, /readyz, /version"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let base = crate::phases::control_plane::ControlPlane.plan(ctx)?;
        binaries::stage_plan(ctx, self, base, &CONTROL_PLANE)
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(super::keep_current(ctx, exec, host, &CONTROL_PLANE))
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            binaries::wait_targets(ctx, exec, host, &CONTROL_PLANE).await?;
            let mut report = crate::phases::control_plane::ControlPlane
                .verify(ctx, host, exec)
                .await?;
            let v = apiserver_version(ctx, host).await?;
            let t = ctx.inv().spec.kubernetes_version.to_string();
            if !super::same_version(&v, &t) {
                anyhow::bail!("kube-apiserver on {} reports {v}, not {t}", host.name);
            }
            report.push(format!("kube-apiserver on {} serves {v}", host.name));
            Ok(report)
        })
    }
}
