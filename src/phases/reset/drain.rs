//! reset-drain (cluster step): when the rest of the cluster stays, the etcd removal is checked
//! first (the members left must keep a quorum; nothing changes otherwise), then each reset
//! node is cordoned, drained as `upgrade` drains (the Eviction API, so PodDisruptionBudgets
//! hold; DaemonSet and mirror pods stay; a pod no controller would recreate stops it) and
//! deleted. A failed drain uncordons the node and stops the reset before any host changed.
//! A node already gone (a re-run) is skipped.

use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;

use crate::engine::{Context, Order, Phase, PhasePlan};

pub struct ResetDrain;

/// How long draining one node may take unless `--drain-timeout` says otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

impl Phase for ResetDrain {
    fn name(&self) -> &'static str {
        "reset-drain"
    }
    fn summary(&self) -> &'static str {
        "when the cluster stays: etcd quorum checked, then each node cordoned, drained (Eviction API) and deleted"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        super::check_scope(ctx)?;
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let (selected, whole) = super::scope(ctx);
        if whole {
            plan.notes
                .push("every host is reset: no node is drained, no member removed".into());
            return Ok(plan);
        }
        let inv = ctx.inv();
        let removing: Vec<&str> = selected
            .iter()
            .filter(|h| h.has(crate::inventory::Role::Etcd))
            .map(|h| h.name.as_str())
            .collect();
        if !removing.is_empty() {
            plan.local.push(format!(
                "check: removing etcd member(s) {} leaves a quorum of healthy members",
                removing.join(", ")
            ));
        }
        let timeout = drain_timeout(ctx);
        for h in selected.iter().filter(|h| inv.runs_kubelet(h)) {
            plan.local.push(format!(
                "node {}: cordon, drain (timeout {} s), delete{}",
                h.name,
                timeout.as_secs(),
                if inv.kubelet_bootstraps(h) {
                    "; delete its bootstrap token(s)"
                } else {
                    ""
                }
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
                return Ok(vec![]);
            }
            let mut lines = crate::phases::etcd::members::check_removal(ctx, &selected)
                .await?
                .describe();
            let inv = ctx.inv();
            let nodes: Vec<&str> = selected
                .iter()
                .filter(|h| inv.runs_kubelet(h))
                .map(|h| h.name.as_str())
                .collect();
            if nodes.is_empty() {
                return Ok(lines);
            }
            let api = ctx.kube_admin()?;
            let minor = inv.kube_version().minor;
            for node in nodes {
                let t = Instant::now();
                let l = if dry_run {
                    match api.get_opt(&format!("/api/v1/nodes/{node}")).await? {
                        Some(_) => format!("{node}: would be cordoned, drained and deleted"),
                        None => format!("{node}: no such node"),
                    }
                } else {
                    drain(&api, node, drain_timeout(ctx), minor)
                        .await
                        .map_err(|e| crate::diag::UserError::failed(format!("{e:#}")))?
                };
                lines.push(format!("{l} [{:.1}s]", t.elapsed().as_secs_f64()));
                // A TLS-bootstrap worker's token (made by its join, labelled with the node)
                // must not outlive it. Asked for every node: one that joined so before its
                // cluster's kubelet.certificates changed has one too.
                let tokens = api.bootstrap_tokens(node).await?;
                if dry_run {
                    if !tokens.is_empty() {
                        lines.push(format!("{node}: would delete {}", tokens.join(", ")));
                    }
                } else if !api.delete_bootstrap_tokens(node).await?.is_empty() {
                    lines.push(format!("{node}: deleted {}", tokens.join(", ")));
                }
            }
            Ok(lines)
        })
    }
}

fn drain_timeout(ctx: &Context) -> Duration {
    ctx.options.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT)
}

/// Cordons and drains the node as `upgrade` does, then deletes it; a failed drain uncordons
/// the node.
async fn drain(
    api: &crate::kube::Client,
    node: &str,
    timeout: Duration,
    minor: u32,
) -> anyhow::Result<String> {
    let path = format!("/api/v1/nodes/{node}");
    if api.get_opt(&path).await?.is_none() {
        return Ok(format!("{node}: no such node"));
    }
    api.merge_patch(&path, &json!({"spec": {"unschedulable": true}}))
        .await?;
    let d = match crate::phases::upgrade::drain::drain(api, node, timeout, minor).await {
        Ok(d) => d,
        Err(e) => {
            let _ = api
                .merge_patch(&path, &json!({"spec": {"unschedulable": null}}))
                .await;
            return Err(e.context(format!(
                "draining {node} (uncordoned again; nothing on the host was changed)"
            )));
        }
    };
    api.delete(&path).await?;
    Ok(format!(
        "{node}: drained ({} pod(s) evicted) and deleted",
        d.evicted.len()
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn daemonset_and_mirror_pods_are_not_evicted() {
        use crate::phases::upgrade::drain::{PodFate, fate};
        let evictable = |p: &serde_json::Value| fate(p) == PodFate::Evict;
        let ds =
            json!({"metadata": {"ownerReferences": [{"kind": "DaemonSet", "controller": true}]}});
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}});
        let rs =
            json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": true}]}});
        assert!(!evictable(&ds));
        assert!(!evictable(&mirror));
        assert!(evictable(&rs));
    }
}
