//! The `addons` phase and the kube client against a real kube-apiserver v1.20.2 and etcd 3.4,
//! both on 127.0.0.1 (random free ports, a temporary directory), with certificates from the
//! crate's own PKI module: dry run, apply, re-apply (all unchanged), a changed inventory, a
//! CRD and its custom resource in one manifest, errors naming their document, node helpers,
//! and a wait that times out. Every process started is killed when the test ends, even on
//! failure (`Procs`'s Drop).
//!
//! The inventory cannot name 127.0.0.1 as a host's address (validation refuses loopback), so
//! the host gets a documentation address (192.0.2.10, only advertised) and the cluster is
//! reached as an `external` endpoint 127.0.0.1:<port>, which the apiserver certificate covers.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterctl::engine::{BundleRef, Context, Phase};
use clusterctl::inventory;
use clusterctl::kube::{self, Change};
use clusterctl::phases::addons::Addons;
use clusterctl::pki::generate::{self, Layout, Settings};
use clusterctl::render::Renderer;
use clusterctl::state::StateDir;
use common::root;
use serde_json::json;

const HOST_ADDR: &str = "192.0.2.10";

/// Processes of the test, killed and reaped on drop (a panic included); their logs are
/// printed then if the test is failing.
struct Procs(Vec<(String, Child, PathBuf)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child, log) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                // The temporary directory goes away: keep the whole log for a post-mortem.
                let kept = std::env::temp_dir().join(format!("kube_apply-{name}.log"));
                let _ = std::fs::write(&kept, &text);
                eprintln!("--- {name}'s whole log: {}", kept.display());
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- last lines of {name} ({}):", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a lab script that prints a path.
fn script_path(script: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("tests/lab").join(script))
        .env("CLUSTERCTL", env!("CARGO_BIN_EXE_clusterctl"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn spawn(procs: &mut Procs, name: &str, dir: &Path, bin: &Path, args: &[String]) {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    procs.0.push((name.to_string(), child, log));
}

fn inventory_text(api_port: u16, replicas: u32) -> String {
    format!(
        r#"apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata:
  name: addons
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - name: cp1
      address: {HOST_ADDR}
      roles: [etcd, control-plane, worker]
  network:
    serviceCIDR: 10.96.0.0/16
    dnsIP: 10.96.0.53
    clusterDomain: lab.internal
  ha:
    mode: external
    externalEndpoint: 127.0.0.1:{api_port}
  controlPlane:
    apiserverPort: {api_port}
  addons:
    coredns:
      replicas: {replicas}
      image: registry.example.cn/google_containers/coredns:1.7.0
    extraManifests: [extra.yaml]
"#
    )
}

const EXTRA: &str = r#"# a namespace and what lives in it, in the "wrong" order
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  color: blue
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
# no `protocol` on the port: 1.20's server-side apply refuses that unless clusterctl adds it
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: 8080
"#;

fn context(dir: &Path) -> Context {
    let loaded = inventory::load(&dir.join("inventory.yaml")).unwrap_or_else(|d| panic!("{d}"));
    let state = StateDir::new(dir, loaded.inventory.name());
    Context {
        loaded,
        state,
        render: Renderer::new(None).unwrap(),
        host_filter: vec![],
        bundle: None,
        options: Default::default(),
        facts: Default::default(),
    }
}

async fn apply(ctx: &Context, dry_run: bool) -> Vec<String> {
    Addons
        .apply_cluster(ctx, dry_run)
        .await
        .unwrap_or_else(|e| panic!("apply_cluster(dry_run={dry_run}): {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lab: run by tests/run.sh (needs the v1.20.2 build and etcd, cached under /var/cache/clusterctl)"]
async fn addons_apply_to_a_real_apiserver() {
    let started = Instant::now();
    let kube_bin = script_path("build-kubernetes.sh");
    let etcd_bin = script_path("etcd-path.sh");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut procs = Procs(Vec::new());

    let api_port = free_port();
    let (etcd_port, peer_port) = (free_port(), free_port());
    std::fs::write(dir.join("inventory.yaml"), inventory_text(api_port, 3)).unwrap();
    std::fs::write(dir.join("extra.yaml"), EXTRA).unwrap();

    // Certificates for the one-host inventory, as `clusterctl certs generate` writes them.
    let ctx = context(dir);
    let inv = ctx.inv().clone();
    let settings = Settings::from_inventory(&inv, |p| dir.join(p)).unwrap();
    let layout = Layout::new(&ctx.state);
    generate::generate(&inv, &settings, &layout).unwrap();
    let pki = |rel: &str| layout.pki.join(rel).display().to_string();

    let etcd_url = format!("https://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    spawn(
        &mut procs,
        "etcd",
        dir,
        &etcd_bin,
        &[
            "--name=cp1".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=cp1={peer_url}"),
            format!("--cert-file={}", pki("nodes/cp1/etcd/server.crt")),
            format!("--key-file={}", pki("nodes/cp1/etcd/server.key")),
            format!("--trusted-ca-file={}", pki("etcd/ca.crt")),
            "--client-cert-auth".into(),
        ],
    );
    spawn(
        &mut procs,
        "kube-apiserver",
        dir,
        &kube_bin.join("kube-apiserver"),
        &[
            format!("--advertise-address={HOST_ADDR}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            "--insecure-port=0".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--tls-cert-file={}", pki("nodes/cp1/apiserver.crt")),
            format!("--tls-private-key-file={}", pki("nodes/cp1/apiserver.key")),
            format!("--etcd-servers={etcd_url}"),
            format!("--etcd-cafile={}", pki("etcd/ca.crt")),
            format!("--etcd-certfile={}", pki("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", pki("apiserver-etcd-client.key")),
            format!("--proxy-client-cert-file={}", pki("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", pki("front-proxy-client.key")),
            format!(
                "--requestheader-client-ca-file={}",
                pki("front-proxy-ca.crt")
            ),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--service-account-issuer=https://kubernetes.default.svc.lab.internal".into(),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        ],
    );

    let client = ctx.kube_admin().unwrap();
    kube::wait_until(
        "kube-apiserver ready with kube-system",
        Duration::from_secs(45),
        Duration::from_millis(300),
        || async {
            client.get("/readyz").await?;
            Ok(
                match client.get_opt("/api/v1/namespaces/kube-system").await? {
                    Some(_) => kube::Wait::Done(()),
                    None => kube::Wait::Pending("no kube-system yet".into()),
                },
            )
        },
    )
    .await
    .unwrap();
    eprintln!(
        "apiserver ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // 1. A dry run on the empty cluster: everything would be created, nothing is.
    let lines = apply(&ctx, true).await;
    assert_eq!(
        lines[0],
        "coredns (dry run): 6 objects (6 created, 0 changed, 0 unchanged)"
    );
    assert!(lines.contains(&"  would create Deployment kube-system/coredns".to_string()));
    assert!(
        lines.contains(
            &"  would create ConfigMap shop/settings (its namespace would be created first)"
                .to_string()
        ),
        "{lines:#?}"
    );
    assert!(
        lines.contains(
            &"metrics-server (dry run): 8 objects (8 created, 0 changed, 0 unchanged)".to_string()
        ),
        "{lines:#?}"
    );
    let deploy = "/apis/apps/v1/namespaces/kube-system/deployments/coredns";
    assert!(
        client.get_opt(deploy).await.unwrap().is_none(),
        "a dry run created it"
    );
    assert!(
        lines.contains(
            &"  would register APIService v1beta1.metrics.k8s.io once Deployment kube-system/metrics-server is available".to_string()
        ),
        "{lines:#?}"
    );

    // 2. Apply: created, with the inventory's settings.
    // No controller-manager runs here, so no Deployment becomes available: metrics-server's
    // APIService is held back (registered, nothing would serve it and discovery would break).
    let lines = apply(&ctx, false).await;
    assert_eq!(
        lines[..5],
        [
            "coredns: 6 objects (6 created, 0 changed, 0 unchanged)",
            "metrics-server: 8 objects (8 created, 0 changed, 0 unchanged)",
            "extra manifest extra.yaml: 3 objects (3 created, 0 changed, 0 unchanged)",
            "coredns: not waiting for pods: image registry.example.cn/google_containers/coredns:1.7.0 is not in the bundle (spec.bundle is not set)",
            "metrics-server: not waiting for pods: image k8s.gcr.io/metrics-server/metrics-server:v0.5.2 is not in the bundle (spec.bundle is not set)",
        ],
        "{lines:#?}"
    );
    assert_eq!(lines.len(), 7, "{lines:#?}");
    assert!(
        lines[5].starts_with(
            "add-on coredns: NOT running yet (Deployment kube-system/coredns 0/3 available"
        ),
        "{}",
        lines[5]
    );
    assert!(
        lines[6].starts_with("add-on metrics-server: NOT running yet (")
            && lines[6].ends_with("; APIService v1beta1.metrics.k8s.io is not registered until then (a re-run registers it)"),
        "{}",
        lines[6]
    );
    let apiservice = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io";
    assert!(client.get_opt(apiservice).await.unwrap().is_none());
    let d = client.get(deploy).await.unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.cn/google_containers/coredns:1.7.0"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(
        d["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "clusterctl" && m["operation"] == "Apply"),
        "applied server-side as clusterctl"
    );
    let svc = client
        .get("/api/v1/namespaces/kube-system/services/kube-dns")
        .await
        .unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.53");
    let corefile = client
        .get("/api/v1/namespaces/kube-system/configmaps/coredns")
        .await
        .unwrap()["data"]["Corefile"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        corefile.contains("kubernetes lab.internal in-addr.arpa ip6.arpa"),
        "{corefile}"
    );
    let ms = client
        .get("/apis/apps/v1/namespaces/kube-system/deployments/metrics-server")
        .await
        .unwrap();
    assert_eq!(
        ms["spec"]["template"]["spec"]["containers"][0]["image"],
        "k8s.gcr.io/metrics-server/metrics-server:v0.5.2"
    );

    let cm = client
        .get("/api/v1/namespaces/shop/configmaps/settings")
        .await
        .unwrap();
    assert_eq!(cm["data"]["color"], "blue");
    let web = client
        .get("/api/v1/namespaces/shop/services/web")
        .await
        .unwrap();
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");

    // An older clusterctl registered the APIService unconditionally: nothing serves it.
    client
        .apply_manifest(
            "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1beta1.metrics.k8s.io}\nspec: {service: {name: metrics-server, namespace: kube-system}, group: metrics.k8s.io, version: v1beta1, insecureSkipTLSVerify: true, groupPriorityMinimum: 100, versionPriority: 100}\n",
            "old-clusterctl.yaml",
            false,
        )
        .await
        .unwrap();
    assert!(client.get_opt(apiservice).await.unwrap().is_some());

    // 3. Re-apply: nothing changes (and the stale APIService goes), and a dry run agrees.
    let lines = apply(&ctx, false).await;
    assert!(
        lines.iter().any(|l| l.starts_with(
            "metrics-server: removed APIService v1beta1.metrics.k8s.io that nothing serves ("
        )),
        "{lines:#?}"
    );
    assert!(client.get_opt(apiservice).await.unwrap().is_none());
    assert_eq!(
        &lines[..3],
        [
            "coredns: 6 objects (0 created, 0 changed, 6 unchanged)",
            "metrics-server: 8 objects (0 created, 0 changed, 8 unchanged)",
            "extra manifest extra.yaml: 3 objects (0 created, 0 changed, 3 unchanged)",
        ]
    );
    let rv = client.get(deploy).await.unwrap()["metadata"]["resourceVersion"].clone();
    let lines = apply(&ctx, true).await;
    assert_eq!(
        lines,
        [
            "coredns (dry run): 6 objects (0 created, 0 changed, 6 unchanged)",
            "metrics-server (dry run): 8 objects (0 created, 0 changed, 8 unchanged)",
            "  would register APIService v1beta1.metrics.k8s.io once Deployment kube-system/metrics-server is available",
            "extra manifest extra.yaml (dry run): 3 objects (0 created, 0 changed, 3 unchanged)",
        ]
    );

    // 4. The inventory changes: a dry run names the one object that would change, then it does.
    std::fs::write(dir.join("inventory.yaml"), inventory_text(api_port, 1)).unwrap();
    let ctx = context(dir);
    let lines = apply(&ctx, true).await;
    assert_eq!(
        &lines[..2],
        [
            "coredns (dry run): 6 objects (0 created, 1 changed, 5 unchanged)",
            "  would change Deployment kube-system/coredns",
        ]
    );
    assert_eq!(
        client.get(deploy).await.unwrap()["metadata"]["resourceVersion"],
        rv,
        "the dry run wrote nothing"
    );
    let lines = apply(&ctx, false).await;
    assert_eq!(
        lines[0],
        "coredns: 6 objects (0 created, 1 changed, 5 unchanged)"
    );
    assert_eq!(client.get(deploy).await.unwrap()["spec"]["replicas"], 1);

    // 5. A CRD and its custom resource in one manifest (the resource waits for the CRD to be
    // served); a kind nobody serves is an error naming its document.
    let crd = r#"apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;
    let applied = client
        .apply_manifest(crd, "widgets.yaml", false)
        .await
        .unwrap();
    let got: Vec<(String, Change)> = applied
        .iter()
        .map(|a| (a.object.clone(), a.change))
        .collect();
    assert_eq!(
        got,
        [
            (
                "CustomResourceDefinition widgets.example.com".to_string(),
                Change::Created
            ),
            ("Widget default/w1".to_string(), Change::Created),
        ]
    );
    let w = client
        .get("/apis/example.com/v1/namespaces/default/widgets/w1")
        .await
        .unwrap();
    assert_eq!(w["spec"]["size"], 3);
    let e = client
        .apply_manifest(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: nothing.example.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
            "gadgets.yaml",
            false,
        )
        .await
        .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.starts_with("gadgets.yaml: document 2: Gadget g: apiVersion nothing.example.com/v1 is not served by this cluster"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        client
            .apply_manifest(
                "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 70000}]}\n",
                "bad.yaml",
                false
            )
            .await
            .unwrap_err()
    );
    assert!(
        e.contains(
            "bad.yaml: document 1: Service bad: PATCH /api/v1/namespaces/default/services/bad"
        ) && e.contains("HTTP 422 (Invalid)")
            && e.contains("70000"),
        "{e}"
    );

    // 6. Node helpers on a Node object as a kubelet would register it.
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "cp1", "labels": {"kubernetes.io/hostname": "cp1", "old": "x"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": HOST_ADDR}],
            "nodeInfo": {"kubeletVersion": "v1.20.2", "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64"}
        }
    });
    client
        .request(
            reqwest::Method::POST,
            "/api/v1/nodes",
            Some(("application/json", serde_json::to_vec(&node).unwrap())),
        )
        .await
        .unwrap();
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].ready, "{:?}", nodes[0]);
    assert_eq!(nodes[0].kubelet_version, "v1.20.2");
    assert_eq!(nodes[0].internal_ip.as_deref(), Some(HOST_ADDR));
    let patch: BTreeMap<String, Option<String>> = [
        (
            "node-role.kubernetes.io/master".to_string(),
            Some(String::new()),
        ),
        ("old".to_string(), None),
    ]
    .into();
    let n = client.patch_node_labels("cp1", &patch).await.unwrap();
    assert_eq!(
        n.labels
            .get("node-role.kubernetes.io/master")
            .map(String::as_str),
        Some("")
    );
    assert!(!n.labels.contains_key("old"));
    assert_eq!(n.labels["kubernetes.io/hostname"], "cp1");

    // 7. With the CoreDNS image in the bundle the phase waits, and here (no controller-manager,
    // no kubelet) the wait times out with what it saw.
    std::fs::write(
        dir.join("inventory.yaml"),
        inventory_text(api_port, 1) + "    waitTimeoutSecs: 3\n",
    )
    .unwrap();
    let mut ctx = context(dir);
    ctx.bundle = Some(BundleRef {
        path: dir.join("lab.tar.zst"),
        manifest: serde_saphyr::from_str(
            "name: lab\nversion: '1'\nitems:\n  - {name: coredns, version: 1.7.0, kind: image, url: 'file:///x', image: 'registry.example.cn/google_containers/coredns:1.7.0', roles: [worker], hashSource: test}\n",
        )
        .unwrap(),
        trust: clusterctl::bundle::Trust::UnsignedAllowed,
    });
    let e = format!("{:#}", Addons.apply_cluster(&ctx, false).await.unwrap_err());
    assert!(
        e.contains(
            "coredns: Deployment kube-system/coredns available: not done after 3 s: 0/1 available"
        ),
        "{e}"
    );

    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("done in {elapsed:.1}s");
    assert!(elapsed < 90.0, "took {elapsed:.0}s");
    drop(procs);
}
