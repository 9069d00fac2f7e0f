//! control-plane: kube-apiserver, kube-controller-manager and kube-scheduler as systemd units
//! running the bundle's binaries (the static-pod layout comes with the nodes work).

use super::{Action, Context, Order, Phase, PhasePlan, Source};
use crate::inventory::Role;
use crate::render::host_vars;

pub struct ControlPlane;

impl Phase for ControlPlane {
    fn name(&self) -> &'static str {
        "control-plane"
    }
    fn summary(&self) -> &'static str {
        "kube-apiserver, kube-controller-manager, kube-scheduler"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let api = ["kube-apiserver.service"];
        for h in ctx.hosts_where(|h| h.has(Role::ControlPlane)) {
            let vars = host_vars(inv, h);
            let mut a = vec![Action::dir("/var/log/kubernetes", 0o750)];
            if inv.spec.control_plane.audit_log {
                let policy = ctx
                    .render
                    .render("kube-apiserver/audit-policy.yaml", &vars)?;
                a.push(Action::rendered(
                    "/etc/kubernetes/audit-policy.yaml",
                    0o600,
                    "kube-apiserver/audit-policy.yaml",
                    policy,
                    &api,
                ));
            }
            if inv.spec.control_plane.encrypt_secrets {
                a.push(Action::File {
                    path: "/etc/kubernetes/encryption-config.yaml".into(),
                    mode: super::Mode(0o600),
                    source: Source::Local {
                        path: ctx.state.pki().join("encryption-config.yaml"),
                    },
                    sha256: None,
                    size: None,
                    restarts: vec![api[0].into()],
                });
            }
            for (tpl, unit) in [
                (
                    "kube-apiserver/kube-apiserver.service",
                    "kube-apiserver.service",
                ),
                (
                    "kube-controller-manager/kube-controller-manager.service",
                    "kube-controller-manager.service",
                ),
                (
                    "kube-scheduler/kube-scheduler.service",
                    "kube-scheduler.service",
                ),
            ] {
                let text = ctx.render.render(tpl, &vars)?;
                a.push(Action::rendered(
                    format!("/etc/systemd/system/{unit}"),
                    0o644,
                    tpl,
                    text,
                    &[unit],
                ));
            }
            for unit in [
                "kube-apiserver.service",
                "kube-controller-manager.service",
                "kube-scheduler.service",
            ] {
                a.push(Action::service(unit));
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
}
