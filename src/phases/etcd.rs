//! etcd: one TLS member per `etcd` host, all started together (a member waits for a quorum),
//! then a health gate over TLS with the healthcheck-client certificate.

use futures::future::BoxFuture;

use super::{Action, Context, Executor, Order, Phase, PhasePlan};
use crate::inventory::{Host, Role};
use crate::render::component_vars;

pub struct Etcd;

/// `etcdctl endpoint health` against the member on this host, over TLS.
pub fn health_command(host: &Host) -> String {
    format!(
        "ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints=https://{}:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
         --command-timeout=5s endpoint health",
        host.address
    )
}

impl Phase for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn summary(&self) -> &'static str {
        "TLS etcd members, started together, health-gated"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Rolling);
        for h in ctx.hosts_where(|h| h.has(Role::Etcd)) {
            let vars = component_vars(&ctx.render, ctx.inv(), h, "etcd")?;
            let unit = ctx.render.render("etcd/etcd.service", &vars)?;
            plan.host(
                h,
                vec![
                    Action::dir(&ctx.inv().spec.etcd.data_dir, 0o700),
                    Action::rendered(
                        "/etc/systemd/system/etcd.service",
                        0o644,
                        "etcd/etcd.service",
                        unit,
                        &["etcd.service"],
                    ),
                    Action::service("etcd.service"),
                ],
            );
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        _ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let cmd = health_command(host);
            let mut last = String::new();
            for _ in 0..30 {
                let o = exec.query(host, &cmd).await?;
                if o.status == 0 {
                    return Ok(vec![]);
                }
                last = format!("{}{}", o.stdout.trim(), o.stderr.trim());
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            anyhow::bail!(
                "etcd member on {} not healthy after 30 s: {last}",
                host.name
            )
        })
    }
}
