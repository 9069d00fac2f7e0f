//! restore-restart: what cached the old cluster state comes back one host at a time, as
//! kubeadm's restore guidance asks: on control-plane hosts the controller-manager and
//! scheduler start (they were stopped for the restore); on every node the kubelet restarts.
//! Gates: both running, the node Ready.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::engine::{Action, Cmd, Context, Executor, Order, Phase, PhasePlan, Shell};
use crate::inventory::{Host, Role};
use crate::phases::components::start_command;

pub struct RestoreRestart;

const SCHEDULING: [&str; 2] = ["kube-controller-manager", "kube-scheduler"];

impl Phase for RestoreRestart {
    fn name(&self) -> &'static str {
        "restore-restart"
    }
    fn summary(&self) -> &'static str {
        "one host at a time: controller-manager and scheduler start, the kubelet restarts; gates: running, node Ready"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::OneAtATime);
        for h in &inv.spec.hosts {
            let mut a = Vec::new();
            if h.has(Role::ControlPlane) {
                a.push(Action::run(
                    &format!("start {}", SCHEDULING.join(", ")),
                    start_command(inv.static_pods(), &SCHEDULING, super::HOLD),
                    None,
                ));
            }
            if inv.runs_kubelet(h) {
                a.push(Action::run(
                    "restart the kubelet (it cached the old cluster state)",
                    "systemctl restart kubelet.service",
                    None,
                ));
            }
            if !a.is_empty() {
                plan.host(h, a);
            }
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let inv = ctx.inv();
            if host.has(Role::ControlPlane) {
                let running = Shell::all(SCHEDULING.iter().map(|c| {
                    if inv.static_pods() {
                        Cmd::new("pgrep")
                            .arg("-f")
                            .arg(format!("^{c}( |$)"))
                            .raw(">/dev/null")
                            .into()
                    } else {
                        crate::ssh::shell::systemctl(&["is-active", "-q"], [format!("{c}.service")])
                            .into()
                    }
                }));
                let end = std::time::Instant::now() + Duration::from_secs(120);
                loop {
                    if exec.query(host, &running).await?.status == 0 {
                        break;
                    }
                    anyhow::ensure!(
                        std::time::Instant::now() < end,
                        "{} not running on {} after 120 s",
                        SCHEDULING.join(" and "),
                        host.name
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if inv.runs_kubelet(host) {
                return crate::phases::kubelet::Kubelet
                    .verify(ctx, host, exec)
                    .await;
            }
            Ok(vec![])
        })
    }
}
