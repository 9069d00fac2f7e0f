//! kubelet: the node agent on every control-plane and worker host, with the client and serving
//! certificates the pki phase delivered, registering with the inventory's taints (control-plane
//! nodes tainted by default). Gate: the node is `Ready` in the API. The cluster step then puts
//! the inventory's labels (and kubeadm's control-plane role labels, which a kubelet may not set
//! on itself) on each node, and with host-routes its pod CIDR.

use crate::engine::MANIFESTS;
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::engine::{Action, Cmd, Context, Executor, Order, Phase, PhasePlan, Script, Shell};
use crate::inventory::{Cni, Host, Inventory, Role};
use crate::render::{host_vars, node_taints};

pub struct Kubelet;

/// The labels clusterctl keeps on `h`'s node: the inventory's, plus the control-plane role
/// labels of the version (or the etcd role label on an etcd-only node).
pub fn node_labels(inv: &Inventory, h: &Host) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = h
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if h.has(Role::ControlPlane) {
        for k in inv.kube_version().control_plane_labels() {
            l.entry(k.to_string()).or_default();
        }
    }
    if inv.is_etcd_only_node(h) {
        l.entry(crate::render::ETCD_NODE_LABEL.to_string())
            .or_default();
    }
    l
}

/// `key[=value]:Effect` as the API's taint object.
fn taint_json(t: &str) -> Value {
    let (kv, effect) = t.rsplit_once(':').unwrap_or((t, "NoSchedule"));
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    let mut o = json!({"key": key, "effect": effect});
    if !value.is_empty() {
        o["value"] = json!(value);
    }
    o
}

/// The merge patch that brings `node` (the API object) to the wanted labels, taints and pod
/// CIDR, or None when it has them. Labels and taints clusterctl does not manage are kept; a
/// pod CIDR is only set on a node that has none (the API refuses to change it).
pub fn node_patch(
    node: &Value,
    labels: &BTreeMap<String, String>,
    taints: &[String],
    pod_cidr: Option<&str>,
) -> Option<Value> {
    let mut patch = json!({});
    let have = &node["metadata"]["labels"];
    let missing: serde_json::Map<String, Value> = labels
        .iter()
        .filter(|(k, v)| have[k.as_str()].as_str() != Some(v.as_str()))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    if !missing.is_empty() {
        patch["metadata"] = json!({"labels": missing});
    }
    let current: Vec<Value> = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut merged = current.clone();
    for t in taints.iter().map(|t| taint_json(t)) {
        let same = |c: &Value| c["key"] == t["key"] && c["effect"] == t["effect"];
        match merged.iter_mut().find(|c| same(c)) {
            Some(c) if c.get("value") != t.get("value") => *c = t.clone(),
            Some(_) => {}
            None => merged.push(t),
        }
    }
    if merged != current {
        patch["spec"] = json!({"taints": merged});
    }
    if let Some(c) = pod_cidr
        && node["spec"]["podCIDR"].as_str().unwrap_or("").is_empty()
    {
        let spec = patch
            .as_object_mut()
            .expect("an object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        spec["podCIDR"] = json!(c);
        spec["podCIDRs"] = json!([c]);
    }
    (patch != json!({})).then_some(patch)
}

/// `h1: protectKernelDefaults off: <why>` (plans and the run's report).
fn protect_line(host: &str, d: &super::kernel::Decision) -> String {
    format!(
        "{host}: protectKernelDefaults {}: {}",
        if d.on { "on" } else { "off" },
        d.why
    )
}

/// Applies `patch` (the node's missing pod CIDR, from [`node_patch`]) once `name`'s CSINode
/// exists; does nothing while it does not yet.
///
/// Measured in the lab (v1.20.2): a fresh kubelet registers its node with Ready=False
/// ("CSINode is not yet initialized": it creates its CSINode object right after the Node),
/// is able to be Ready within a second, but posts its status only every
/// nodeStatusUpdateFrequency (10 s). Its fastStatusUpdateOnce polls its Node every 100 ms
/// until a pod CIDR appears, then syncs its runtime state and posts its status once: a pod
/// CIDR set after the CSINode exists makes that post Ready. Set earlier (e.g. by the
/// controller-manager at registration), the post still says NotReady and the node waits for
/// the tick; so the CIDR waits for the CSINode, and for the kubelet's sync loop
/// ([`SYNC_LOOP_SEEN`]). The steady state is untouched: the status frequency stays 10 s and
/// the node gets the same CIDR the cluster step would give it.
async fn early_pod_cidr(
    api: &crate::kube::Client,
    name: &str,
    patch: &Value,
) -> anyhow::Result<()> {
    if api
        .get_opt(&format!("/apis/storage.k8s.io/v1/csinodes/{name}"))
        .await?
        .is_none()
    {
        return Ok(());
    }
    api.merge_patch(&node_path(name), patch)
        .await
        .with_context(|| format!("setting the pod CIDR of node {name}"))?;
    tracing::debug!(
        node = name,
        %patch,
        "pod CIDR set: the kubelet posts its status now"
    );
    Ok(())
}

/// Exits 0 once the running kubelet has logged `Starting kubelet main sync loop` (waiting up
/// to 5 s for it), 1 when it has not yet, 3 when its journal cannot tell (no invocation, or
/// nothing logged by it: its log goes elsewhere).
///
/// Why: the kubelet registers its node, then sets up its iptables chains, then starts PLEG and
/// its sync loop. Until PLEG's first relist its Ready condition says "PLEG is not healthy:
/// pleg has yet to be successful". Seen in the lab (5 hosts, 1 run in 3 lately): the pod CIDR
/// set 5 ms before h3's sync loop started, so the one fast status post said NotReady and the
/// node waited 10 s more for its next tick. PLEG relists as the loop starts, and the post
/// comes at least one 100 ms poll of the kubelet after the CIDR: set after this line, the post
/// finds PLEG healthy. One `journalctl -f` per call, on the host (no polling of the journal).
const SYNC_LOOP_SEEN: &str = r#"inv=$(systemctl show -p InvocationID --value kubelet.service)
[ -n "$inv" ] || exit 3
[ -n "$(journalctl -q -n 1 -o cat _SYSTEMD_INVOCATION_ID="$inv")" ] || exit 3
coproc J { exec timeout 5 journalctl -q -f -n all -o cat _SYSTEMD_INVOCATION_ID="$inv"; }
grep -q -m1 -F 'Starting kubelet main sync loop' <&"${J[0]}"; rc=$?
kill "$J_PID" 2>/dev/null; wait "$J_PID" 2>/dev/null
exit $rc"#;

/// Whether `h`'s kubelet starts with the EC2 metadata lookup off: kubelets before 1.27 carry
/// an ECR credential provider that asks 169.254.169.254 at start; off EC2 nothing answers
/// and the kubelet waits out the SDK's retries (6.3 s in the lab) before it registers. On
/// an EC2 instance, or when the host was not read in this run (`plan`), the lookup stays, so
/// ECR pulls with the instance's role keep working.
fn ec2_metadata_off(ctx: &Context, h: &Host) -> bool {
    ctx.inv().kube_version().minor < 27 && super::kernel::on_ec2(ctx, &h.name) == Some(false)
}

/// The facts [`host_actions`] renders from (the kernel read-back: EC2 or not, what
/// `protectKernelDefaults: auto` decides) for `hosts` this run has not read: every phase that
/// writes the kubelet's unit gathers them, so a run without preflight and prepare
/// (`--only-phase kubelet`) renders the same unit as `init` and restarts nothing.
pub fn gather_for<'a>(
    ctx: &'a Context,
    exec: &'a dyn Executor,
    hosts: Vec<&'a Host>,
) -> BoxFuture<'a, anyhow::Result<()>> {
    Box::pin(async move { super::kernel::read_missing(ctx, exec, &hosts).await })
}

fn node_path(name: &str) -> String {
    format!("/api/v1/nodes/{name}")
}

/// Where a TLS-bootstrap worker's kubelet finds its bootstrap kubeconfig.
pub const BOOTSTRAP_KUBECONFIG: &str = "/etc/kubernetes/bootstrap-kubelet.conf";
/// How long a bootstrap token is valid: the join needs it for seconds (the kubelet's first
/// client CSR); a killed join re-run later makes a new one. The controller-manager's
/// tokencleaner deletes it once expired.
const BOOTSTRAP_TTL: Duration = Duration::from_secs(30 * 60);
/// The kubelet's current serving pair (a symlink it moves on each rotation).
const KUBELET_SERVER_PEM: &str = "/var/lib/kubelet/pki/kubelet-server-current.pem";

/// Before a TLS-bootstrap worker's kubelet starts: unless it is a node already (its kubelet
/// then has its client certificate and rotates it), the bootstrap RBAC, a new token of short
/// TTL for it, and the bootstrap kubeconfig holding that token written to the host (mode
/// 600; no key or certificate of the operator's). The kubelet reads it only while it has no
/// valid client certificate, so nothing restarts for it.
async fn bootstrap_kubeconfig(
    ctx: &Context,
    host: &Host,
    exec: &dyn Executor,
) -> anyhow::Result<Vec<String>> {
    let api = ctx.kube_admin()?;
    if api.get_opt(&node_path(&host.name)).await?.is_some() {
        return Ok(vec![format!(
            "{}: a node already: its kubelet rotates its own certificates, no bootstrap token",
            host.name
        )]);
    }
    if exec.is_dry_run() {
        return Ok(vec![format!(
            "{}: would create a bootstrap token (TTL {} min) and write {BOOTSTRAP_KUBECONFIG}",
            host.name,
            BOOTSTRAP_TTL.as_secs() / 60
        )]);
    }
    api.apply_manifest(crate::kube::bootstrap::RBAC, "bootstrap RBAC", false)
        .await
        .context("applying the TLS bootstrap RBAC")?;
    let token = api
        .create_bootstrap_token(&host.name, BOOTSTRAP_TTL)
        .await?;
    let ca_path = ctx
        .state
        .pki()
        .join(crate::pki::spec::crt_path(std::path::Path::new(
            crate::pki::spec::Ca::Cluster.base(),
        )));
    let ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading {}", ca_path.display()))?;
    let (server, port) = ctx.inv().apiserver_endpoint_for(host);
    let kc = crate::pki::kubeconfig::Kubeconfig::bootstrap(
        ctx.inv().name(),
        &crate::inventory::Inventory::url(&server, port),
        &ca,
        &token.value(),
    )
    .to_yaml()?;
    let bytes = kc.into_bytes();
    let sha = crate::hashing::sha256_hex(&bytes);
    exec.put(
        host,
        BOOTSTRAP_KUBECONFIG,
        &crate::engine::executor::Blob::Bytes(bytes),
        &sha,
        0o600,
    )
    .await
    .with_context(|| format!("writing {BOOTSTRAP_KUBECONFIG}"))?;
    Ok(vec![format!(
        "{}: bootstrap token {} (TTL {} min) in {BOOTSTRAP_KUBECONFIG}",
        host.name,
        token.id,
        BOOTSTRAP_TTL.as_secs() / 60
    )])
}

/// After a TLS-bootstrap worker is Ready: its kubelet's serving-certificate request checked
/// against the inventory (name and address) and approved, then issued. A request that does
/// not match is left pending and fails the phase: clusterctl approves nothing unexpected.
async fn serving_certificate(
    ctx: &Context,
    host: &Host,
    exec: &dyn Executor,
) -> anyhow::Result<Vec<String>> {
    use crate::kube::bootstrap::{CsrState, SERVING_SIGNER, check_serving_csr, csr_state};
    if exec.is_dry_run() {
        return Ok(vec![]);
    }
    let api = ctx.kube_admin()?;
    let user = format!("system:node:{}", host.name);
    let ips = [host.ip()];
    let approved = std::sync::Mutex::new(Vec::<String>::new());
    let has_cert = Shell::from(Cmd::new("test").arg("-e").arg(KUBELET_SERVER_PEM));
    let refused: Option<String> = crate::kube::wait_until(
        &format!("{}: the kubelet's serving certificate", host.name),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let csrs = api.csrs_of(SERVING_SIGNER, &user).await?;
            let mut issued = false;
            for c in &csrs {
                let name = c["metadata"]["name"].as_str().unwrap_or_default();
                match csr_state(c) {
                    CsrState::Pending => match check_serving_csr(c, &host.name, &ips) {
                        Ok(what) => {
                            api.approve_csr(c, &format!("clusterctl: matches the inventory: {what}"))
                                .await?;
                            approved
                                .lock()
                                .unwrap()
                                .push(format!("{}: approved serving CSR {name}: {what}", host.name));
                        }
                        // Nothing to wait out (an error would count as pending): stop
                        // here and say why.
                        Err(why) => {
                            return Ok(crate::kube::Wait::Done(Some(format!(
                                "REFUSED: serving CSR {name} of {} does not match the inventory: {why}; left pending (`kubectl certificate deny {name}` rejects it)",
                                host.name
                            ))));
                        }
                    },
                    CsrState::Issued => issued = true,
                    _ => {}
                }
            }
            // CSRs are garbage-collected after an hour: on a later run the certificate on
            // the host is what says it was issued.
            if !issued && csrs.is_empty() {
                issued = exec.query(host, &has_cert).await?.status == 0;
            }
            Ok(if issued {
                crate::kube::Wait::Done(None)
            } else {
                crate::kube::Wait::Pending(format!("{} serving CSR(s), none issued yet", csrs.len()))
            })
        },
    )
    .await?;
    if let Some(refused) = refused {
        anyhow::bail!("{refused}");
    }
    Ok(approved.into_inner().unwrap())
}

/// The kubelet on `h`: its config, its unit, running. The kubelet phase plans this on every
/// node; in static-pods mode the etcd and control-plane phases plan the same actions first on
/// their hosts (the kubelet runs their static pods from /etc/kubernetes/manifests), so the
/// kubelet phase finds nothing left to do there but its gate.
pub fn host_actions(ctx: &Context, h: &Host) -> anyhow::Result<Vec<Action>> {
    let mut vars = host_vars(ctx.inv(), h);
    vars.insert(
        "protect_kernel_defaults",
        &super::kernel::decision(ctx, &h.name).on,
    );
    vars.insert("ec2_metadata_off", &ec2_metadata_off(ctx, h));
    vars.insert("kubelet_bootstrap", &ctx.inv().kubelet_bootstraps(h));
    let unit = "kubelet.service";
    Ok(vec![
        Action::dir("/var/lib/kubelet", 0o700),
        Action::dir(MANIFESTS, 0o755),
        Action::rendered(
            "/var/lib/kubelet/config.yaml",
            0o644,
            "kubelet/kubelet-config.yaml",
            ctx.render.render("kubelet/kubelet-config.yaml", &vars)?,
            &[unit],
        ),
        Action::rendered(
            format!("/etc/systemd/system/{unit}"),
            0o644,
            "kubelet/kubelet.service",
            ctx.render.render("kubelet/kubelet.service", &vars)?,
            &[unit],
        ),
        Action::service(unit),
    ])
}

impl Phase for Kubelet {
    fn name(&self) -> &'static str {
        "kubelet"
    }
    fn summary(&self) -> &'static str {
        "kubelet on every node; gate: the node is Ready"
    }
    fn gather<'a>(
        &'a self,
        ctx: &'a Context,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        gather_for(ctx, exec, ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)))
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Rolling);
        for h in ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)) {
            plan.host(h, host_actions(ctx, h)?);
            plan.notes.push(protect_line(
                &h.name,
                &super::kernel::decision(ctx, &h.name),
            ));
            if inv.kubelet_bootstraps(h) {
                plan.local.push(format!(
                    "{}: TLS bootstrap unless it is a node already: bootstrap RBAC, a token of {} min for it, {BOOTSTRAP_KUBECONFIG} before its kubelet starts; its serving CSR checked against the inventory (name {}, address {}) and only then approved",
                    h.name,
                    BOOTSTRAP_TTL.as_secs() / 60,
                    h.name,
                    h.ip()
                ));
            }
            let labels = node_labels(inv, h);
            if !labels.is_empty() {
                plan.local.push(format!(
                    "label node {}: {}",
                    h.name,
                    labels.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(plan)
    }
    /// Says, per node, whether its kubelet runs with `protectKernelDefaults` and why; gives
    /// a TLS-bootstrap worker that is no node yet its bootstrap kubeconfig.
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let d = super::kernel::decision(ctx, &host.name);
            let mut lines = vec![protect_line(&host.name, &d)];
            if ctx.inv().kubelet_bootstraps(host) {
                lines.extend(bootstrap_kubeconfig(ctx, host, exec).await?);
            }
            Ok(lines)
        })
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let api = ctx.kube_admin()?;
            let path = node_path(&host.name);
            // host-routes: the node's pod CIDR is clusterctl's to set. Set as soon as the
            // kubelet can be Ready, it makes the kubelet post its status at once (its
            // one-shot fast update fires when a pod CIDR appears) instead of at its next
            // 10 s status tick, which is what a fresh node waited for (see early_pod_cidr).
            let cidr = if ctx.inv().spec.network.cni == Cni::HostRoutes {
                super::network::pod_cidrs(ctx)?
                    .get(host.name.as_str())
                    .map(|c| c.to_string())
            } else {
                None
            };
            use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
            let sync_loop = AtomicBool::new(false);
            crate::kube::wait_until(
                &format!("node {} Ready", host.name),
                Duration::from_secs(120),
                Duration::from_millis(200),
                || async {
                    let node = api.get(&path).await?;
                    let Some(why) = crate::kube::nodes::Node::from_json(&node)?.not_ready_because
                    else {
                        return Ok(crate::kube::Wait::Done(()));
                    };
                    // The CIDR still to set: none once the node has it (a re-run, or this
                    // gate set it at an earlier poll), so a node that needs nothing reads no
                    // journal, which may no longer hold a long-running kubelet's line.
                    let Some(patch) = cidr
                        .as_deref()
                        .and_then(|c| node_patch(&node, &BTreeMap::new(), &[], Some(c)))
                    else {
                        return Ok(crate::kube::Wait::Pending(format!("not Ready ({why})")));
                    };
                    if !sync_loop.load(Relaxed) {
                        let o = exec.query(host, &Script::bash(SYNC_LOOP_SEEN).into()).await?;
                        match o.status {
                            0 => sync_loop.store(true, Relaxed),
                            1 => return Ok(crate::kube::Wait::Pending(
                                "kubelet not yet in its sync loop".into(),
                            )),
                            _ => {
                                tracing::debug!(
                                    node = host.name.as_str(),
                                    "the kubelet's journal does not say when its sync loop starts: the pod CIDR waits for the CSINode only"
                                );
                                sync_loop.store(true, Relaxed);
                            }
                        }
                    }
                    early_pod_cidr(&api, &host.name, &patch).await?;
                    Ok(crate::kube::Wait::Pending(format!("not Ready ({why})")))
                },
            )
            .await
            .context("see `journalctl -u kubelet` on the node")?;
            if ctx.inv().kubelet_bootstraps(host) {
                return serving_certificate(ctx, host, exec).await;
            }
            Ok(vec![])
        })
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let inv = ctx.inv();
            let cidrs = if inv.spec.network.cni == Cni::HostRoutes {
                super::network::pod_cidrs(ctx)?
            } else {
                BTreeMap::new()
            };
            let api = ctx.kube_admin()?;
            let mut report = Vec::new();
            for h in ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)) {
                let node = match api.get(&node_path(&h.name)).await {
                    Ok(n) => n,
                    Err(e) if dry_run => {
                        report.push(format!(
                            "{}: would label and taint the node ({e:#})",
                            h.name
                        ));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let cidr = cidrs.get(h.name.as_str()).map(|c| c.to_string());
                let Some(patch) = node_patch(
                    &node,
                    &node_labels(inv, h),
                    &node_taints(inv, h),
                    cidr.as_deref(),
                ) else {
                    continue;
                };
                if dry_run {
                    report.push(format!("{}: would patch the node: {patch}", h.name));
                    continue;
                }
                api.merge_patch(&node_path(&h.name), &patch)
                    .await
                    .with_context(|| format!("patching node {}", h.name))?;
                report.push(format!(
                    "{}: node labels/taints/podCIDR set: {patch}",
                    h.name
                ));
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kubelet.certificates: bootstrap`: the worker's kubelet requests and rotates both its
    /// certificates (no pushed files named), kube-proxy runs on the kubelet's client
    /// certificate; the control-plane node keeps its pushed ones.
    #[test]
    fn a_bootstrap_worker_runs_on_requested_and_rotated_certificates() {
        let d = tempfile::tempdir().unwrap();
        let c = crate::engine::guarded_fake::test_context(
            "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  kubelet: {certificates: bootstrap}
  hosts:
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: w1, address: 10.0.0.2, roles: [worker]}
",
            d.path(),
            &[],
            Default::default(),
        );
        let plan = |phase: &str| {
            crate::phases::registry()
                .into_iter()
                .find(|p| p.name() == phase)
                .unwrap()
                .plan(&c)
                .unwrap()
        };
        let file = |plan: &PhasePlan, host: &str, path: &str| -> Option<String> {
            plan.hosts
                .iter()
                .filter(|h| h.host == host)
                .flat_map(|h| &h.actions)
                .find_map(|a| match a {
                    Action::File {
                        path: p,
                        source: crate::engine::Source::Rendered { content, .. },
                        ..
                    } if p == path => Some(String::from_utf8_lossy(content).into_owned()),
                    _ => None,
                })
        };
        let k = plan("kubelet");
        let cfg = |h: &str| file(&k, h, "/var/lib/kubelet/config.yaml").unwrap();
        let unit = |h: &str| file(&k, h, "/etc/systemd/system/kubelet.service").unwrap();
        assert!(
            cfg("w1").contains("\nrotateCertificates: true\nserverTLSBootstrap: true\n")
                && !cfg("w1").contains("tlsCertFile"),
            "{}",
            cfg("w1")
        );
        assert!(
            unit("w1").contains("--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf")
        );
        assert!(
            cfg("cp1").contains("tlsCertFile: /var/lib/kubelet/pki/kubelet.crt")
                && cfg("cp1").contains("serverTLSBootstrap: false")
        );
        assert!(!unit("cp1").contains("bootstrap"));
        let p = plan("kube-proxy");
        let kc = file(&p, "w1", "/etc/kubernetes/kube-proxy.conf").unwrap();
        let (host, port) = c.inv().apiserver_endpoint_for(c.inv().host("w1").unwrap());
        assert!(
            kc.contains("client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem")
                && kc.contains(&crate::inventory::Inventory::url(host, port)),
            "{kc}"
        );
        assert!(file(&p, "cp1", "/etc/kubernetes/kube-proxy.conf").is_none());
    }

    #[test]
    fn patch_adds_only_what_is_missing_and_keeps_the_rest() {
        let node = json!({
            "metadata": {"labels": {"kubernetes.io/hostname": "w1", "disk": "hdd"}},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}
        });
        let mut labels = BTreeMap::new();
        labels.insert("disk".to_string(), "ssd".to_string());
        let p = node_patch(
            &node,
            &labels,
            &["dedicated=infra:NoSchedule".to_string()],
            Some("10.244.3.0/24"),
        )
        .unwrap();
        assert_eq!(p["metadata"]["labels"], json!({"disk": "ssd"}));
        assert_eq!(
            p["spec"]["taints"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}
            ])
        );
        assert_eq!(p["spec"]["podCIDR"], "10.244.3.0/24");
        assert_eq!(p["spec"]["podCIDRs"], json!(["10.244.3.0/24"]));
    }

    #[test]
    fn no_patch_when_the_node_has_everything() {
        let node = json!({
            "metadata": {"labels": {"node-role.kubernetes.io/master": ""}},
            "spec": {"podCIDR": "10.244.0.0/24",
                     "taints": [{"key": "node-role.kubernetes.io/master", "effect": "NoSchedule"}]}
        });
        let mut labels = BTreeMap::new();
        labels.insert("node-role.kubernetes.io/master".to_string(), String::new());
        assert!(
            node_patch(
                &node,
                &labels,
                &["node-role.kubernetes.io/master:NoSchedule".to_string()],
                Some("10.244.9.0/24"), // a set podCIDR is never changed
            )
            .is_none()
        );
    }

    #[test]
    fn an_etcd_only_host_is_a_tainted_etcd_node_in_static_pods_mode_only() {
        let text = |mode: &str| {
            format!(
                "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {{name: t}}
spec:
  kubernetesVersion: v1.20.2
  controlPlane: {{mode: {mode}}}
  hosts:
    - {{name: cp1, address: 10.77.0.11, roles: [control-plane]}}
    - {{name: e1, address: 10.77.0.21, roles: [etcd]}}
    - {{name: w1, address: 10.77.0.31, roles: [worker]}}
"
            )
        };
        let load = |mode: &str| {
            crate::inventory::load_str(&text(mode), std::path::Path::new("t.yaml"))
                .unwrap()
                .inventory
        };
        let inv = load("static-pods");
        let e1 = inv.host("e1").unwrap();
        let names: Vec<&str> = inv.node_hosts().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["cp1", "e1", "w1"]);
        assert_eq!(
            node_labels(&inv, e1).keys().collect::<Vec<_>>(),
            ["node-role.kubernetes.io/etcd"]
        );
        assert_eq!(
            node_taints(&inv, e1),
            ["node-role.kubernetes.io/etcd:NoSchedule"]
        );
        assert_eq!(
            crate::phases::prepare::bundle_roles(&inv, e1),
            [Role::Etcd, Role::Lb, Role::Worker],
            "a node's bundle items, and (local-proxy, the default) its haproxy to reach the API"
        );
        assert!(node_taints(&inv, inv.host("w1").unwrap()).is_empty());
        let inv = load("systemd");
        let names: Vec<&str> = inv.node_hosts().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["cp1", "w1"]);
        assert_eq!(
            crate::phases::prepare::bundle_roles(&inv, inv.host("e1").unwrap()),
            [Role::Etcd]
        );
    }
}
