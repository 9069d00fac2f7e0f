//! reset-balancers: when the cluster stays, the balancers that stay drop the reset hosts: the
//! load-balancer phase's plan for the inventory without them (haproxy loses their apiserver
//! backends, keepalived its VRRP peers), taken by a reload on each balancer, one at a time:
//! haproxy's master starts new workers and lets the old ones finish their connections, so no
//! request is cut and the VIP stays where it is. Balancers whose config does not change are
//! left alone (a worker's reset changes nothing here).

use crate::engine::{Context, Phase, PhasePlan};
use crate::inventory::{HaMode, Role};
use crate::phases::load_balancer::LoadBalancer;

pub struct ResetBalancers;

impl Phase for ResetBalancers {
    fn name(&self) -> &'static str {
        "reset-balancers"
    }
    fn summary(&self) -> &'static str {
        "when the cluster stays: the other balancers drop the reset hosts' backends (reload, no restart)"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let (selected, whole) = super::scope(ctx);
        let inv = ctx.inv();
        // Their configs name the apiservers (backends) and, with a VIP, the other balancers
        // (VRRP peers): nothing changes for them when neither is reset.
        let lbs: Vec<&str> = inv.lb_hosts().iter().map(|h| h.name.as_str()).collect();
        let concerns = selected.iter().any(|h| {
            h.has(Role::ControlPlane)
                || (inv.spec.ha.mode == HaMode::Vip && lbs.contains(&h.name.as_str()))
        });
        let stays = super::staying(ctx);
        let mut plan = if whole || !concerns || stays.spec.ha.mode == HaMode::External {
            PhasePlan::new(self, crate::engine::Order::Parallel)
        } else {
            LoadBalancer.plan_for(ctx, &stays, &[])?
        };
        plan.phase = self.name().into();
        plan.summary = self.summary().into();
        Ok(plan)
    }
}
