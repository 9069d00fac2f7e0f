//! load-balancer: how everything reaches the apiservers.
//! - `vip`: keepalived (VRRP) + haproxy on the `lb` hosts, or on the control-plane hosts;
//! - `local-proxy`: haproxy on every node on 127.0.0.1 in front of all apiservers;
//! - `external`: the user's balancer; only checked for reachability.

use crate::engine::rotation::balancers;
use crate::engine::{Action, Cmd, Context, Order, Phase, PhasePlan, Script};
use crate::inventory::{HaMode, Host, Role};
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
        self.plan_for(ctx, ctx.inv(), &ctx.host_filter)
    }
    /// A balancer "runs" when haproxy serves the API port or keepalived is up. An active
    /// haproxy alone does not count: the package starts it on install with its own empty
    /// config, and fresh balancers (every node's, in local-proxy mode) then start together
    /// instead of one at a time.
    fn running_check(&self, ctx: &Context, _host: &Host) -> Option<crate::engine::Shell> {
        if ctx.inv().spec.ha.mode == HaMode::External {
            return None;
        }
        Some(
            Script::new(
                r#"systemctl is-active --quiet keepalived.service || [ -n "$(ss -Hltn "sport = :$1")" ]"#,
            )
            .arg(ctx.inv().balancer_port().to_string())
            .into(),
        )
    }
    fn join_concerns(&self, ctx: &Context, host: &Host) -> Option<String> {
        let inv = ctx.inv();
        if !balancers(inv).iter().any(|b| b.name == host.name) {
            return None;
        }
        let joining = |pred: &dyn Fn(&Host) -> bool| -> Vec<&str> {
            inv.spec
                .hosts
                .iter()
                .filter(|h| ctx.options.joining.iter().any(|n| *n == h.name) && pred(h))
                .map(|h| h.name.as_str())
                .collect()
        };
        let apiservers = joining(&|h| h.has(Role::ControlPlane));
        let mut why = Vec::new();
        if !apiservers.is_empty() {
            why.push(format!(
                "its haproxy takes the new apiserver(s) {} as backends, after they passed their gate (reload: open connections stay)",
                apiservers.join(", ")
            ));
        }
        if inv.spec.ha.mode == HaMode::Vip {
            let lb: Vec<String> = inv.lb_hosts().iter().map(|h| h.name.to_string()).collect();
            let peers = joining(&|h| lb.iter().any(|n| *n == h.name));
            if !peers.is_empty() {
                why.push(format!(
                    "its keepalived takes the new VRRP peer(s) {} (reload: the VIP stays)",
                    peers.join(", ")
                ));
            }
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl LoadBalancer {
    /// The plan for the balancers of `inv` (another inventory than the context's: `reset`
    /// plans the hosts that stay without the reset ones) named in `host_filter` (empty: all).
    pub fn plan_for(
        &self,
        ctx: &Context,
        inv: &crate::inventory::Inventory,
        host_filter: &[String],
    ) -> anyhow::Result<PhasePlan> {
        let hosts_where = |pred: &dyn Fn(&Host) -> bool| -> Vec<&Host> {
            inv.spec
                .hosts
                .iter()
                .filter(|h| host_filter.is_empty() || host_filter.iter().any(|n| *n == h.name))
                .filter(|h| pred(h))
                .collect()
        };
        let mut plan = PhasePlan::new(self, Order::Rolling);
        let joining = |h: &Host| ctx.options.joining.iter().any(|n| *n == h.name);
        match inv.spec.ha.mode {
            HaMode::Vip => {
                let lb: Vec<String> = inv.lb_hosts().iter().map(|h| h.name.to_string()).collect();
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
                let mut hosts = hosts_where(&|h| lb.iter().any(|n| *n == h.name));
                if hosts.iter().any(|h| joining(h)) && hosts.iter().any(|h| !joining(h)) {
                    // Every keepalived talks to its peers by unicast: the running ones learn
                    // the new peers (a reload; the VIP stays) before a new one starts, else
                    // the new one, hearing no master, would take the VIP too.
                    plan.order = Order::OneAtATime;
                    hosts.sort_by_key(|h| joining(h));
                    plan.notes.push(
                        "the running balancers go first (one at a time), then the new ones: keepalived's peers are known before a new one starts".into(),
                    );
                }
                for h in hosts {
                    let vars = host_vars(inv, h);
                    plan.host(
                        h,
                        vec![
                            config(ctx, &vars, "haproxy", "haproxy/haproxy.cfg")?,
                            config(ctx, &vars, "keepalived", "keepalived/keepalived.conf")?,
                            Action::File {
                                path: crate::pki::vrrp::REMOTE_VRRP_AUTH.into(),
                                mode: crate::engine::Mode(0o600),
                                source: crate::engine::Source::Local {
                                    path: ctx.state.pki().join(crate::pki::vrrp::VRRP_AUTH),
                                },
                                sha256: None,
                                size: None,
                                restarts: vec!["keepalived.service".into()],
                            },
                            Action::reloaded_service("haproxy.service"),
                            Action::reloaded_service("keepalived.service"),
                        ],
                    );
                }
            }
            HaMode::LocalProxy => {
                for h in hosts_where(&|h| inv.runs_kubelet(h)) {
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
                for h in hosts_where(&|h| h.has(Role::ControlPlane)) {
                    plan.host(
                        h,
                        vec![Action::check(
                            &format!("external endpoint {host}:{port} reachable"),
                            // Host and port are bash's positional parameters, never
                            // part of the script bash parses.
                            Cmd::new("timeout")
                                .args(["3", "bash", "-c", "</dev/tcp/$1/$2", "probe"])
                                .arg(&host)
                                .arg(port.to_string())
                                .raw("2>&1"),
                        )],
                    );
                }
            }
        }
        Ok(plan)
    }
}
