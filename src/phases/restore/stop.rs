//! restore-stop: nothing may write while the members are rebuilt: on every host the
//! apiserver, controller-manager and scheduler stop, then the etcd member (units, or in
//! static-pods mode their manifests moved to the hold directory). Undo (a failure here or
//! in restore-etcd): etcd and the control plane start again.

use crate::engine::{Action, Context, Order, Phase, PhasePlan};
use crate::phases::components::{start_command, stop_command, stopped_check};
use crate::phases::control_plane::COMPONENTS;

pub struct RestoreStop;

impl Phase for RestoreStop {
    fn name(&self) -> &'static str {
        "restore-stop"
    }
    fn summary(&self) -> &'static str {
        "every apiserver, controller-manager and scheduler stop, then every etcd member"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let sp = inv.static_pods();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in hosts(ctx) {
            let mut a = Vec::new();
            if h.has(crate::inventory::Role::ControlPlane) {
                a.push(Action::run(
                    &format!("stop {}", COMPONENTS.join(", ")),
                    stop_command(sp, &COMPONENTS, super::HOLD),
                    Some(stopped_check(sp, &COMPONENTS)),
                ));
            }
            if h.has(crate::inventory::Role::Etcd) {
                a.push(Action::run(
                    "stop etcd",
                    stop_command(sp, &["etcd"], super::HOLD),
                    Some(stopped_check(sp, &["etcd"])),
                ));
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
    fn undo(&self, ctx: &Context) -> anyhow::Result<Option<PhasePlan>> {
        let sp = ctx.inv().static_pods();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        plan.phase = format!("{}-undo", self.name());
        plan.summary = "etcd and the control plane started again".into();
        for h in hosts(ctx) {
            let mut a = Vec::new();
            if h.has(crate::inventory::Role::Etcd) {
                a.push(Action::run(
                    "start etcd",
                    start_command(sp, &["etcd"], super::HOLD),
                    None,
                ));
            }
            if h.has(crate::inventory::Role::ControlPlane) {
                a.push(Action::run(
                    &format!("start {}", COMPONENTS.join(", ")),
                    start_command(sp, &COMPONENTS, super::HOLD),
                    None,
                ));
            }
            plan.host(h, a);
        }
        Ok(Some(plan))
    }
}

/// The etcd and control-plane hosts, in inventory order.
pub fn hosts(ctx: &Context) -> Vec<&crate::inventory::Host> {
    use crate::inventory::Role;
    ctx.inv()
        .spec
        .hosts
        .iter()
        .filter(|h| h.has(Role::Etcd) || h.has(Role::ControlPlane))
        .collect()
}
