//! Manifests: multi-document YAML -> API objects, each tagged with where it came from, in the
//! order they can be applied (namespaces and CRDs before what lives in them or uses them).

use anyhow::Context as _;
use serde_json::Value;

/// One API object of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Where it came from, for messages: `coredns.yaml: document 3` (`, item 2` inside a List).
    /// Documents are counted without the empty ones.
    pub source: String,
    pub value: Value,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl Object {
    pub fn api_version(&self) -> &str {
        str_at(&self.value, &["apiVersion"]).unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        str_at(&self.value, &["kind"]).unwrap_or("")
    }
    pub fn name(&self) -> &str {
        str_at(&self.value, &["metadata", "name"]).unwrap_or("")
    }
    /// `metadata.namespace` as written (None when absent or empty).
    pub fn namespace(&self) -> Option<&str> {
        str_at(&self.value, &["metadata", "namespace"]).filter(|s| !s.is_empty())
    }
    /// `Deployment kube-system/coredns`, `ClusterRole system:coredns`.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }
}

/// Parses every document of `text` (`origin` names it in messages). Empty and comment-only
/// documents are skipped, `kind: List` (or any `*List` with `items`) is flattened; every object
/// must have apiVersion, kind and metadata.name.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<Object>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).with_context(|| format!("{origin}: not valid YAML"))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("{origin}: document {}", i + 1);
        if doc.is_null() {
            continue;
        }
        let kind = str_at(&doc, &["kind"]).unwrap_or("");
        if kind.ends_with("List")
            && let Some(items) = doc.get("items").and_then(Value::as_array)
        {
            for (j, item) in items.iter().enumerate() {
                out.push(checked(item.clone(), format!("{at}, item {}", j + 1))?);
            }
            continue;
        }
        out.push(checked(doc, at)?);
    }
    Ok(out)
}

fn checked(value: Value, source: String) -> anyhow::Result<Object> {
    if !value.is_object() {
        anyhow::bail!("{source}: not a mapping (an API object has apiVersion, kind, metadata)");
    }
    for (path, what) in [
        (&["apiVersion"][..], "apiVersion"),
        (&["kind"][..], "kind"),
        (&["metadata", "name"][..], "metadata.name"),
    ] {
        if str_at(&value, path).is_none_or(str::is_empty) {
            anyhow::bail!(
                "{source}: no {what} (server-side apply needs apiVersion, kind and metadata.name)"
            );
        }
    }
    Ok(Object { source, value })
}

/// Apply tier of a kind, as kubectl and helm order them: namespaces, then CRDs, then what
/// workloads refer to (accounts, RBAC, configuration), then the rest; API services and
/// admission webhooks last, so they cannot intercept the other objects before their backends
/// exist.
pub fn apply_tier(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount"
        | "Secret"
        | "ConfigMap"
        | "ClusterRole"
        | "ClusterRoleBinding"
        | "Role"
        | "RoleBinding"
        | "PriorityClass"
        | "StorageClass"
        | "ResourceQuota"
        | "LimitRange"
        | "PodSecurityPolicy"
        | "NetworkPolicy"
        | "PersistentVolume"
        | "PersistentVolumeClaim" => 2,
        "APIService" | "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => 4,
        _ => 3,
    }
}

/// Sorts by [`apply_tier`], keeping the manifest's order within a tier.
pub fn sort_for_apply(objects: &mut [Object]) {
    objects.sort_by_key(|o| apply_tier(o.kind()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &str = r#"
# a comment before the first document
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {replicas: 2}
---
# only a comment here
---
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: web-config, namespace: shop}
    data: {port: "8080", enabled: "true"}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:web"}
"#;

    #[test]
    fn splits_documents_skips_empty_ones_and_flattens_lists() {
        let objs = parse(MIXED, "extra.yaml").unwrap();
        let names: Vec<String> = objs.iter().map(Object::describe).collect();
        assert_eq!(
            names,
            [
                "Deployment shop/web",
                "Service shop/web",
                "ConfigMap shop/web-config",
                "Namespace shop",
                "CustomResourceDefinition widgets.example.com",
                "ClusterRole system:web",
            ]
        );
        assert_eq!(objs[0].source, "extra.yaml: document 1");
        assert_eq!(objs[2].source, "extra.yaml: document 2, item 2");
        assert_eq!(objs[3].source, "extra.yaml: document 3");
        // Scalars keep their YAML types: quoted strings stay strings, numbers are numbers.
        assert_eq!(objs[2].value["data"]["enabled"], "true");
        assert_eq!(objs[0].value["spec"]["replicas"], 2);
    }

    #[test]
    fn orders_namespaces_crds_config_then_the_rest() {
        let mut objs = parse(MIXED, "extra.yaml").unwrap();
        objs.push(Object {
            source: "x".into(),
            value: serde_json::json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.metrics.k8s.io"}}),
        });
        sort_for_apply(&mut objs);
        let kinds: Vec<&str> = objs.iter().map(Object::kind).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "ConfigMap",
                "ClusterRole",
                "Deployment",
                "Service",
                "APIService"
            ]
        );
    }

    #[test]
    fn bad_documents_are_named() {
        let e = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "a.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "a.yaml: document 1: no metadata.name (server-side apply needs apiVersion, kind and metadata.name)"
        );
        let e = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n- 1\n",
            "b.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("b.yaml: document 2: not a mapping"), "{e}");
        let e = format!("{:#}", parse("kind: [unclosed\n", "c.yaml").unwrap_err());
        assert!(e.starts_with("c.yaml: not valid YAML"), "{e}");
        assert!(parse("# nothing\n", "d.yaml").unwrap().is_empty());
    }
}
