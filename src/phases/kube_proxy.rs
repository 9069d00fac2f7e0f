//! kube-proxy: Services on every node (iptables or ipvs, `spec.network.proxyMode`), with the
//! `system:kube-proxy` kubeconfig the pki phase delivered. Gate: its rules are in place.

use futures::future::BoxFuture;

use crate::engine::{Action, Context, Executor, Order, Phase, PhasePlan, Script};
use crate::inventory::Host;
use crate::render::host_vars;

pub struct KubeProxy;

impl Phase for KubeProxy {
    fn name(&self) -> &'static str {
        "kube-proxy"
    }
    fn summary(&self) -> &'static str {
        "kube-proxy on every node; gate: its Service rules are programmed"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Rolling);
        let unit = "kube-proxy.service";
        for h in ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)) {
            let mut vars = host_vars(inv, h);
            let mut actions = Vec::new();
            if inv.kubelet_bootstraps(h) {
                // No kube-proxy certificate is pushed to a TLS-bootstrap worker (the pki
                // phase writes this path elsewhere): it runs on the kubelet's.
                let (server, port) = inv.apiserver_endpoint_for(h);
                vars.insert(
                    "apiserver_url",
                    &crate::inventory::Inventory::url(&server, port),
                );
                actions.push(Action::rendered(
                    "/etc/kubernetes/kube-proxy.conf",
                    0o600,
                    "kube-proxy/kube-proxy-node.conf",
                    ctx.render
                        .render("kube-proxy/kube-proxy-node.conf", &vars)?,
                    &[unit],
                ));
            }
            plan.host(
                h,
                actions
                    .into_iter()
                    .chain([
                        Action::dir("/var/lib/kube-proxy", 0o755),
                        Action::rendered(
                            "/var/lib/kube-proxy/config.yaml",
                            0o644,
                            "kube-proxy/kube-proxy-config.yaml",
                            ctx.render
                                .render("kube-proxy/kube-proxy-config.yaml", &vars)?,
                            &[unit],
                        ),
                        Action::rendered(
                            format!("/etc/systemd/system/{unit}"),
                            0o644,
                            "kube-proxy/kube-proxy.service",
                            ctx.render.render("kube-proxy/kube-proxy.service", &vars)?,
                            &[unit],
                        ),
                        Action::service(unit),
                    ])
                    .collect(),
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
            // kube-proxy answers /healthz once it has synced its rules with the API. 90 s: at
            // 50 lab hosts on 2 cores, kube-proxies took up to 28 s to get there and one took
            // over 30 s, the old bound, failing an `init` that only had to wait. Only a broken
            // kube-proxy waits it out; a healthy one ends the wait as soon as it has synced.
            let script = "for i in $(seq 180); do \
                   if exec 3<>/dev/tcp/127.0.0.1/10256; then \
                     printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3; head -1 <&3 | grep -q ' 200 ' && exit 0; \
                     exec 3<&- 3>&-; fi 2>/dev/null; sleep 0.5; done; \
                 systemctl status --no-pager -n 5 kube-proxy 2>&1; exit 1";
            let o = exec.query(host, &Script::bash(script).into()).await?;
            if o.status != 0 {
                anyhow::bail!(
                    "kube-proxy on {} not healthy after 90 s: {}",
                    host.name,
                    o.stdout.trim()
                );
            }
            Ok(vec![])
        })
    }
}
