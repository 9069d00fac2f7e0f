//! The tera context of the add-on manifests under `templates/addons/`, built from the
//! inventory alone (the host files' variables live in `vars.rs`).

use serde_json::json;

use crate::inventory::Inventory;

pub const COREDNS: &str = "addons/coredns.yaml";
pub const METRICS_SERVER: &str = "addons/metrics-server.yaml";

/// `cluster`, `network` (cluster_domain, dns_ip), `coredns` (replicas, image) and
/// `metrics_server` (image), with the inventory's defaults applied.
pub fn addon_vars(inv: &Inventory) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert(
        "cluster",
        &json!({
            "name": inv.name(),
            "version": inv.spec.kubernetes_version,
        }),
    );
    ctx.insert(
        "network",
        &json!({
            "cluster_domain": inv.spec.network.cluster_domain,
            "dns_ip": inv.dns_ip().to_string(),
        }),
    );
    ctx.insert(
        "coredns",
        &json!({
            "replicas": inv.spec.addons.coredns.replicas,
            "image": inv.coredns_image(),
        }),
    );
    ctx.insert(
        "metrics_server",
        &json!({ "image": inv.metrics_server_image() }),
    );
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::manifest::{self, Object};
    use crate::render::Renderer;
    use serde_json::Value;

    fn inventory(addons_and_network: &str) -> Inventory {
        let text = format!(
            "apiVersion: clusterctl.io/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  kubernetesVersion: v1.20.2\n  hosts:\n    - {{name: n1, address: 10.77.0.11, roles: [etcd, control-plane, worker]}}\n{addons_and_network}"
        );
        crate::inventory::load_str(&text, std::path::Path::new("/x/inventory.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory
    }

    fn render(inv: &Inventory, template: &str) -> Vec<Object> {
        let text = Renderer::new(None)
            .unwrap()
            .render(template, &addon_vars(inv))
            .unwrap();
        manifest::parse(&text, template).unwrap()
    }

    fn find<'a>(objs: &'a [Object], kind: &str, name: &str) -> &'a Value {
        &objs
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .value
    }

    #[test]
    fn coredns_defaults_are_kubeadm_1_20s() {
        let objs = render(&inventory(""), COREDNS);
        let kinds: Vec<String> = objs.iter().map(Object::describe).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount kube-system/coredns",
                "ClusterRole system:coredns",
                "ClusterRoleBinding system:coredns",
                "ConfigMap kube-system/coredns",
                "Deployment kube-system/coredns",
                "Service kube-system/kube-dns",
            ]
        );
        let d = find(&objs, "Deployment", "coredns");
        assert_eq!(d["spec"]["replicas"], 2);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "k8s.gcr.io/coredns:1.7.0");
        assert_eq!(pod["priorityClassName"], "system-cluster-critical");
        let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["podAffinityTerm"];
        assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(
            anti["labelSelector"]["matchExpressions"][0]["values"][0],
            "kube-dns"
        );
        let tolerated: Vec<&str> = pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["key"].as_str())
            .collect();
        assert!(tolerated.contains(&"node-role.kubernetes.io/master"));
        let svc = find(&objs, "Service", "kube-dns");
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        let ports: Vec<(u64, &str)> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
            .collect();
        assert_eq!(ports, [(53, "UDP"), (53, "TCP"), (9153, "TCP")]);
        let corefile = find(&objs, "ConfigMap", "coredns")["data"]["Corefile"]
            .as_str()
            .unwrap();
        assert!(
            corefile.contains("kubernetes cluster.local in-addr.arpa ip6.arpa {"),
            "{corefile}"
        );
    }

    #[test]
    fn coredns_follows_the_inventory() {
        let inv = inventory(
            "  network: {clusterDomain: corp.internal, serviceCIDR: 10.100.0.0/16, dnsIP: 10.100.0.53}\n  addons:\n    coredns: {replicas: 3, image: registry.example.cn/google_containers/coredns:1.7.0}\n",
        );
        let objs = render(&inv, COREDNS);
        let d = find(&objs, "Deployment", "coredns");
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.example.cn/google_containers/coredns:1.7.0"
        );
        assert_eq!(
            find(&objs, "Service", "kube-dns")["spec"]["clusterIP"],
            "10.100.0.53"
        );
        let corefile = find(&objs, "ConfigMap", "coredns")["data"]["Corefile"]
            .as_str()
            .unwrap();
        assert!(corefile.contains("kubernetes corp.internal in-addr.arpa"));
        // Without dnsIP: the 10th address of the service CIDR.
        let inv = inventory("  network: {serviceCIDR: 10.100.0.0/16}\n");
        assert_eq!(
            find(&render(&inv, COREDNS), "Service", "kube-dns")["spec"]["clusterIP"],
            "10.100.0.10"
        );
    }

    #[test]
    fn metrics_server_verifies_kubelets_and_takes_the_image_override() {
        let objs = render(&inventory(""), METRICS_SERVER);
        assert_eq!(objs.len(), 9);
        for o in &objs {
            if !o.kind().starts_with("Cluster") && o.kind() != "APIService" {
                assert_eq!(o.namespace(), Some("kube-system"), "{}", o.describe());
            }
        }
        let api = find(&objs, "APIService", "v1beta1.metrics.k8s.io");
        assert_eq!(api["spec"]["service"]["name"], "metrics-server");
        let c = &find(&objs, "Deployment", "metrics-server")["spec"]["template"]["spec"]["containers"]
            [0];
        assert_eq!(
            c["image"],
            "k8s.gcr.io/metrics-server/metrics-server:v0.5.2"
        );
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--kubelet-preferred-address-types=InternalIP"));
        assert!(args.contains(
            &"--kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
        ));
        assert!(!args.iter().any(|a| a.contains("insecure")));

        let inv = inventory(
            "  addons:\n    metricsServer: {image: registry.example.cn/google_containers/metrics-server:v0.5.2}\n",
        );
        let objs = render(&inv, METRICS_SERVER);
        assert_eq!(
            find(&objs, "Deployment", "metrics-server")["spec"]["template"]["spec"]["containers"]
                [0]["image"],
            "registry.example.cn/google_containers/metrics-server:v0.5.2"
        );
    }
}
