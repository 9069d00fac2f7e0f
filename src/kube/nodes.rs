//! Nodes, Deployments and APIServices as the nodes and add-ons phases need them: which nodes
//! are Ready with which kubelet and address, their labels, whether a Deployment is Available,
//! and whether an aggregated API is served (an unavailable one breaks every discovery).

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};

use super::Client;

/// A node as `kubectl get nodes -o wide` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// The Ready condition's reason and message when it is not True (e.g.
    /// `KubeletNotReady: container runtime network not ready`), or "no Ready condition".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_because: Option<String>,
    /// `status.nodeInfo.kubeletVersion`, e.g. `v1.20.2`.
    pub kubelet_version: String,
    /// The node's InternalIP address, as the kubelet reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_ip: Option<String>,
    pub labels: BTreeMap<String, String>,
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

impl Node {
    /// Reads one item of a `NodeList` (or a `Node`).
    pub fn from_json(v: &Value) -> anyhow::Result<Node> {
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .context("a node without metadata.name")?
            .to_string();
        let status = v.get("status").cloned().unwrap_or(Value::Null);
        let ready_cond = condition(&status, "Ready");
        let ready = ready_cond.is_some_and(|c| s(c, "status") == "True");
        let not_ready_because = match ready_cond {
            None => Some("no Ready condition".to_string()),
            Some(_) if ready => None,
            Some(c) => Some(
                [s(c, "reason"), s(c, "message")]
                    .into_iter()
                    .filter(|x| !x.is_empty())
                    .collect::<Vec<_>>()
                    .join(": "),
            ),
        };
        let internal_ip = status
            .get("addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| s(x, "type") == "InternalIP"))
            .map(|x| s(x, "address").to_string());
        let labels = v
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Node {
            name,
            ready,
            not_ready_because,
            kubelet_version: status
                .pointer("/nodeInfo/kubeletVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            internal_ip,
            labels,
        })
    }
}

/// Whether a Deployment has rolled out and is Available, with a line saying where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    /// Available=True for the current generation, and every replica updated.
    pub available: bool,
    /// `2/2 available, 2 updated` or the reason it is not, e.g.
    /// `0/2 available: MinimumReplicasUnavailable: Deployment does not have minimum availability.`
    pub summary: String,
}

impl DeploymentStatus {
    pub fn from_json(d: &Value) -> DeploymentStatus {
        let n = |p: &str| d.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let want = d
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let (avail, updated) = (n("/status/availableReplicas"), n("/status/updatedReplicas"));
        let generation = n("/metadata/generation");
        let observed = n("/status/observedGeneration");
        let status = d.get("status").cloned().unwrap_or(Value::Null);
        let cond = condition(&status, "Available");
        let cond_true = cond.is_some_and(|c| s(c, "status") == "True");
        let available = cond_true && observed >= generation && updated >= want;
        let mut summary = format!("{avail}/{want} available, {updated} updated");
        if observed < generation {
            summary.push_str(&format!(
                " (generation {generation} not yet observed by the controller)"
            ));
        } else if !cond_true {
            let why = match cond {
                Some(c) => format!("{}: {}", s(c, "reason"), s(c, "message")),
                None => "no Available condition yet (is kube-controller-manager running?)".into(),
            };
            summary.push_str(&format!(": {why}"));
        }
        DeploymentStatus { available, summary }
    }
}

/// An APIService (`v1beta1.metrics.k8s.io`) and whether the aggregator can serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServiceStatus {
    pub name: String,
    /// Available=True.
    pub available: bool,
    /// `Local`, or `kube-system/metrics-server` for an aggregated API.
    pub service: String,
    /// The Available condition's reason and message when it is not True.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
}

impl ApiServiceStatus {
    pub fn from_json(v: &Value) -> ApiServiceStatus {
        let status = v.get("status").cloned().unwrap_or(Value::Null);
        let cond = condition(&status, "Available");
        let available = cond.is_some_and(|c| s(c, "status") == "True");
        let svc = v.pointer("/spec/service");
        let service = match svc {
            Some(sv) if !sv.is_null() => format!("{}/{}", s(sv, "namespace"), s(sv, "name")),
            _ => "Local".into(),
        };
        let why = match (available, cond) {
            (true, _) => String::new(),
            (false, Some(c)) => format!("{}: {}", s(c, "reason"), s(c, "message")),
            (false, None) => "no Available condition yet".into(),
        };
        ApiServiceStatus {
            name: v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            available,
            service,
            why,
        }
    }
}

impl Client {
    /// One APIService, or None when it is not registered.
    pub async fn api_service(&self, name: &str) -> anyhow::Result<Option<ApiServiceStatus>> {
        Ok(self
            .get_opt(&format!(
                "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
            ))
            .await?
            .as_ref()
            .map(ApiServiceStatus::from_json))
    }

    /// Every registered APIService.
    pub async fn api_services(&self) -> anyhow::Result<Vec<ApiServiceStatus>> {
        let list = self
            .get("/apis/apiregistration.k8s.io/v1/apiservices")
            .await?;
        Ok(list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(ApiServiceStatus::from_json)
            .collect())
    }

    /// Deletes an APIService; Ok(false) when it was not registered.
    pub async fn delete_api_service(&self, name: &str) -> anyhow::Result<bool> {
        self.delete(&format!(
            "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
        ))
        .await
    }

    /// A Deployment's status, or None when it does not exist.
    pub async fn deployment_status_opt(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<DeploymentStatus>> {
        Ok(self
            .get_opt(&format!(
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
            ))
            .await?
            .as_ref()
            .map(DeploymentStatus::from_json))
    }

    /// Ready addresses behind a Service (its Endpoints object); 0 when there is none.
    pub async fn ready_endpoints(&self, namespace: &str, name: &str) -> anyhow::Result<usize> {
        let e = self
            .get_opt(&format!("/api/v1/namespaces/{namespace}/endpoints/{name}"))
            .await?;
        Ok(e.as_ref()
            .and_then(|e| e.get("subsets"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("addresses").and_then(Value::as_array))
            .map(Vec::len)
            .sum())
    }

    /// Every node with its Ready condition, kubelet version, InternalIP and labels.
    pub async fn list_nodes(&self) -> anyhow::Result<Vec<Node>> {
        let list = self.get("/api/v1/nodes").await?;
        list.get("items")
            .and_then(Value::as_array)
            .context("GET /api/v1/nodes: no items")?
            .iter()
            .map(Node::from_json)
            .collect()
    }

    /// Sets (`Some`) or removes (`None`) labels of a node with one merge patch; other labels
    /// are left alone.
    pub async fn patch_node_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> anyhow::Result<Node> {
        let patch = json!({ "metadata": { "labels": labels } });
        let v = self
            .merge_patch(&format!("/api/v1/nodes/{node}"), &patch)
            .await
            .with_context(|| format!("labelling node {node}"))?;
        Node::from_json(&v)
    }

    pub async fn deployment_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<DeploymentStatus> {
        let d = self
            .get(&format!(
                "/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
            ))
            .await?;
        Ok(DeploymentStatus::from_json(&d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_service_is_available_only_with_its_condition_true() {
        let a = ApiServiceStatus::from_json(&json!({
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"service": {"namespace": "kube-system", "name": "metrics-server"}},
            "status": {"conditions": [{"type": "Available", "status": "False",
                "reason": "MissingEndpoints", "message": "endpoints for service/metrics-server in \"kube-system\" have no addresses"}]}
        }));
        assert!(!a.available);
        assert_eq!(a.service, "kube-system/metrics-server");
        assert!(
            a.why.starts_with("MissingEndpoints: endpoints"),
            "{}",
            a.why
        );
        let l = ApiServiceStatus::from_json(&json!({
            "metadata": {"name": "v1.apps"},
            "spec": {"service": null},
            "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local"}]}
        }));
        assert!(l.available && l.why.is_empty());
        assert_eq!(l.service, "Local");
        assert!(!ApiServiceStatus::from_json(&json!({"metadata": {"name": "x"}})).available);
    }

    #[test]
    fn reads_nodes_as_the_kubelet_reports_them() {
        let list: Value = serde_json::from_str(
            r#"{"kind":"NodeList","items":[
            {"metadata":{"name":"cp1","labels":{"kubernetes.io/hostname":"cp1","node-role.kubernetes.io/master":""}},
             "status":{"conditions":[
                {"type":"MemoryPressure","status":"False","reason":"KubeletHasSufficientMemory"},
                {"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status"}],
              "addresses":[{"type":"InternalIP","address":"10.77.0.11"},{"type":"Hostname","address":"cp1"}],
              "nodeInfo":{"kubeletVersion":"v1.20.2","containerRuntimeVersion":"containerd://1.6.20"}}},
            {"metadata":{"name":"w1"},
             "status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"container runtime network not ready"}],
              "addresses":[{"type":"Hostname","address":"w1"}],
              "nodeInfo":{"kubeletVersion":"v1.20.2"}}},
            {"metadata":{"name":"w2"},"status":{}}]}"#,
        )
        .unwrap();
        let nodes: Vec<Node> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| Node::from_json(n).unwrap())
            .collect();
        assert!(nodes[0].ready);
        assert_eq!(nodes[0].not_ready_because, None);
        assert_eq!(nodes[0].kubelet_version, "v1.20.2");
        assert_eq!(nodes[0].internal_ip.as_deref(), Some("10.77.0.11"));
        assert_eq!(nodes[0].labels["node-role.kubernetes.io/master"], "");
        assert!(!nodes[1].ready);
        assert_eq!(
            nodes[1].not_ready_because.as_deref(),
            Some("KubeletNotReady: container runtime network not ready")
        );
        assert_eq!(nodes[1].internal_ip, None);
        assert_eq!(
            nodes[2].not_ready_because.as_deref(),
            Some("no Ready condition")
        );
    }

    #[test]
    fn deployment_availability() {
        let d = |gen_: u64, observed: u64, avail: u64, updated: u64, cond: &str| {
            serde_json::json!({
                "metadata": {"generation": gen_},
                "spec": {"replicas": 2},
                "status": {"observedGeneration": observed, "availableReplicas": avail,
                    "updatedReplicas": updated,
                    "conditions": [{"type": "Available", "status": cond,
                        "reason": "MinimumReplicasUnavailable",
                        "message": "Deployment does not have minimum availability."}]}
            })
        };
        let ok = DeploymentStatus::from_json(&d(1, 1, 2, 2, "True"));
        assert!(ok.available);
        assert_eq!(ok.summary, "2/2 available, 2 updated");
        let down = DeploymentStatus::from_json(&d(1, 1, 0, 2, "False"));
        assert!(!down.available);
        assert_eq!(
            down.summary,
            "0/2 available, 2 updated: MinimumReplicasUnavailable: Deployment does not have minimum availability."
        );
        assert!(!DeploymentStatus::from_json(&d(2, 1, 2, 2, "True")).available);
        assert!(!DeploymentStatus::from_json(&d(1, 1, 1, 1, "True")).available);
        let fresh = DeploymentStatus::from_json(&serde_json::json!({"spec": {"replicas": 2}}));
        assert!(
            fresh.summary.contains("no Available condition"),
            "{}",
            fresh.summary
        );
    }
}
