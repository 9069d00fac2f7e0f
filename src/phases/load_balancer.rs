//! load-balancer: how everything reaches the apiservers.
//! - `vip`: keepalived (VRRP) + haproxy on the `lb` hosts, or on the control-plane hosts;
//! - `local-proxy`: haproxy on every node on 127.0.0.1 in front of all apiservers;
//! - `external`: the user's balancer; only checked for reachability.

use super::{Action, Context, Order, Phase, PhasePlan};
use crate::inventory::{HaMode, Role};
use crate::render::host_vars;

pub struct LoadBalancer;

/// `/etc/<template>` rendered from `templates/<template>`; a change reloads `<program>`
/// (haproxy's master starts new workers and lets the old ones finish their connections;
/// keepalived re-reads its config and keeps the VIP where it is).
fn config(
    ctx: &Context,
    vars: &tera::Context,
    program: &str,
    template: &str,
) -> anyhow::Result<Action> {
    Ok(Action::rendered(
        format!("/etc/{template}"),
        0o644,
        template,
        ctx.render.render(template, vars)?,
        &[&format!("{program}.service")],
    ))
}

impl Phase for LoadBalancer {
    fn name(&self) -> &'static str {
        "load-balancer"
    }
    fn summary(&self) -> &'static str {
        "VIP (keepalived + haproxy), local proxies, or the external endpoint"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Rolling);
        match inv.spec.ha.mode {
            HaMode::Vip => {
                let lb: Vec<String> = inv.lb_hosts().iter().map(|h| h.name.clone()).collect();
                if inv
                    .spec
                    .ha
                    .vip
                    .as_ref()
                    .is_some_and(|v| v.interface.is_none())
                {
                    plan.notes.push(format!(
                        "spec.ha.vip.interface is not set: keepalived uses {}",
                        crate::render::DEFAULT_VIP_INTERFACE
                    ));
                }
                for h in ctx.hosts_where(|h| lb.contains(&h.name)) {
                    let vars = host_vars(inv, h);
                    plan.host(
                        h,
                        vec![
                            config(ctx, &vars, "haproxy", "haproxy/haproxy.cfg")?,
                            config(ctx, &vars, "keepalived", "keepalived/keepalived.conf")?,
                            Action::reloaded_service("haproxy.service"),
                            Action::reloaded_service("keepalived.service"),
                        ],
                    );
                }
            }
            HaMode::LocalProxy => {
                for h in ctx.hosts_where(|h| inv.runs_kubelet(h)) {
                    let vars = host_vars(inv, h);
                    plan.host(
                        h,
                        vec![
                            config(ctx, &vars, "haproxy", "haproxy/haproxy.cfg")?,
                            Action::reloaded_service("haproxy.service"),
                        ],
                    );
                }
            }
            HaMode::External => {
                let (host, port) = inv.apiserver_endpoint_for_admin();
                for h in ctx.hosts_where(|h| h.has(Role::ControlPlane)) {
                    plan.host(
                        h,
                        vec![Action::check(
                            &format!("external endpoint {host}:{port} reachable"),
                            &format!("timeout 3 bash -c '</dev/tcp/{host}/{port}' 2>&1"),
                        )],
                    );
                }
            }
        }
        Ok(plan)
    }
}
