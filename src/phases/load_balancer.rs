//! load-balancer: how everything reaches the apiservers.
//! - `vip`: keepalived (VRRP) + haproxy on the `lb` hosts, or on the control-plane hosts;
//! - `local-proxy`: haproxy on every node on 127.0.0.1 in front of all apiservers;
//! - `external`: the user's balancer; only checked for reachability.

use super::{Action, Context, Executor, Order, Phase, PhasePlan};
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
                .filter(|h| host_filter.is_empty() || host_filter.contains(&h.name))
                .filter(|h| pred(h))
                .collect()
        };
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
                for h in hosts_where(&|h| lb.contains(&h.name)) {
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
                            &format!("timeout 3 bash -c '</dev/tcp/{host}/{port}' 2>&1"),
                        )],
                    );
                }
            }
        }
        Ok(plan)
    }
}

/// haproxy's runtime API on every balancer (a Unix socket, root only; see haproxy.cfg).
pub const ADMIN_SOCKET: &str = "/run/haproxy-admin.sock";

/// The hosts whose haproxy balances the apiservers: the VIP's balancers, or every node in
/// local-proxy mode; none with an external balancer.
pub fn balancers(inv: &crate::inventory::Inventory) -> Vec<&Host> {
    match inv.spec.ha.mode {
        HaMode::Vip => inv.lb_hosts(),
        HaMode::LocalProxy => inv
            .spec
            .hosts
            .iter()
            .filter(|h| inv.runs_kubelet(h))
            .collect(),
        HaMode::External => Vec::new(),
    }
}

/// A shell command that sends `command` to the local haproxy's runtime API (perl is on every
/// Debian/Ubuntu host: perl-base is essential; no socat needed). Exits 0 with a note when the
/// host's haproxy has no socket yet (not installed, or its config predates the socket); exits
/// 1 with haproxy's answer when haproxy refuses the command (its answer is empty on success).
pub fn runtime_api_command(command: &str) -> String {
    let q = super::executor::q;
    format!(
        "if [ ! -S {sock} ]; then echo 'no haproxy runtime API socket'; exit 0; fi; \
         perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"$ARGV[0]: $!\\n\"; \
         print $s \"$ARGV[1]\\n\"; $r = join(\"\", <$s>); $r =~ s/\\s+$//; if ($r ne \"\") {{ print \"$r\\n\"; exit 1 }}' {sock} {cmd}",
        sock = q(ADMIN_SOCKET),
        cmd = q(command),
    )
}

/// Runtime API commands (`{server}`: the backend's server) that take an apiserver out of the
/// rotation and put it back (see [`Rotation::take_out`]).
pub const TAKE_OUT: &str = "disable health {server}; set server {server} state drain";
pub const PUT_BACK: &str = "set server {server} state ready; enable health {server}";

/// Takes an apiserver out of every balancer's rotation before a change restarts it, and puts
/// it back after its health gate: no new request meets a stopping or starting apiserver (its
/// own `/readyz`-based health check alone would leave ~2 s where new connections still reach
/// it while it fails `/readyz` on purpose). Used by the runner for every phase.
pub struct Rotation<'a> {
    ctx: &'a Context,
    exec: &'a dyn Executor,
    out: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<'a> Rotation<'a> {
    pub fn new(ctx: &'a Context, exec: &'a dyn Executor) -> Rotation<'a> {
        Rotation {
            ctx,
            exec,
            out: Default::default(),
        }
    }

    /// Sets the state of `host`'s backend on every balancer; returns the balancers that did
    /// not take it (with why), which the caller reports as warnings: their own health checks
    /// still take a stopped apiserver out within ~2 s.
    async fn set(&self, host: &Host, commands: &str) -> Vec<String> {
        let cmd = runtime_api_command(
            &commands.replace("{server}", &format!("kube-apiserver/{}", host.name)),
        );
        let all = futures::future::join_all(balancers(self.ctx.inv()).into_iter().map(|b| {
            let cmd = cmd.clone();
            async move {
                match self.exec.change(b, &cmd).await {
                    Ok(o) if o.status == 0 => None,
                    Ok(o) => Some(format!("{}: {}", b.name, o.stdout.trim())),
                    Err(e) => Some(format!("{}: {e:#}", b.name)),
                }
            }
        }))
        .await;
        all.into_iter().flatten().collect()
    }

    /// Whether `units` (what a change on a host is about to restart or replace) include its
    /// apiserver: its unit, or its static pod's manifest.
    pub fn concerns(units: &[String]) -> bool {
        units
            .iter()
            .any(|u| u == "kube-apiserver.service" || u.ends_with("/manifests/kube-apiserver.yaml"))
    }

    /// Before a change that restarts `host`'s apiserver: out of rotation (only when other
    /// apiservers can take the requests). `drain` with its health check paused, not `maint`:
    /// entering maintenance counts as "marked down", and `on-marked-down shutdown-sessions`
    /// would cut every open connection at once, requests in flight included (a read probe saw
    /// "unexpected EOF" at that instant, ~1 in 700). Drained, it gets no new connection, and the
    /// ones it has end as the apiserver stops gracefully; unchecked, its failing `/readyz`
    /// during --shutdown-delay-duration does not mark it down either.
    pub async fn take_out(&self, host: &Host) -> Vec<String> {
        if self.ctx.inv().control_plane_hosts().count() < 2 {
            return Vec::new();
        }
        self.out.lock().unwrap().insert(host.name.clone());
        self.set(host, TAKE_OUT)
            .await
            .into_iter()
            .map(|w| format!("taking {} out of the balancer: {w}", host.name))
            .collect()
    }

    /// After the host's gate (passed or not): back in rotation, where haproxy's health check
    /// decides again. A no-op for a host that was not taken out.
    pub async fn put_back(&self, host: &Host) -> Vec<String> {
        if !self.out.lock().unwrap().remove(&host.name) {
            return Vec::new();
        }
        self.set(host, PUT_BACK)
            .await
            .into_iter()
            .map(|w| format!("putting {} back into the balancer: {w}", host.name))
            .collect()
    }
}

impl super::executor::BeforeRestart for Rotation<'_> {
    fn before<'b>(
        &'b self,
        host: &'b Host,
        running: &'b [String],
    ) -> futures::future::BoxFuture<'b, Vec<String>> {
        Box::pin(async move {
            if Self::concerns(running) {
                self.take_out(host).await
            } else {
                Vec::new()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_changes_are_recognised() {
        assert!(Rotation::concerns(&["kube-apiserver.service".into()]));
        assert!(Rotation::concerns(&[
            "/etc/kubernetes/manifests/kube-apiserver.yaml".into()
        ]));
        assert!(!Rotation::concerns(&[
            "etcd.service".into(),
            "kube-scheduler.service".into()
        ]));
    }

    #[test]
    fn runtime_api_command_quotes_its_argument() {
        let c = runtime_api_command("set server kube-apiserver/h1 state drain");
        assert!(
            c.contains("'set server kube-apiserver/h1 state drain'"),
            "{c}"
        );
        assert!(c.contains(ADMIN_SOCKET));
    }
}
