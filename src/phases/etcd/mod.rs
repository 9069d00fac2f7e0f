//! etcd: one TLS member per `etcd` host, all started together (a member waits for a quorum),
//! then a health gate over TLS with the healthcheck-client certificate. A systemd unit, or in
//! static-pods mode a static pod run by the host's kubelet (which this phase then sets up
//! first, with containerd).
//!
//! In `join`, a new etcd host joins the running cluster one at a time, keeping the quorum at
//! every instant: `member add --learner` right before its host converges (a learner counts in
//! no quorum), started with `--initial-cluster-state=existing`, then its gate waits until it
//! caught up and promotes it to a voter (see [`crate::phases::etcd::members`]).

pub mod members;

use std::time::Duration;

use futures::future::BoxFuture;

use super::static_pods;
use crate::engine::{
    Action, Cmd, Context, Executor, HostPlan, Order, Phase, PhasePlan, Script, Shell,
};
use crate::inventory::{Host, Role};
use crate::render::etcd_component_vars;
use members::{Membership, join_member, join_order, promote_when_ready, start_for};

pub struct Etcd;

/// The template variables of the member on `h`, with the flags it starts with (those it was
/// first started with; see [`crate::phases::etcd::members`]).
pub fn vars(ctx: &Context, h: &Host) -> anyhow::Result<tera::Context> {
    let (start, _) = start_for(ctx, h)?;
    etcd_component_vars(&ctx.render, ctx.inv(), h, &start)
}

/// Whether the member on `h` joins a running cluster in this run (`join`).
fn joins_running_cluster(ctx: &Context, h: &Host) -> anyhow::Result<bool> {
    Ok(ctx.options.joining.iter().any(|n| *n == h.name)
        && h.has(Role::Etcd)
        && Membership::load(ctx)?.is_some())
}

/// `etcdctl endpoint health` against the member on this host, over TLS.
pub fn health_command(host: &Host) -> Shell {
    etcdctl(host)
        .args(["--command-timeout=5s", "endpoint", "health"])
        .into()
}

impl Phase for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn summary(&self) -> &'static str {
        "TLS etcd members, started together, health-gated"
    }
    /// Static pods: the kubelet's unit is written here first.
    fn gather<'a>(
        &'a self,
        ctx: &'a Context,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        static_pods::gather_kubelet_facts(ctx, exec, Role::Etcd)
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        // Members joining a running cluster go one at a time, in the order they are added.
        let joining = Membership::load(ctx)?
            .map(|r| join_order(ctx, &r))
            .unwrap_or_default();
        let mut plan = PhasePlan::new(
            self,
            if joining.is_empty() {
                Order::Rolling
            } else {
                Order::OneAtATime
            },
        );
        let data_dir = &inv.spec.etcd.data_dir;
        let mut hosts = ctx.hosts_where(|h| h.has(Role::Etcd));
        hosts.sort_by_key(|h| joining.iter().position(|n| *n == h.name));
        for h in hosts {
            let mut a = vec![static_pods::mode_guard(inv, &["etcd"])];
            let joins = joining.iter().any(|n| *n == h.name);
            if joins {
                plan.notes.push(format!(
                    "{}: joins the running etcd cluster: member add --learner through the members' API (one member at a time; refused when the quorum is not there), started with --initial-cluster-state=existing, promoted to a voter once it caught up",
                    h.name
                ));
            } else if !start_for(ctx, h)?.1 {
                // A member of a running cluster starts only after `member add`, which `join`
                // does (one member at a time); `init` would start it to no avail.
                a.insert(
                    0,
                    Action::check(
                        &format!(
                            "{} is a new etcd member of a running cluster: add it with `clusterctl join` (member add, then start)",
                            h.name
                        ),
                        "false",
                    ),
                );
                plan.notes.push(format!(
                    "{}: a new member of the running etcd cluster: `clusterctl join` adds it (member add) before it starts",
                    h.name
                ));
            }
            if inv.static_pods() {
                // The kubelet runs the member: containerd (with the etcd image) and the kubelet
                // first, then the manifest (the data directory made before, with etcd's mode).
                a.extend(super::runtime::host_actions(ctx, h)?);
                a.extend(super::kubelet::host_actions(ctx, h)?);
                a.push(Action::dir(data_dir, 0o700));
                a.push(static_pods::manifest(ctx, h, "etcd", &[])?);
            } else {
                let vars = vars(ctx, h)?;
                let unit = ctx.render.render("etcd/etcd.service", &vars)?;
                a.extend([
                    Action::dir(data_dir, 0o700),
                    Action::rendered(
                        "/etc/systemd/system/etcd.service",
                        0o644,
                        "etcd/etcd.service",
                        unit,
                        &["etcd.service"],
                    ),
                    Action::service("etcd.service"),
                ]);
            }
            plan.host(h, a);
        }
        if inv.static_pods() && !plan.hosts.is_empty() {
            plan.notes.push(
                "static-pods mode: containerd and the kubelet start here first; the kubelet runs etcd from /etc/kubernetes/manifests/etcd.yaml".into(),
            );
            plan.notes.extend(static_pods::image_notes(ctx, &["etcd"])?);
        }
        Ok(plan)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            // The first run records how every member started, so that adding one later
            // changes no existing member's flags.
            let path = Membership::path(ctx);
            if dry_run || path.is_file() || ctx.inv().etcd_hosts().next().is_none() {
                return Ok(vec![]);
            }
            let m = match Membership::load(ctx)? {
                Some(m) => m,
                None => Membership {
                    members: ctx
                        .hosts_where(|h| h.has(Role::Etcd))
                        .into_iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                crate::render::EtcdStart::new_cluster(ctx.inv()),
                            )
                        })
                        .collect(),
                },
            };
            m.save(ctx)?;
            Ok(vec![format!(
                "recorded how the {} etcd member(s) started in {}",
                m.members.len(),
                path.display()
            )])
        })
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if !joins_running_cluster(ctx, host)? {
                return Ok(vec![]);
            }
            join_member(ctx, host, exec.is_dry_run()).await
        })
    }
    fn running_check(&self, ctx: &Context, _host: &Host) -> Option<Shell> {
        // Static pods: a member runs where its manifest is (containerd and the kubelet may
        // run on a fresh host already; the members of a new cluster must start together).
        ctx.inv()
            .static_pods()
            .then(|| static_pods::running_check(&["etcd"]))
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let mut report = Vec::new();
            if ctx.inv().static_pods() {
                // The kubelet starts (or replaces) the pod on its own time: wait for the new
                // process before asking the member, else the old one would answer.
                report =
                    static_pods::wait_replaced(exec, host, &["etcd"], Duration::from_secs(120))
                        .await?;
            }
            // A joining member: started, caught up, promoted (its health check reads through
            // the quorum, which a learner does not serve).
            if joins_running_cluster(ctx, host)? {
                report.extend(promote_when_ready(ctx, host).await?);
            }
            wait_healthy(exec, host, Duration::from_secs(30)).await?;
            Ok(report)
        })
    }
}

/// Asks the member on `host` for its health (on the host, over TLS) once a second until it
/// answers healthy or `within` passes.
pub async fn wait_healthy(
    exec: &dyn Executor,
    host: &Host,
    within: Duration,
) -> anyhow::Result<()> {
    let cmd = health_command(host);
    let mut last = String::new();
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        let o = exec.query(host, &cmd).await?;
        if o.status == 0 {
            return Ok(());
        }
        last = format!("{}{}", o.stdout.trim(), o.stderr.trim());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!(
        "etcd member on {} not healthy after {} s: {last}",
        host.name,
        within.as_secs()
    )
}

/// Where the etcd client certificates are on the hosts (kubeadm's layout).
pub const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// Where scheduled snapshots go on the etcd hosts.
pub const SCHEDULED_DIR: &str = "/var/backups/etcd";

/// `etcdctl` against the member on `host` over TLS with the healthcheck-client identity, as
/// the health check does: the caller adds the command's arguments.
pub fn etcdctl(host: &Host) -> Cmd {
    Cmd::new("env")
        .arg("ETCDCTL_API=3")
        .arg("/usr/local/bin/etcdctl")
        .arg(format!("--endpoints=https://{}:2379", host.address))
        .arg(format!("--cacert={ETCD_PKI}/ca.crt"))
        .arg(format!("--cert={ETCD_PKI}/healthcheck-client.crt"))
        .arg(format!("--key={ETCD_PKI}/healthcheck-client.key"))
}

/// The start of a script that sets `$u` to the offline snapshot tool: `etcdutl` (etcd ≥ 3.5)
/// when the host has it, else `etcdctl` (3.4, and 3.5 where it still has
/// `snapshot status|restore`). A macro so that scripts can `concat!` it into their fixed text.
macro_rules! snapshot_tool {
    () => {
        "if command -v etcdutl >/dev/null 2>&1; then u=etcdutl; \
         elif [ -x /usr/local/bin/etcdutl ]; then u=/usr/local/bin/etcdutl; \
         else u='env ETCDCTL_API=3 /usr/local/bin/etcdctl'; fi; "
    };
}
pub(crate) use snapshot_tool;

/// `snapshot status FILE -w json` with the offline tool.
pub fn snapshot_status_command(file: &str) -> Shell {
    Script::new(concat!(
        snapshot_tool!(),
        r#"$u snapshot status "$1" -w json"#
    ))
    .arg(file)
    .into()
}

/// A roll of etcd members changes the leader once: the runner walks the member leading now
/// last ([`Leadership::leader_last`]) and, right before a change restarts a member that leads,
/// the leadership moves to a member this run already restarted (the [`BeforeRestart`] guard).
/// Keyed on what a host plan restarts (`etcd.service`, the etcd static pod), not on the
/// phase, so every playbook that restarts members gets it (`init`, `renew-certs`, upgrade).
/// Anything it cannot do (no member answers, the transfer fails) is a warning: the restart
/// then costs an election, as it would without it.
pub struct Leadership<'a> {
    ctx: &'a Context,
    /// Hosts whose member this run restarted (or is restarting), in order.
    restarted: std::sync::Mutex<Vec<String>>,
}

/// The etcd unit, or the etcd static pod's manifest.
fn restarts_member(what: &str) -> bool {
    what == "etcd.service" || what == format!("{}/etcd.yaml", crate::engine::MANIFESTS)
}

impl<'a> Leadership<'a> {
    pub fn new(ctx: &'a Context) -> Leadership<'a> {
        Leadership {
            ctx,
            restarted: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether applying `hp` can restart an etcd member (a running one is restarted when a
    /// file it loads or its unit changes).
    pub fn concerns(hp: &HostPlan) -> bool {
        hp.actions.iter().any(|a| match a {
            Action::Service { unit, .. } => restarts_member(unit),
            Action::File { path, restarts, .. } => {
                restarts_member(path) || restarts.iter().any(|u| restarts_member(u))
            }
            _ => false,
        })
    }

    /// The name of the host whose member leads now.
    async fn leading_host(&self) -> Option<String> {
        let etcd = members::Etcd::new(self.ctx).ok()?;
        let members = etcd.members().await.ok()?;
        let (leader, _) = etcd.leader_and_version(&members).await.ok()?;
        let m = members.iter().find(|m| m.id == leader)?;
        self.ctx
            .inv()
            .etcd_hosts()
            .find(|h| m.peer_urls.contains(&crate::render::peer_url(h)))
            .map(|h| h.name.to_string())
    }

    async fn hand_over(&self, host: &Host) -> anyhow::Result<Vec<String>> {
        let etcd = members::Etcd::new(self.ctx)?;
        let peer = crate::render::peer_url(host);
        let members = etcd.members().await?;
        let Some(me) = members.iter().find(|m| m.peer_urls.contains(&peer)) else {
            return Ok(vec![]);
        };
        let done = self.restarted.lock().unwrap().clone();
        members::move_leader_away_preferring(&etcd, me, &done).await
    }
}

impl crate::engine::runner::RollGuard for Leadership<'_> {
    /// The host whose member leads etcd now goes last, when the plans can restart members;
    /// a cluster that does not answer leaves the order as it is.
    fn last<'b>(&'b self, plans: Vec<&'b HostPlan>) -> BoxFuture<'b, Option<String>> {
        Box::pin(async move {
            if plans.len() < 2 || !plans.iter().any(|hp| Self::concerns(hp)) {
                return None;
            }
            self.leading_host().await
        })
    }
}

impl crate::engine::executor::BeforeRestart for Leadership<'_> {
    fn before<'b>(&'b self, host: &'b Host, running: &'b [String]) -> BoxFuture<'b, Vec<String>> {
        Box::pin(async move {
            if !running.iter().any(|r| restarts_member(r)) {
                return Vec::new();
            }
            let lines = match self.hand_over(host).await {
                Ok(lines) => lines,
                Err(e) => vec![format!(
                    "etcd: could not move the leadership away from {} before its restart (an election follows instead): {e:#}",
                    host.name
                )],
            };
            self.restarted.lock().unwrap().push(host.name.to_string());
            lines
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(actions: Vec<Action>) -> HostPlan {
        HostPlan {
            host: "h1".into(),
            address: "10.0.0.1".into(),
            actions,
        }
    }

    #[test]
    fn a_plan_concerns_the_leadership_when_it_can_restart_a_member() {
        let cert = |restarts: &[&str]| {
            Action::rendered(
                "/etc/kubernetes/pki/etcd/server.crt",
                0o644,
                "x",
                "x".into(),
                restarts,
            )
        };
        assert!(Leadership::concerns(&plan(vec![cert(&["etcd.service"])])));
        assert!(Leadership::concerns(&plan(vec![Action::service(
            "etcd.service"
        )])));
        // Static pods: the manifest the kubelet replaces the member from.
        assert!(Leadership::concerns(&plan(vec![Action::rendered(
            "/etc/kubernetes/manifests/etcd.yaml",
            0o600,
            "x",
            "x".into(),
            &[]
        )])));
        assert!(!Leadership::concerns(&plan(vec![
            cert(&["kube-apiserver.service"]),
            Action::service("kube-apiserver.service"),
            Action::rendered(
                "/etc/kubernetes/manifests/kube-apiserver.yaml",
                0o600,
                "x",
                "x".into(),
                &[]
            ),
        ])));
        assert!(restarts_member("/etc/kubernetes/manifests/etcd.yaml"));
        assert!(!restarts_member("/etc/kubernetes/manifests/etcd.yaml.bak"));
    }
}
