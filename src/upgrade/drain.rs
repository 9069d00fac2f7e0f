//! Cordon, drain and uncordon through the API, as `kubectl drain` does: pods leave through the
//! Eviction API (so PodDisruptionBudgets are respected), DaemonSet pods and mirror (static)
//! pods stay, finished pods are ignored, and a pod no controller would recreate stops the
//! drain (it would be lost). Which nodes clusterctl cordoned is written to the state dir first,
//! so that a run that dies between cordon and uncordon still uncordons them when resumed, and a
//! node the user had cordoned stays cordoned.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::kube::Client;

/// `clusters/<name>/upgrade-cordoned.json`: nodes cordoned by the upgrade and not yet
/// uncordoned.
pub struct Cordoned {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl Cordoned {
    pub fn at(path: PathBuf) -> Cordoned {
        Cordoned {
            path,
            lock: std::sync::Mutex::new(()),
        }
    }
    pub fn list(&self) -> BTreeSet<String> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn update(&self, f: impl FnOnce(&mut BTreeSet<String>)) -> anyhow::Result<()> {
        let _g = self.lock.lock().unwrap();
        let mut s = self.list();
        f(&mut s);
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d)?;
        }
        if s.is_empty() {
            let _ = std::fs::remove_file(&self.path);
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&s)?)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

fn node_path(n: &str) -> String {
    format!("/api/v1/nodes/{n}")
}

/// Cordons `node` unless the user already had (then returns false: not ours to uncordon).
pub async fn cordon(api: &Client, node: &str, record: &Cordoned) -> anyhow::Result<bool> {
    let n = api.get(&node_path(node)).await?;
    let already = n.pointer("/spec/unschedulable") == Some(&Value::Bool(true));
    if already && !record.list().contains(node) {
        return Ok(false);
    }
    record.update(|s| {
        s.insert(node.to_string());
    })?;
    api.merge_patch(&node_path(node), &json!({"spec": {"unschedulable": true}}))
        .await?;
    Ok(true)
}

/// Uncordons `node` if the upgrade cordoned it (now or in an earlier run that stopped).
pub async fn uncordon(api: &Client, node: &str, record: &Cordoned) -> anyhow::Result<bool> {
    if !record.list().contains(node) {
        return Ok(false);
    }
    api.merge_patch(&node_path(node), &json!({"spec": {"unschedulable": null}}))
        .await?;
    record.update(|s| {
        s.remove(node);
    })?;
    Ok(true)
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
    let policy = if minor >= 22 {
        "policy/v1"
    } else {
        "policy/v1beta1"
    };
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

    #[test]
    fn the_cordon_record_survives_and_empties() {
        let d = tempfile::tempdir().unwrap();
        let r = Cordoned::at(d.path().join("c.json"));
        r.update(|s| {
            s.insert("h4".into());
        })
        .unwrap();
        assert!(Cordoned::at(d.path().join("c.json")).list().contains("h4"));
        r.update(|s| {
            s.remove("h4");
        })
        .unwrap();
        assert!(!d.path().join("c.json").exists());
    }
}
