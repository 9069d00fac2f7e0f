//! verify: the end-of-run report read from the live cluster (etcd members and leader,
//! apiservers' readiness, leader leases, what each endpoint serves).

use super::{Action, Context, Order, Phase, PhasePlan};
use crate::inventory::Role;

pub struct Verify;

impl Phase for Verify {
    fn name(&self) -> &'static str {
        "verify"
    }
    fn summary(&self) -> &'static str {
        "end-of-run report from the live cluster"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        if let Some(h) = ctx.hosts_where(|h| h.has(Role::Etcd)).first() {
            let cmd = super::etcd::health_command(h)
                .replace("endpoint health", "endpoint status --cluster -w table");
            plan.host(h, vec![Action::check("etcd members and leader", &cmd)]);
        }
        Ok(plan)
    }
}
