//! Server-side apply (beta and on by default since Kubernetes 1.16, so in 1.20; GA in 1.22:
//! kubernetes.io/blog/2021/08/06/server-side-apply-ga, and cert-manager's upgrade notes
//! "enabled by default on supported versions before v1.22"): the API
//! server merges our fields into the live object and records us as their manager, so a
//! re-apply of the same manifest writes nothing, and fields others own (a Service's allocated
//! clusterIP, an HPA's replicas) are left alone.
//!
//! One object: `PATCH <object path>?fieldManager=clusterctl&force=true` with
//! `Content-Type: application/apply-patch+yaml` (a JSON body is valid YAML); `dryRun=All` for
//! dry runs, which the API server validates and admits but does not persist.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use super::manifest::{self, Object};
use super::{ApiResource, Client, FIELD_MANAGER, Wait, wait_until};

/// What applying one object did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Created,
    /// The object or the fields clusterctl manages in it changed (so its resourceVersion
    /// moved). A controller updating the status meanwhile does not count.
    Changed,
    Unchanged,
}

/// One applied object.
#[derive(Debug, Clone)]
pub struct Applied {
    /// `Deployment kube-system/coredns`
    pub object: String,
    /// Where it came from (`coredns.yaml: document 5`).
    pub source: String,
    pub change: Change,
    /// The object as the API server answered (`Null` for an object a dry run could only
    /// predict, e.g. one in a namespace the same manifest creates).
    pub live: Value,
}

/// Counts of a list of [`Applied`]; displays as `7 objects (2 created, 0 changed, 5 unchanged)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub created: usize,
    pub changed: usize,
    pub unchanged: usize,
}

impl Summary {
    pub fn of(applied: &[Applied]) -> Summary {
        let n = |c: Change| applied.iter().filter(|a| a.change == c).count();
        Summary {
            created: n(Change::Created),
            changed: n(Change::Changed),
            unchanged: n(Change::Unchanged),
        }
    }
    pub fn total(&self) -> usize {
        self.created + self.changed + self.unchanged
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.total();
        write!(
            f,
            "{t} object{} ({} created, {} changed, {} unchanged)",
            if t == 1 { "" } else { "s" },
            self.created,
            self.changed,
            self.unchanged
        )
    }
}

/// The object without what the server maintains, to compare before and after an apply.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "managedFields",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "uid",
                "selfLink",
            ] {
                m.remove(k);
            }
        }
    }
    v
}

/// clusterctl's entries of `metadata.managedFields`, without their timestamps.
fn our_fields(v: &Value) -> Vec<Value> {
    v.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|e| e.get("manager").and_then(Value::as_str) == Some(FIELD_MANAGER))
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(o) = e.as_object_mut() {
                        o.remove("time");
                    }
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Compares the object before and after an apply.
pub fn change_between(before: Option<&Value>, after: &Value) -> Change {
    match before {
        None => Change::Created,
        Some(b) if comparable(b) != comparable(after) || our_fields(b) != our_fields(after) => {
            Change::Changed
        }
        Some(_) => Change::Unchanged,
    }
}

/// Kinds whose server-side apply makes kube-apiserver up to 1.20 panic ("FieldManager must be
/// installed to run apply": the aggregator serving APIServices has no OpenAPI models,
/// kubernetes/kubernetes#89264, fixed in 1.21 by #98576). They are created, or merge-patched
/// with the manifest's fields, instead: the same result for objects clusterctl alone writes.
fn ssa_unsupported(res: &ApiResource) -> bool {
    res.api_version.starts_with("apiregistration.k8s.io/") && res.kind == "APIService"
}

/// The body sent for `obj` served by `res`: namespaced objects get `default` when they name
/// no namespace (as kubectl does); cluster-scoped ones lose a stray namespace.
fn body_for(obj: &Object, res: &ApiResource) -> (Value, Option<String>) {
    let mut body = obj.value.clone();
    default_port_protocols(&mut body);
    let meta = body
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("checked on parse");
    if res.namespaced {
        let ns = obj.namespace().unwrap_or("default").to_string();
        meta.insert("namespace".into(), Value::String(ns.clone()));
        (body, Some(ns))
    } else {
        meta.remove("namespace");
        (body, None)
    }
}

/// Sets `protocol: TCP` (the API's own default) on Service ports and container ports that
/// omit it. Server-side apply in Kubernetes 1.20 rejects such a port: `protocol` is a key of
/// those lists and had no default for it ("associative list with keys has an element that
/// omits key field \"protocol\"", kubernetes-sigs/structured-merge-diff#130 and #183), which
/// many published manifests trip over. Built-in kinds only: a custom resource's schema is its
/// own.
fn default_port_protocols(body: &mut Value) {
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
    let api = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let builtin = !api.contains('/') || api.starts_with("apps/") || api.starts_with("batch/");
    if !builtin {
        return;
    }
    let set_tcp = |ports: Option<&mut Value>| {
        for p in ports.and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(p) = p.as_object_mut() {
                p.entry("protocol").or_insert_with(|| Value::from("TCP"));
            }
        }
    };
    if kind == "Service" {
        set_tcp(body.pointer_mut("/spec/ports"));
        return;
    }
    let pod_spec = match kind {
        "Pod" => "/spec",
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => "/spec/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        "PodTemplate" => "/template/spec",
        _ => return,
    };
    if let Some(spec) = body.pointer_mut(pod_spec) {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for c in spec
                .get_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                set_tcp(c.get_mut("ports"));
            }
        }
    }
}

/// A CRD's (apiVersion, kind) pairs: `group/version` for each served version.
fn crd_kinds(crd: &Object) -> Vec<(String, String)> {
    let v = &crd.value;
    let group = v
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = v
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut versions: Vec<String> = v
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    // apiextensions.k8s.io/v1beta1 CRDs may name one `spec.version` only.
    if let Some(one) = v.pointer("/spec/version").and_then(Value::as_str) {
        versions.push(one.to_string());
    }
    versions
        .into_iter()
        .map(|ver| (format!("{group}/{ver}"), kind.to_string()))
        .collect()
}

impl Client {
    /// Applies one object; its kind must be served already.
    pub async fn apply(&self, obj: &Object, dry_run: bool) -> anyhow::Result<Applied> {
        let res = self
            .resource(obj.api_version(), obj.kind())
            .await
            .with_context(|| format!("{}: {}", obj.source, obj.describe()))?;
        self.apply_as(obj, &res, dry_run)
            .await
            .with_context(|| format!("{}: {}", obj.source, obj.describe()))
    }

    async fn apply_as(
        &self,
        obj: &Object,
        res: &ApiResource,
        dry_run: bool,
    ) -> anyhow::Result<Applied> {
        let (body, ns) = body_for(obj, res);
        let path = res.object_path(ns.as_deref(), obj.name());
        let before = self.get_opt(&path).await?;
        let dry = if dry_run { "&dryRun=All" } else { "" };
        let live = if ssa_unsupported(res) {
            match &before {
                None => {
                    let bytes = serde_json::to_vec(&body).expect("JSON values serialize");
                    self.request(
                        reqwest::Method::POST,
                        &format!(
                            "{}?fieldManager={FIELD_MANAGER}{dry}",
                            res.collection_path(ns.as_deref())
                        ),
                        Some(("application/json", bytes)),
                    )
                    .await?
                    .1
                }
                Some(_) => {
                    self.patch(
                        &format!("{path}?fieldManager={FIELD_MANAGER}{dry}"),
                        "application/merge-patch+json",
                        &body,
                    )
                    .await?
                    .1
                }
            }
        } else {
            self.patch(
                &format!("{path}?fieldManager={FIELD_MANAGER}&force=true{dry}"),
                "application/apply-patch+yaml",
                &body,
            )
            .await?
            .1
        };
        let object = match &ns {
            Some(ns) => format!("{} {ns}/{}", obj.kind(), obj.name()),
            None => format!("{} {}", obj.kind(), obj.name()),
        };
        Ok(Applied {
            object,
            source: obj.source.clone(),
            change: change_between(before.as_ref(), &live),
            live,
        })
    }

    /// Applies `objects` in apply order (see [`manifest::sort_for_apply`]). Kinds defined by a
    /// CRD of the same batch are waited for (up to 60 s) until the API serves them. In a dry
    /// run, objects that need a namespace or CRD the batch would create are reported as
    /// created without asking the API (it cannot validate them yet).
    pub async fn apply_objects(
        &self,
        objects: &[Object],
        dry_run: bool,
    ) -> anyhow::Result<Vec<Applied>> {
        let mut sorted = objects.to_vec();
        manifest::sort_for_apply(&mut sorted);
        let crd_defined: BTreeSet<(String, String)> = sorted
            .iter()
            .filter(|o| o.kind() == "CustomResourceDefinition")
            .flat_map(crd_kinds)
            .collect();
        let mut new_namespaces: BTreeSet<String> = BTreeSet::new();
        let mut new_kinds: BTreeSet<(String, String)> = BTreeSet::new();
        let mut out = Vec::new();
        for obj in &sorted {
            let key = (obj.api_version().to_string(), obj.kind().to_string());
            let predicted = |why: &str| {
                Applied {
                    object: obj.describe(),
                    source: obj.source.clone(),
                    change: Change::Created,
                    live: Value::Null,
                }
                .with_note(why)
            };
            if dry_run && new_kinds.contains(&key) {
                out.push(predicted("its CRD would be created first"));
                continue;
            }
            let res = match self.resource(&key.0, &key.1).await {
                Ok(r) => r,
                Err(_) if crd_defined.contains(&key) && !dry_run => {
                    let what = format!("{}: {} (kind from a CRD)", obj.source, obj.describe());
                    wait_until(
                        &what,
                        Duration::from_secs(60),
                        Duration::from_millis(500),
                        || async {
                            Ok(match self.resource(&key.0, &key.1).await {
                                Ok(r) => Wait::Done(r),
                                Err(e) => Wait::Pending(format!("{e:#}")),
                            })
                        },
                    )
                    .await?
                }
                Err(e) => {
                    return Err(e.context(format!("{}: {}", obj.source, obj.describe())));
                }
            };
            if dry_run
                && res.namespaced
                && new_namespaces.contains(obj.namespace().unwrap_or("default"))
            {
                out.push(predicted("its namespace would be created first"));
                continue;
            }
            let applied = self
                .apply_as(obj, &res, dry_run)
                .await
                .with_context(|| format!("{}: {}", obj.source, obj.describe()))?;
            if dry_run && applied.change == Change::Created {
                if obj.kind() == "Namespace" && obj.api_version() == "v1" {
                    new_namespaces.insert(obj.name().to_string());
                }
                if obj.kind() == "CustomResourceDefinition" {
                    new_kinds.extend(crd_kinds(obj));
                }
            }
            out.push(applied);
        }
        Ok(out)
    }

    /// Parses a multi-document YAML manifest (`origin` names it in messages) and applies it.
    pub async fn apply_manifest(
        &self,
        yaml: &str,
        origin: &str,
        dry_run: bool,
    ) -> anyhow::Result<Vec<Applied>> {
        let objects = manifest::parse(yaml, origin)?;
        self.apply_objects(&objects, dry_run).await
    }
}

impl Applied {
    fn with_note(mut self, note: &str) -> Applied {
        self.object = format!("{} ({note})", self.object);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(rv: &str, replicas: u32, ready: u32, our_time: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "resourceVersion": rv,
                "generation": 1, "uid": "u1",
                "managedFields": [
                    {"manager": "clusterctl", "operation": "Apply", "time": our_time,
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "time": rv}
                ]},
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready}
        })
    }

    #[test]
    fn a_change_is_in_the_object_or_our_fields_not_in_status_or_timestamps() {
        let before = live("100", 2, 0, "t1");
        assert_eq!(change_between(None, &before), Change::Created);
        // Only the status moved (a controller wrote between our GET and PATCH).
        assert_eq!(
            change_between(Some(&before), &live("101", 2, 2, "t1")),
            Change::Unchanged
        );
        assert_eq!(
            change_between(Some(&before), &live("100", 2, 0, "t2")),
            Change::Unchanged,
            "a timestamp alone is no change"
        );
        assert_eq!(
            change_between(Some(&before), &live("102", 3, 0, "t2")),
            Change::Changed
        );
        // Taking over a field another manager set: the content is the same, ours differ.
        let mut taken = before.clone();
        taken["metadata"]["managedFields"][0]["fieldsV1"] =
            json!({"f:spec": {"f:replicas": {}, "f:template": {}}});
        assert_eq!(change_between(Some(&before), &taken), Change::Changed);
    }

    #[test]
    fn summary_line() {
        let a = |c| Applied {
            object: String::new(),
            source: String::new(),
            change: c,
            live: Value::Null,
        };
        let s = Summary::of(&[a(Change::Created), a(Change::Created), a(Change::Unchanged)]);
        assert_eq!(
            s.to_string(),
            "3 objects (2 created, 0 changed, 1 unchanged)"
        );
        assert_eq!(
            Summary::of(&[a(Change::Changed)]).to_string(),
            "1 object (0 created, 1 changed, 0 unchanged)"
        );
    }

    #[test]
    fn namespaces_default_for_namespaced_kinds_and_drop_for_cluster_ones() {
        let objs = manifest::parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r, namespace: stray}\n",
            "t.yaml",
        )
        .unwrap();
        let cm = ApiResource {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            namespaced: true,
        };
        let (body, ns) = body_for(&objs[0], &cm);
        assert_eq!(ns.as_deref(), Some("default"));
        assert_eq!(body["metadata"]["namespace"], "default");
        let cr = ApiResource {
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "ClusterRole".into(),
            plural: "clusterroles".into(),
            namespaced: false,
        };
        let (body, ns) = body_for(&objs[1], &cr);
        assert_eq!(ns, None);
        assert!(body["metadata"].get("namespace").is_none());
    }

    #[test]
    fn ports_without_protocol_get_tcp_on_builtin_kinds_only() {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 80}]}});
        default_port_protocols(&mut svc);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(svc["spec"]["ports"][1]["protocol"], "TCP");
        let mut cj = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "initContainers": [{"name": "i", "ports": [{"containerPort": 1}]}],
                "containers": [{"name": "c", "ports": [{"containerPort": 2}]}]}}}}}});
        default_port_protocols(&mut cj);
        let spec = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        let mut cr = json!({"apiVersion": "example.com/v1", "kind": "Service",
            "spec": {"ports": [{"port": 80}]}});
        let before = cr.clone();
        default_port_protocols(&mut cr);
        assert_eq!(cr, before);
    }

    #[test]
    fn crd_kinds_cover_every_version() {
        let crd = &manifest::parse(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  names: {kind: Widget, plural: widgets}\n  scope: Namespaced\n  versions: [{name: v1, served: true, storage: true}, {name: v1beta1, served: true, storage: false}]\n",
            "crd.yaml",
        )
        .unwrap()[0];
        assert_eq!(
            crd_kinds(crd),
            [
                ("example.com/v1".to_string(), "Widget".to_string()),
                ("example.com/v1beta1".to_string(), "Widget".to_string())
            ]
        );
    }
}
