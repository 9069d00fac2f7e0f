//! network: pod networking (`spec.network.cni`).
//!
//! `host-routes` (the default; flannel's host-gw without a daemon): clusterctl gives each node
//! a slice of the pod CIDR, recorded in `clusters/<name>/pod-cidrs.yaml` so a slice never
//! moves; each node gets a CNI `bridge` + `host-local` config for its slice and routes to every
//! other node's slice via that node's address (all nodes on one L2 segment). The kubelet phase
//! then sets each node's `spec.podCIDR` to its slice. The CNI plugins come from the bundle's
//! `cni-plugins` archive. `flannel`/`calico` get the plugins here, then their manifest — the
//! bundle's item of kind `manifest` named `flannel` or `calico`, e.g. the upstream release file
//! with its sha256 — is applied through the API with the inventory's pod CIDR set in it (its
//! images come from the bundle's image items or through the registry mirrors). `none`
//! installs nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use ipnet::IpNet;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::bundle::Kind;
use crate::engine::{Action, Context, Order, Phase, PhasePlan, Script, Shell};
use crate::inventory::{Cni, Host, Inventory};
use crate::render::host_vars;

pub struct Network;

/// The file under the state dir that records each node's pod CIDR.
pub const POD_CIDRS_FILE: &str = "pod-cidrs.yaml";

/// Gives every node in `nodes` without a slice the lowest free `/mask` of `cluster`. Slices
/// already recorded (also those of nodes that left the inventory) are kept and never reused.
pub fn allocate(
    cluster: IpNet,
    mask: u8,
    recorded: &BTreeMap<String, IpNet>,
    nodes: &[&str],
    origin: &str,
) -> anyhow::Result<BTreeMap<String, IpNet>> {
    let mut out = recorded.clone();
    for (node, net) in recorded {
        if !cluster.contains(net) || net.prefix_len() != mask {
            bail!(
                "{origin}: node {node} has pod CIDR {net}, which is not a /{mask} of spec.network.podCIDR {cluster}; \
                 the pod network of a running cluster cannot change (restore the inventory's podCIDR and nodeCIDRMaskSize)"
            );
        }
    }
    let mut free = cluster
        .subnets(mask)
        .with_context(|| format!("spec.network.podCIDR {cluster} cannot hold /{mask} slices"))?
        .filter(|s| !recorded.values().any(|r| r == s));
    for n in nodes {
        if out.contains_key(*n) {
            continue;
        }
        let Some(net) = free.next() else {
            bail!(
                "spec.network.podCIDR {cluster} has no free /{mask} left for node {n}: use a larger podCIDR or a larger nodeCIDRMaskSize"
            );
        };
        out.insert(n.to_string(), net);
    }
    Ok(out)
}

/// Every node's pod CIDR: the recorded ones plus new allocations (not yet written).
pub fn pod_cidrs(ctx: &Context) -> anyhow::Result<BTreeMap<String, IpNet>> {
    let inv = ctx.inv();
    let path = ctx.state.root.join(POD_CIDRS_FILE);
    let recorded = read_recorded(&path)?;
    let nodes: Vec<&str> = inv.node_hosts().map(|h| h.name.as_str()).collect();
    allocate(
        inv.pod_cidr(),
        inv.spec.network.node_cidr_mask_size,
        &recorded,
        &nodes,
        &path.display().to_string(),
    )
}

fn read_recorded(path: &PathBuf) -> anyhow::Result<BTreeMap<String, IpNet>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let m: BTreeMap<String, String> =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    m.into_iter()
        .map(|(k, v)| {
            let net: IpNet = v.parse().map_err(|_| {
                anyhow::anyhow!("{}: node {k}: `{v}` is not a CIDR", path.display())
            })?;
            Ok((k, net))
        })
        .collect()
}

/// Succeeds when the routes clusterctl owns (protocol 77) are exactly `routes`.
fn routes_check(routes: &[serde_json::Value]) -> Shell {
    let mut want: Vec<String> = routes
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["cidr"].as_str().unwrap_or_default(),
                r["via"].as_str().unwrap_or_default()
            )
        })
        .collect();
    want.sort();
    Script::new(r#"[ "$(ip -4 route show proto 77 | awk '{print $1" "$3}' | sort)" = "$1" ]"#)
        .arg(want.join("\n"))
        .into()
}

/// The bundle's manifest item for a CNI that comes as a manifest.
fn cni_manifest_name(cni: Cni) -> Option<&'static str> {
    match cni {
        Cni::Flannel => Some("flannel"),
        Cni::Calico => Some("calico"),
        Cni::HostRoutes | Cni::None => None,
    }
}

/// Sets the cluster's pod CIDR where the CNI's manifest keeps it: flannel's
/// `kube-flannel-cfg` ConfigMap (`net-conf.json` → `Network`), calico's `calico-node`
/// container (`CALICO_IPV4POOL_CIDR`, added when the manifest leaves it commented out).
/// Fails when the manifest has no such place (not the manifest it claims to be).
pub fn set_pod_cidr(
    cni: Cni,
    objects: &mut [crate::kube::manifest::Object],
    cidr: &str,
) -> anyhow::Result<()> {
    let mut found = false;
    for o in objects.iter_mut() {
        match cni {
            Cni::Flannel if o.kind() == "ConfigMap" && o.name() == "kube-flannel-cfg" => {
                let conf = o.value["data"]["net-conf.json"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("{}: no data.net-conf.json", o.source))?;
                let mut v: Value = serde_json::from_str(conf)
                    .with_context(|| format!("{}: net-conf.json is not JSON", o.source))?;
                v["Network"] = json!(cidr);
                o.value["data"]["net-conf.json"] =
                    json!(serde_json::to_string_pretty(&v).expect("JSON values serialize"));
                found = true;
            }
            Cni::Calico if o.kind() == "DaemonSet" && o.name() == "calico-node" => {
                let containers = o.value["spec"]["template"]["spec"]["containers"]
                    .as_array_mut()
                    .ok_or_else(|| anyhow::anyhow!("{}: no containers", o.source))?;
                for c in containers.iter_mut().filter(|c| c["name"] == "calico-node") {
                    if !c["env"].is_array() {
                        c["env"] = json!([]);
                    }
                    let env = c["env"].as_array_mut().expect("an array");
                    env.retain(|e| e["name"] != "CALICO_IPV4POOL_CIDR");
                    env.push(json!({"name": "CALICO_IPV4POOL_CIDR", "value": cidr}));
                    found = true;
                }
            }
            _ => {}
        }
    }
    if !found {
        bail!(
            "the {} manifest has no {} to set the pod CIDR in",
            cni_manifest_name(cni).unwrap_or("CNI"),
            if cni == Cni::Flannel {
                "ConfigMap kube-flannel-cfg with net-conf.json"
            } else {
                "DaemonSet calico-node with a calico-node container"
            }
        );
    }
    Ok(())
}

/// Routes from `h` to the other nodes' slices, in inventory order.
fn routes(inv: &Inventory, h: &Host, cidrs: &BTreeMap<String, IpNet>) -> Vec<serde_json::Value> {
    inv.node_hosts()
        .filter(|n| n.name != h.name)
        .filter_map(|n| {
            cidrs.get(n.name.as_str()).map(
                |c| serde_json::json!({"cidr": c.to_string(), "via": n.address, "host": n.name}),
            )
        })
        .collect()
}

impl Phase for Network {
    fn name(&self) -> &'static str {
        "network"
    }
    fn summary(&self) -> &'static str {
        "CNI plugins; host-routes: a bridge per node and routes to the other nodes' pods"
    }
    fn join_concerns(&self, ctx: &Context, host: &Host) -> Option<String> {
        // host-routes: every node routes to every other node's pod CIDR (applied in place).
        let inv = ctx.inv();
        let new: Vec<&str> = inv
            .node_hosts()
            .filter(|h| ctx.options.joining.iter().any(|n| *n == h.name))
            .map(|h| h.name.as_str())
            .collect();
        (inv.spec.network.cni == Cni::HostRoutes && inv.runs_kubelet(host) && !new.is_empty()).then(
            || {
                format!(
                    "a route to the pods of the new node(s) {} (added in place: nothing restarts)",
                    new.join(", ")
                )
            },
        )
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let cni = inv.spec.network.cni;
        if cni == Cni::None {
            plan.notes
                .push("spec.network.cni is none: bring your own pod network".into());
            return Ok(plan);
        }
        if let Some(name) = cni_manifest_name(cni) {
            let b = ctx.bundle.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "spec.network.cni is {name}: its manifest comes from the bundle (an item of kind manifest named {name}); set spec.bundle, or use cni: none and list the manifest in spec.addons.extraManifests"
                )
            })?;
            let Some(it) = b
                .manifest
                .items
                .iter()
                .find(|i| i.kind == Kind::Manifest && i.name == name)
            else {
                bail!(
                    "spec.network.cni is {name}, but the bundle {} has no item of kind manifest named {name}: add the {name} release manifest (with its sha256) to the bundle",
                    b.path.display()
                );
            };
            plan.local.push(format!(
                "apply {} with podCIDR {} through the API",
                it.label(),
                inv.spec.network.pod_cidr
            ));
        }
        let cidrs = if cni == Cni::HostRoutes {
            let c = pod_cidrs(ctx)?;
            plan.local.push(format!(
                "record each node's pod CIDR in {}",
                ctx.state.root.join(POD_CIDRS_FILE).display()
            ));
            c
        } else {
            BTreeMap::new()
        };
        for h in ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)) {
            let mut a = vec![Action::dir("/etc/cni/net.d", 0o755)];
            let items = super::prepare::items_for(ctx, h)?;
            match items
                .iter()
                .find(|i| i.kind == Kind::Archive && i.name == "cni-plugins")
            {
                Some(it) => a.extend(super::prepare::archive_actions(it)?),
                None if ctx.bundle.is_some() => bail!(
                    "host {}: the bundle has no cni-plugins archive for its roles",
                    h.name
                ),
                None => plan.notes.push(format!(
                    "{}: no bundle: the CNI plugins must already be in /opt/cni/bin",
                    h.name
                )),
            }
            if cni == Cni::HostRoutes {
                let cidr = cidrs.get(h.name.as_str()).expect("every node is allocated");
                let mut vars = host_vars(inv, h);
                vars.insert("pod", &serde_json::json!({"cidr": cidr.to_string()}));
                let routes = routes(inv, h, &cidrs);
                vars.insert("routes", &routes);
                let unit = "clusterctl-pod-routes.service";
                a.push(Action::dir("/etc/clusterctl", 0o755));
                // containerd reads the CNI config on each pod sandbox: no restart.
                a.push(Action::rendered(
                    "/etc/cni/net.d/10-clusterctl.conflist",
                    0o644,
                    "network/10-clusterctl.conflist",
                    ctx.render.render("network/10-clusterctl.conflist", &vars)?,
                    &[],
                ));
                // The script is applied in place (no restart of anything): a node joining
                // adds one route on every other node. The unit re-applies it at boot.
                a.push(Action::rendered(
                    "/etc/clusterctl/pod-routes.sh",
                    0o755,
                    "network/pod-routes.sh",
                    ctx.render.render("network/pod-routes.sh", &vars)?,
                    &[],
                ));
                a.push(Action::rendered(
                    format!("/etc/systemd/system/{unit}"),
                    0o644,
                    "network/clusterctl-pod-routes.service",
                    ctx.render
                        .render("network/clusterctl-pod-routes.service", &vars)?,
                    &[],
                ));
                a.push(Action::service(unit));
                let want = routes_check(&routes);
                a.push(Action::run(
                    &format!("routes to the pods of {} other node(s)", routes.len()),
                    "sh /etc/clusterctl/pod-routes.sh 2>&1",
                    Some(want.clone()),
                ));
                a.push(Action::check(
                    "the routes to the other nodes' pods are in place",
                    want,
                ));
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let cni = ctx.inv().spec.network.cni;
            let (Some(name), Some(b)) = (cni_manifest_name(cni), ctx.bundle.as_ref()) else {
                return Ok(vec![]);
            };
            let it = b
                .manifest
                .items
                .iter()
                .find(|i| i.kind == Kind::Manifest && i.name == name)
                .expect("checked by plan");
            let bytes = crate::bundle::archive::read_item(&b.path, it)?;
            let origin = format!("bundle item {}", it.label());
            let text = String::from_utf8(bytes).with_context(|| format!("{origin}: not UTF-8"))?;
            let mut objects = crate::kube::manifest::parse(&text, &origin)?;
            set_pod_cidr(
                cni,
                &mut objects,
                &ctx.inv().spec.network.pod_cidr.to_string(),
            )
            .with_context(|| origin.clone())?;
            let api = ctx.kube_admin()?;
            let applied = api.apply_objects(&objects, dry_run).await?;
            Ok(vec![format!(
                "{name}: {}{}",
                crate::kube::apply::Summary::of(&applied),
                if dry_run { " (dry run)" } else { "" }
            )])
        })
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        if ctx.inv().spec.network.cni != Cni::HostRoutes {
            return Ok(());
        }
        let cidrs = pod_cidrs(ctx)?;
        let path = ctx.state.root.join(POD_CIDRS_FILE);
        if read_recorded(&path)? == cidrs {
            return Ok(());
        }
        let m: BTreeMap<&String, String> = cidrs.iter().map(|(k, v)| (k, v.to_string())).collect();
        let text = format!(
            "# Each node's pod CIDR, allocated by clusterctl (spec.network.cni: host-routes).\n\
             # Never edit an existing line: pods and routes on the nodes use these.\n{}",
            serde_saphyr::to_string(&m).context("writing the pod CIDRs")?
        );
        std::fs::create_dir_all(&ctx.state.root)?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLANNEL: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-flannel-cfg, namespace: kube-flannel}
data:
  net-conf.json: |
    {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-flannel-ds, namespace: kube-flannel}
spec: {template: {spec: {containers: [{name: kube-flannel, image: flannel}]}}}
"#;

    #[test]
    fn flannel_and_calico_get_the_inventory_pod_cidr() {
        let mut objs = crate::kube::manifest::parse(FLANNEL, "flannel").unwrap();
        set_pod_cidr(Cni::Flannel, &mut objs, "10.42.0.0/16").unwrap();
        let conf: Value =
            serde_json::from_str(objs[0].value["data"]["net-conf.json"].as_str().unwrap()).unwrap();
        assert_eq!(conf["Network"], "10.42.0.0/16");
        assert_eq!(conf["Backend"]["Type"], "vxlan", "the rest is kept");

        let calico = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: calico-node, namespace: kube-system}
spec:
  template:
    spec:
      containers:
        - name: calico-node
          env: [{name: CALICO_IPV4POOL_CIDR, value: 192.168.0.0/16}, {name: IP, value: autodetect}]
"#;
        let mut objs = crate::kube::manifest::parse(calico, "calico").unwrap();
        set_pod_cidr(Cni::Calico, &mut objs, "10.42.0.0/16").unwrap();
        let env = &objs[0].value["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            env,
            &json!([{"name": "IP", "value": "autodetect"}, {"name": "CALICO_IPV4POOL_CIDR", "value": "10.42.0.0/16"}])
        );
        // A manifest that is not what it claims to be is refused.
        let mut objs = crate::kube::manifest::parse(FLANNEL, "x").unwrap();
        let e = set_pod_cidr(Cni::Calico, &mut objs, "10.42.0.0/16")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DaemonSet calico-node"), "{e}");
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_keeps_recorded() {
        let mut rec = BTreeMap::new();
        rec.insert("w1".to_string(), net("10.244.1.0/24"));
        rec.insert("gone".to_string(), net("10.244.0.0/24"));
        let got = allocate(net("10.244.0.0/16"), 24, &rec, &["cp1", "w1", "w2"], "f").unwrap();
        assert_eq!(got["w1"], net("10.244.1.0/24"));
        assert_eq!(
            got["gone"],
            net("10.244.0.0/24"),
            "a departed node's slice is not reused"
        );
        assert_eq!(got["cp1"], net("10.244.2.0/24"));
        assert_eq!(got["w2"], net("10.244.3.0/24"));
        // Deterministic: the same input gives the same answer.
        assert_eq!(
            got,
            allocate(net("10.244.0.0/16"), 24, &rec, &["cp1", "w1", "w2"], "f").unwrap()
        );
    }

    #[test]
    fn refuses_a_changed_pod_cidr_and_exhaustion() {
        let mut rec = BTreeMap::new();
        rec.insert("w1".to_string(), net("10.1.0.0/24"));
        let e = allocate(
            net("10.244.0.0/16"),
            24,
            &rec,
            &["w1"],
            "clusters/x/pod-cidrs.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("clusters/x/pod-cidrs.yaml: node w1 has pod CIDR 10.1.0.0/24"),
            "{e}"
        );
        let e = allocate(
            net("10.244.0.0/23"),
            24,
            &BTreeMap::new(),
            &["a", "b", "c"],
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no free /24 left for node c"), "{e}");
    }
}
