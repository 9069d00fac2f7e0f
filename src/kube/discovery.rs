//! Discovery: which resource (plural name, namespaced or not) serves a kind of an apiVersion,
//! read from `/api/v1` or `/apis/<group>/<version>` (an `APIResourceList`), cached per client.

use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;

use super::{Client, is_not_found};

/// One kind of one apiVersion as the API serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    /// `v1`, `apps/v1`, `rbac.authorization.k8s.io/v1`, ...
    pub api_version: String,
    pub kind: String,
    /// The URL segment, e.g. `deployments`.
    pub plural: String,
    pub namespaced: bool,
}

/// `/api/v1` for the core group, `/apis/<group>/<version>` for the others.
pub fn group_version_path(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    }
}

impl ApiResource {
    /// The collection: `/apis/apps/v1/namespaces/kube-system/deployments`. `namespace` is
    /// ignored for cluster-scoped resources.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let gv = group_version_path(&self.api_version);
        match namespace {
            Some(ns) if self.namespaced => format!("{gv}/namespaces/{ns}/{}", self.plural),
            _ => format!("{gv}/{}", self.plural),
        }
    }

    /// One object: the collection path and its name.
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }
}

/// The kinds of an `APIResourceList` (subresources such as `pods/status` left out).
pub fn parse_resource_list(api_version: &str, list: &Value) -> anyhow::Result<Vec<ApiResource>> {
    let items = list
        .get("resources")
        .and_then(Value::as_array)
        .with_context(|| format!("discovery of {api_version}: no `resources` list"))?;
    let mut out = Vec::new();
    for r in items {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() || kind.is_empty() || name.contains('/') {
            continue;
        }
        out.push(ApiResource {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            plural: name.to_string(),
            namespaced: r
                .get("namespaced")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
    Ok(out)
}

impl Client {
    /// The resource serving `kind` in `api_version`. Read once per apiVersion; a kind missing
    /// from the cached list is looked up again once (a CRD may have just been created).
    pub async fn resource(&self, api_version: &str, kind: &str) -> anyhow::Result<ApiResource> {
        let cached = self.discovery.lock().unwrap().get(api_version).cloned();
        if let Some(list) = &cached
            && let Some(r) = list.iter().find(|r| r.kind == kind)
        {
            return Ok(r.clone());
        }
        let list = self.discover(api_version).await?;
        list.iter()
            .find(|r| r.kind == kind)
            .cloned()
            .ok_or_else(|| {
                let mut kinds: Vec<&str> = list.iter().map(|r| r.kind.as_str()).collect();
                kinds.sort_unstable();
                anyhow::anyhow!(
                    "kind {kind} is not served by apiVersion {api_version} (it serves: {})",
                    kinds.join(", ")
                )
            })
    }

    async fn discover(&self, api_version: &str) -> anyhow::Result<Arc<Vec<ApiResource>>> {
        let path = group_version_path(api_version);
        let v = match self.get(&path).await {
            Ok(v) => v,
            Err(e) if is_not_found(&e) => anyhow::bail!(
                "apiVersion {api_version} is not served by this cluster ({path} is 404): \
                 a CRD or API server that provides it must be installed first"
            ),
            Err(e) => return Err(e.context(format!("discovery of {api_version}"))),
        };
        let list = Arc::new(parse_resource_list(api_version, &v)?);
        self.discovery
            .lock()
            .unwrap()
            .insert(api_version.to_string(), list.clone());
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from what kube-apiserver v1.20.2 answers at /api/v1 and /apis/apps/v1.
    const CORE_V1: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[
      {"name":"bindings","singularName":"","namespaced":true,"kind":"Binding","verbs":["create"]},
      {"name":"configmaps","singularName":"","namespaced":true,"kind":"ConfigMap","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["cm"]},
      {"name":"namespaces","singularName":"","namespaced":false,"kind":"Namespace","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["ns"]},
      {"name":"namespaces/status","singularName":"","namespaced":false,"kind":"Namespace","verbs":["get","patch","update"]},
      {"name":"nodes","singularName":"","namespaced":false,"kind":"Node","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["no"]},
      {"name":"services","singularName":"","namespaced":true,"kind":"Service","verbs":["create","delete","get","list","patch","update","watch"],"shortNames":["svc"]},
      {"name":"services/proxy","singularName":"","namespaced":true,"kind":"ServiceProxyOptions","verbs":["create","delete","get","patch","update"]}]}"#;
    const APPS_V1: &str = r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"apps/v1","resources":[
      {"name":"deployments","singularName":"","namespaced":true,"kind":"Deployment","verbs":["create","delete","deletecollection","get","list","patch","update","watch"],"shortNames":["deploy"],"categories":["all"]},
      {"name":"deployments/scale","singularName":"","namespaced":true,"group":"autoscaling","version":"v1","kind":"Scale","verbs":["get","patch","update"]},
      {"name":"deployments/status","singularName":"","namespaced":true,"kind":"Deployment","verbs":["get","patch","update"]}]}"#;

    #[test]
    fn maps_kinds_to_paths_from_recorded_discovery() {
        let core = parse_resource_list("v1", &serde_json::from_str(CORE_V1).unwrap()).unwrap();
        let apps = parse_resource_list("apps/v1", &serde_json::from_str(APPS_V1).unwrap()).unwrap();
        let find = |l: &[ApiResource], k: &str| l.iter().find(|r| r.kind == k).cloned().unwrap();
        let svc = find(&core, "Service");
        assert!(svc.namespaced);
        assert_eq!(
            svc.object_path(Some("kube-system"), "kube-dns"),
            "/api/v1/namespaces/kube-system/services/kube-dns"
        );
        let ns = find(&core, "Namespace");
        assert!(!ns.namespaced);
        assert_eq!(ns.plural, "namespaces", "not namespaces/status");
        assert_eq!(
            ns.object_path(Some("ignored"), "kube-system"),
            "/api/v1/namespaces/kube-system"
        );
        assert_eq!(find(&core, "Node").collection_path(None), "/api/v1/nodes");
        let d = find(&apps, "Deployment");
        assert_eq!(
            d.plural, "deployments",
            "the subresource is not the resource"
        );
        assert_eq!(
            d.object_path(Some("kube-system"), "coredns"),
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        );
        assert!(!apps.iter().any(|r| r.kind == "Scale"));
        assert_eq!(
            group_version_path("rbac.authorization.k8s.io/v1"),
            "/apis/rbac.authorization.k8s.io/v1"
        );
    }
}
