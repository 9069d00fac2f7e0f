//! reset-control-plane: on each reset host, first out of the load balancing: haproxy stops
//! (keepalived did in reset-vip, and the VIP moved to a balancer that stays, which has since
//! dropped this host's backend); then the apiserver, controller-manager and scheduler stop (units, or in
//! static-pods mode their manifests moved to `/etc/kubernetes/manifests.reset/`, which the
//! host step backs up with /etc/kubernetes). etcd keeps running here: its member is removed
//! next, while it still counts for the quorum.

use crate::engine::rotation::balancers;
use crate::engine::{Action, Context, Order, Phase, PhasePlan};
use crate::inventory::{HaMode, Role};
use crate::phases::components::{stop_command, stopped_check};
use crate::phases::control_plane::COMPONENTS;

pub struct ResetControlPlane;

/// Where static-pods mode keeps the manifests of stopped components during a reset.
pub const HOLD: &str = "/etc/kubernetes/manifests.reset";

impl Phase for ResetControlPlane {
    fn name(&self) -> &'static str {
        "reset-control-plane"
    }
    fn summary(&self) -> &'static str {
        "the reset hosts leave the load balancing (haproxy; keepalived if still running), then their apiserver, controller-manager and scheduler stop"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let lbs: Vec<String> = balancers(inv).iter().map(|h| h.name.to_string()).collect();
        let (selected, _) = super::scope(ctx);
        for h in selected {
            let mut actions = Vec::new();
            if lbs.iter().any(|n| *n == h.name) {
                if inv.spec.ha.mode == HaMode::Vip {
                    // Stopped by reset-vip already; kept here (skipped then) so that a playbook
                    // copied before reset-vip existed still takes the host out of the VRRP.
                    actions.push(super::stop_unit(
                        "keepalived.service",
                        "a VIP held here moves to a balancer that stays",
                    ));
                }
                actions.push(super::stop_unit(
                    "haproxy.service",
                    "no more balancing here",
                ));
            }
            if h.has(Role::ControlPlane) {
                let sp = inv.static_pods();
                actions.push(Action::run(
                    &format!(
                        "stop {}{}",
                        COMPONENTS.join(", "),
                        if sp {
                            format!(" (manifests moved to {HOLD})")
                        } else {
                            String::new()
                        }
                    ),
                    stop_command(sp, &COMPONENTS, HOLD),
                    Some(stopped_check(sp, &COMPONENTS)),
                ));
            }
            if !actions.is_empty() {
                plan.host(h, actions);
            }
        }
        Ok(plan)
    }
}
