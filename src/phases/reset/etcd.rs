//! reset-etcd (cluster step): the etcd members of the reset hosts leave the cluster while
//! they still run. The removal is checked again against the member list of now (the members
//! that stay keep a quorum of healthy ones); when a member to remove leads, leadership moves
//! to one that stays first; then `member remove` one member at a time, each against the
//! members left, and the membership record (`clusters/<name>/etcd-members.json`) follows. A
//! member already removed (a re-run) is not removed again. A reset of every host only forgets
//! the record. The logic is `phases::etcd::members`' (shared with `join`).

use futures::future::BoxFuture;

use crate::engine::{Context, Order, Phase, PhasePlan};
use crate::inventory::Role;
use crate::phases::etcd::members;

pub struct ResetEtcd;

impl Phase for ResetEtcd {
    fn name(&self) -> &'static str {
        "reset-etcd"
    }
    fn summary(&self) -> &'static str {
        "when the cluster stays: the reset hosts' etcd members removed one at a time (quorum checked; a leading member hands over first)"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let (selected, whole) = super::scope(ctx);
        let removing: Vec<&str> = selected
            .iter()
            .filter(|h| h.has(Role::Etcd))
            .map(|h| h.name.as_str())
            .collect();
        if removing.is_empty() {
            return Ok(plan);
        }
        if whole {
            plan.local.push(format!(
                "forget the etcd membership record ({})",
                members::MEMBERS_FILE
            ));
        } else {
            plan.local.push(format!(
                "etcd member remove {} (one at a time; leadership moved off first when one leads)",
                removing.join(", ")
            ));
        }
        Ok(plan)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let (selected, whole) = super::scope(ctx);
            if whole {
                let p = members::Membership::path(ctx);
                if !p.is_file() {
                    return Ok(vec![]);
                }
                if !dry_run {
                    std::fs::remove_file(&p)?;
                }
                return Ok(vec![format!(
                    "{} {}",
                    if dry_run { "would forget" } else { "forgot" },
                    p.display()
                )]);
            }
            let removal = members::check_removal(ctx, &selected).await?;
            if dry_run {
                return Ok(removal
                    .removing
                    .iter()
                    .map(|m| format!("etcd: would remove member {} (ID {})", m.name, m.id))
                    .collect());
            }
            // Each removal moves the leadership off a leading member first.
            members::remove_members(ctx, &removal).await
        })
    }
}
