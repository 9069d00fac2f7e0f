//! Cordon, drain and uncordon through the API, as `kubectl drain` does: pods leave through the
//! Eviction API (so PodDisruptionBudgets are respected), DaemonSet pods and mirror (static)
//! pods stay, finished pods are ignored, and a pod no controller would recreate stops the
//! drain (it would be lost).
//!
//! What clusterctl did to a node is recorded on its host, in the pending record the engine
//! keeps there (`executor::Pending`): `cordon` before the cordon, `drained` once the drain
//! finished. A run killed anywhere in between leaves them, so its re-run uncordons the node
//! and never drains it twice; a node the user had cordoned stays cordoned.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::engine::Executor;
use crate::engine::executor::{
    PENDING_QUERY, Pending, parse_pending, pending_clear_command, pending_write_command,
};
use crate::inventory::Host;
use crate::kube::Client;

fn node_path(n: &str) -> String {
    format!("/api/v1/nodes/{n}")
}

/// The node entries of `host`'s pending record.
async fn node_record(exec: &dyn Executor, host: &Host) -> anyhow::Result<Vec<Pending>> {
    // (The listing's status is its last test's: an empty record is no failure.)
    let o = exec.query(host, &PENDING_QUERY.into()).await?;
    if o.status != 0 {
        anyhow::bail!(
            "{}: reading the pending record: {}",
            host.name,
            o.stderr.trim()
        );
    }
    Ok(parse_pending(&o.stdout)
        .into_iter()
        .filter(|p| matches!(p, Pending::Cordon | Pending::Drained))
        .collect())
}

async fn change(
    exec: &dyn Executor,
    host: &Host,
    cmd: &crate::engine::Shell,
) -> anyhow::Result<()> {
    let o = exec.change(host, cmd).await?;
    if o.status != 0 {
        anyhow::bail!(
            "{}: `{cmd}` exited {}: {}",
            host.name,
            o.status,
            o.stderr.trim()
        );
    }
    Ok(())
}

/// Cordons the node of `host` and drains it within `timeout` (`minor`: the cluster's
/// Kubernetes minor), each recorded on the host first (see the module). A drain an earlier,
/// interrupted run finished is not repeated; a node the user had cordoned is drained but not
/// made clusterctl's to uncordon. Returns a line for the report.
pub async fn cordon_and_drain(
    api: &Client,
    exec: &dyn Executor,
    host: &Host,
    timeout: Duration,
    minor: u32,
) -> anyhow::Result<String> {
    let node = host.name.as_str();
    let record = node_record(exec, host).await?;
    if record.contains(&Pending::Drained) {
        return Ok(format!(
            "node {node}: drained by an interrupted run (still cordoned): not drained again"
        ));
    }
    let ours = if record.contains(&Pending::Cordon) {
        true
    } else {
        let n = api.get(&node_path(node)).await?;
        let users = n.pointer("/spec/unschedulable") == Some(&Value::Bool(true));
        if !users {
            change(exec, host, &pending_write_command(&[Pending::Cordon])).await?;
        }
        !users
    };
    api.merge_patch(&node_path(node), &json!({"spec": {"unschedulable": true}}))
        .await?;
    let d = drain(api, node, timeout, minor).await?;
    change(exec, host, &pending_write_command(&[Pending::Drained])).await?;
    let mut evicted = d.evicted.clone();
    evicted.sort();
    Ok(format!(
        "node {node}: cordoned{}, drained in {:.1}s: {} pod(s) evicted{}, {} skipped{}",
        if ours {
            ""
        } else {
            " (it already was: stays cordoned)"
        },
        d.seconds,
        d.evicted.len(),
        if evicted.is_empty() {
            String::new()
        } else {
            format!(" ({})", evicted.join(", "))
        },
        d.skipped.len(),
        if d.pdb_waits > 0 {
            format!(
                ", {} eviction(s) held by a PodDisruptionBudget",
                d.pdb_waits
            )
        } else {
            String::new()
        }
    ))
}

/// The upgrade phases' drain of `host` (nodes and rollback): the run's `--drain-timeout` or
/// [`super::nodes::DEFAULT_DRAIN_TIMEOUT`], recorded on the host first; under `--dry-run`
/// only the line saying it would happen.
pub async fn drain_for_upgrade(
    ctx: &crate::engine::Context,
    exec: &dyn Executor,
    host: &Host,
) -> anyhow::Result<String> {
    if exec.is_dry_run() {
        return Ok(format!("node {}: would be cordoned and drained", host.name));
    }
    cordon_and_drain(
        &ctx.kube_admin()?,
        exec,
        host,
        ctx.options
            .drain_timeout
            .unwrap_or(super::nodes::DEFAULT_DRAIN_TIMEOUT),
        ctx.inv().kube_version().minor,
    )
    .await
}

/// Uncordons the node of `host` if clusterctl cordoned it (in this run or one that was
/// killed), then clears the node entries of the host's record. Returns a line when it
/// uncordoned.
pub async fn uncordon(
    api: &Client,
    exec: &dyn Executor,
    host: &Host,
) -> anyhow::Result<Option<String>> {
    let record = node_record(exec, host).await?;
    if record.is_empty() {
        return Ok(None);
    }
    let ours = record.contains(&Pending::Cordon);
    if ours {
        api.merge_patch(
            &node_path(&host.name),
            &json!({"spec": {"unschedulable": null}}),
        )
        .await?;
    }
    change(exec, host, &pending_clear_command(&record)).await?;
    Ok(ours.then(|| format!("node {}: uncordoned", host.name)))
}

/// What to do with one pod of a node being drained.
#[derive(Debug, PartialEq, Eq)]
pub enum PodFate {
    Evict,
    /// Stays: a DaemonSet pod, a mirror pod, or a pod that has finished.
    Skip(&'static str),
    /// No controller would recreate it: the drain stops.
    Orphan,
}

pub fn fate(pod: &Value) -> PodFate {
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return PodFate::Skip("mirror pod");
    }
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded") | Some("Failed")) {
        return PodFate::Skip("finished");
    }
    let owners = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let controller = owners
        .iter()
        .find(|o| o.get("controller") == Some(&Value::Bool(true)));
    match controller
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
    {
        Some("DaemonSet") => PodFate::Skip("DaemonSet pod"),
        Some(_) => PodFate::Evict,
        None => PodFate::Orphan,
    }
}

fn pod_key(p: &Value) -> (String, String, String) {
    let s = |k: &str| {
        p.pointer(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        s("/metadata/namespace"),
        s("/metadata/name"),
        s("/metadata/uid"),
    )
}

/// What a drain did.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drained {
    pub evicted: Vec<String>,
    pub skipped: Vec<String>,
    /// Evictions refused for a while (429: a PodDisruptionBudget) before they went through.
    pub pdb_waits: usize,
    pub seconds: f64,
}

/// Evicts every pod of `node` that a controller recreates, retrying evictions a
/// PodDisruptionBudget refuses, and waits until they are gone; all within `timeout`. `minor`:
/// the cluster's Kubernetes minor (the Eviction API is `policy/v1` from 1.22). Used by
/// `upgrade` and `reset`.
pub async fn drain(
    api: &Client,
    node: &str,
    timeout: Duration,
    minor: u32,
) -> anyhow::Result<Drained> {
    let policy = crate::version::KubeVersion {
        major: 1,
        minor,
        patch: 0,
    }
    .facts()
    .eviction_api;
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let list = api
        .get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
        ))
        .await?;
    let mut out = Drained::default();
    let mut evict = Vec::new();
    let mut orphans = Vec::new();
    for p in list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let (ns, name, uid) = pod_key(&p);
        match fate(&p) {
            PodFate::Evict => evict.push((ns, name, uid)),
            PodFate::Skip(why) => out.skipped.push(format!("{ns}/{name} ({why})")),
            PodFate::Orphan => orphans.push(format!("{ns}/{name}")),
        }
    }
    if !orphans.is_empty() {
        anyhow::bail!(
            "node {node} runs pod(s) no controller would recreate: {} (an eviction would lose them)\n  fix: delete them or run them under a Deployment/StatefulSet/Job, then run the command again",
            orphans.join(", ")
        );
    }
    // Evict; a 429 is a PodDisruptionBudget saying "not now": retry until the deadline.
    let mut pending: Vec<(String, String, String)> = evict.clone();
    while !pending.is_empty() {
        let mut refused = Vec::new();
        let mut last = String::new();
        for (ns, name, uid) in pending {
            let body = json!({
                "apiVersion": policy,
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
                "deleteOptions": {"preconditions": {"uid": uid}},
            });
            let r = api
                .request(
                    Method::POST,
                    &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
                    Some(("application/json", serde_json::to_vec(&body)?)),
                )
                .await;
            match r {
                Ok(_) => out.evicted.push(format!("{ns}/{name}")),
                Err(e) => {
                    let api_err = e
                        .chain()
                        .find_map(|c| c.downcast_ref::<crate::kube::ApiError>());
                    match api_err.map(|a| a.status) {
                        // Gone already, or replaced (the uid precondition failed).
                        Some(404) | Some(409) => {}
                        Some(429) => {
                            out.pdb_waits += 1;
                            last = format!("{ns}/{name}: {e:#}");
                            refused.push((ns, name, uid));
                        }
                        _ => return Err(e.context(format!("evicting {ns}/{name} from {node}"))),
                    }
                }
            }
        }
        if !refused.is_empty() && tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "drain of {node} timed out after {} s: eviction still refused by a PodDisruptionBudget: {last}",
                timeout.as_secs()
            );
        }
        if !refused.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        pending = refused;
    }
    // Wait for the evicted pods to be gone (their grace period).
    loop {
        let mut left = Vec::new();
        for (ns, name, uid) in &evict {
            if let Some(p) = api
                .get_opt(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
                .await?
                && p.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid.as_str())
            {
                left.push(format!("{ns}/{name}"));
            }
        }
        if left.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "drain of {node} timed out after {} s: pods still terminating: {}",
                timeout.as_secs(),
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out.seconds = t.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_sorted_like_kubectl_drain_does() {
        let owned = |kind: &str| json!({"metadata": {"ownerReferences": [{"kind": kind, "controller": true}]}, "status": {"phase": "Running"}});
        assert_eq!(fate(&owned("ReplicaSet")), PodFate::Evict);
        assert_eq!(fate(&owned("StatefulSet")), PodFate::Evict);
        assert_eq!(fate(&owned("DaemonSet")), PodFate::Skip("DaemonSet pod"));
        assert_eq!(
            fate(&json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}})),
            PodFate::Skip("mirror pod")
        );
        assert_eq!(
            fate(&json!({"metadata": {}, "status": {"phase": "Succeeded"}})),
            PodFate::Skip("finished")
        );
        assert_eq!(
            fate(&json!({"metadata": {}, "status": {"phase": "Running"}})),
            PodFate::Orphan
        );
    }
}
