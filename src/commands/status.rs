//! `clusterctl status`: one screen (or `-o json`) read now from the live cluster, every query
//! in parallel with short timeouts: etcd members (name, URLs, leader, DB size, health,
//! version), each apiserver's `/readyz` and the endpoint's, the VIP holder (vip mode, over
//! SSH), nodes with their kubelet versions and readiness, the nearest certificate expiry of
//! the local PKI, what differs from the inventory, and the add-ons' health (CoreDNS's
//! Deployment available with endpoints behind kube-dns, the metrics API's APIService
//! Available; every unavailable APIService, since it breaks API discovery). An add-on `init`
//! skipped (its image cannot run) is shown with the reason, not counted as a problem. Exit 1
//! when something is unhealthy.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::engine::Context;
use crate::inventory::{HaMode, Inventory};
use crate::kube::http;
use crate::phases::etcd::members::{Etcd, Member};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdMember {
    pub name: String,
    pub id: String,
    pub peer_url: String,
    pub client_url: String,
    pub started: bool,
    pub healthy: bool,
    pub leader: bool,
    pub version: String,
    pub db_size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub ready: bool,
    pub readyz: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub ready: bool,
    pub kubelet_version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vip {
    pub address: String,
    /// Hosts that carry the address now (one when healthy).
    pub holders: Vec<String>,
    /// Balancer hosts that could not be asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertExpiry {
    pub name: String,
    pub location: String,
    pub not_after: String,
    pub days: i64,
}

/// What differs between the inventory and the live cluster.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub inventory_hosts_not_nodes: Vec<String>,
    pub nodes_not_in_inventory: Vec<String>,
    pub inventory_etcd_hosts_not_members: Vec<String>,
    pub etcd_members_not_in_inventory: Vec<String>,
}

impl Drift {
    fn is_empty(&self) -> bool {
        self.inventory_hosts_not_nodes.is_empty()
            && self.nodes_not_in_inventory.is_empty()
            && self.inventory_etcd_hosts_not_members.is_empty()
            && self.etcd_members_not_in_inventory.is_empty()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub cluster: String,
    pub healthy: bool,
    pub seconds: f64,
    pub etcd: EtcdStatus,
    pub apiservers: Vec<Endpoint>,
    pub endpoint: Option<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
    /// Every balancer's view of every apiserver backend.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub balancers: Vec<BalancerView>,
    /// None: unknown (the API could not be read; see `nodes_error`), not zero nodes.
    pub nodes: Option<Vec<NodeStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_error: Option<String>,
    pub nearest_certificate_expiry: Option<CertExpiry>,
    /// A CA rotation under way (`pki/ca-rotation.json`): the stages done and the next command.
    /// Absent when none is (never started, or its `finish` passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_rotation: Option<crate::pki::rotation::Progress>,
    pub drift: Drift,
    /// Each built-in add-on: whether it runs, and why not.
    pub addons: Vec<AddonHealth>,
    /// Registered APIServices that are not Available (each breaks every API discovery).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable_api_services: Vec<crate::kube::nodes::ApiServiceStatus>,
    /// Per node, the bundle's images its containerd lacks.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub missing_images: std::collections::BTreeMap<String, Vec<String>>,
    pub problems: Vec<String>,
}

/// A built-in add-on as the cluster runs it now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddonHealth {
    pub name: String,
    /// `running`, `not-running` (installed, not serving: a problem), `skipped` (`init` does
    /// not install it here, for `detail`'s reason) or `unknown` (the API could not be read).
    pub state: String,
    pub running: bool,
    pub detail: String,
}

/// The add-ons' health and the unavailable APIServices, with the problems they make.
async fn addon_health(
    ctx: &Context,
    kube: &crate::kube::Client,
) -> (
    Vec<AddonHealth>,
    Vec<crate::kube::nodes::ApiServiceStatus>,
    Vec<String>,
) {
    use crate::phases::addons::{self, Decision};
    let mut problems = Vec::new();
    let unavailable: Vec<_> = match kube.api_services().await {
        Ok(v) => v.into_iter().filter(|a| !a.available).collect(),
        Err(e) => {
            problems.push(format!("APIServices: cannot list them: {e:#}"));
            Vec::new()
        }
    };
    for a in &unavailable {
        problems.push(format!(
            "APIService {} ({}) is unavailable ({}): every API discovery (kubectl) fails on it and namespaces cannot be deleted; `clusterctl init` removes clusterctl's own, `kubectl delete apiservice {}` any other",
            a.name, a.service, a.why, a.name
        ));
    }
    let manifests = match addons::manifests(ctx) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("add-ons: {e:#}"));
            return (Vec::new(), unavailable, problems);
        }
    };
    let mut out = Vec::new();
    for m in &manifests {
        let Some(d) = addons::decision(ctx, m) else {
            continue;
        };
        let h = one_addon(kube, m, &d).await;
        let h = match h {
            Ok(h) => h,
            Err(e) => AddonHealth {
                name: m.name.to_string(),
                state: "unknown".into(),
                running: false,
                detail: format!("{e:#}"),
            },
        };
        if matches!(h.state.as_str(), "not-running" | "unknown") && !matches!(d, Decision::Skip(_))
        {
            problems.push(format!("add-on {}: {}", h.name, h.detail));
        }
        out.push(h);
    }
    (out, unavailable, problems)
}

async fn one_addon(
    kube: &crate::kube::Client,
    m: &crate::phases::addons::AddonManifest,
    d: &crate::phases::addons::Decision,
) -> anyhow::Result<AddonHealth> {
    use crate::phases::addons::Decision;
    let mut seen = Vec::new();
    let mut running = true;
    let mut installed = false;
    for (ns, name) in m.deployments() {
        match kube.deployment_status_opt(&ns, &name).await? {
            Some(s) => {
                installed = true;
                running &= s.available;
                seen.push(format!("Deployment {ns}/{name} {}", s.summary));
            }
            None => {
                running = false;
                seen.push(format!("no Deployment {ns}/{name}"));
            }
        }
    }
    // Answering: something behind each of its Services (kube-dns for CoreDNS).
    for (ns, name) in m.services() {
        let n = kube.ready_endpoints(&ns, &name).await?;
        running &= n > 0;
        seen.push(format!("Service {ns}/{name}: {n} ready endpoint(s)"));
    }
    // The metrics API: its APIService's Available condition.
    for a in m.gated_api_services() {
        match kube.api_service(&a).await? {
            Some(s) if s.available => seen.push(format!("APIService {a} available")),
            Some(s) => {
                running = false;
                seen.push(format!("APIService {a} unavailable ({})", s.why));
            }
            None => {
                running = false;
                seen.push(format!("APIService {a} not registered"));
            }
        }
    }
    let (state, detail) = match d {
        Decision::Skip(why) if !installed => ("skipped", format!("not installed: {why}")),
        _ if running => ("running", seen.join("; ")),
        _ => ("not-running", seen.join("; ")),
    };
    Ok(AddonHealth {
        name: m.name.to_string(),
        state: state.into(),
        running,
        detail,
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    pub members: Vec<EtcdMember>,
    pub leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// etcd: the member list from any member, then each member's own status.
async fn etcd_status(ctx: &Context) -> EtcdStatus {
    let etcd = match Etcd::new(ctx) {
        Ok(mut e) => {
            // Ask every inventory etcd host, not only the recorded members.
            for h in ctx.inv().etcd_hosts() {
                let u = Inventory::url(h.address, 2379);
                if !e.endpoints.contains(&u) {
                    e.endpoints.push(u);
                }
            }
            e
        }
        Err(err) => {
            return EtcdStatus {
                members: vec![],
                leader: None,
                error: Some(format!("{err:#}")),
            };
        }
    };
    let members: Vec<Member> = match etcd.members().await {
        Ok(m) => m,
        Err(err) => {
            return EtcdStatus {
                members: vec![],
                leader: None,
                error: Some(format!("{err:#}")),
            };
        }
    };
    let statuses = futures::future::join_all(members.iter().map(|m| async {
        match m.client_urls.first() {
            Some(u) => etcd.status(u).await.map_err(|e| format!("{e:#}")),
            None => Err("added but not started (no client URL)".to_string()),
        }
    }))
    .await;
    let leader_id = statuses
        .iter()
        .flatten()
        .filter_map(|v| v["leader"].as_str())
        .find(|l| *l != "0")
        .map(str::to_string);
    let mut out = Vec::new();
    for (m, st) in members.iter().zip(statuses) {
        let (healthy, version, db, error) = match &st {
            Ok(v) => {
                let has_leader = v["leader"].as_str().is_some_and(|l| l != "0");
                (
                    has_leader,
                    v["version"].as_str().unwrap_or_default().to_string(),
                    v["dbSize"].as_str().and_then(|n| n.parse().ok()),
                    (!has_leader).then(|| "no leader".to_string()),
                )
            }
            Err(e) => (false, String::new(), None, Some(e.clone())),
        };
        out.push(EtcdMember {
            name: if m.started() {
                m.name.to_string()
            } else {
                String::new()
            },
            id: m.id.clone(),
            peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
            client_url: m.client_urls.first().cloned().unwrap_or_default(),
            started: m.started(),
            healthy,
            leader: leader_id.as_deref() == Some(m.id.as_str()),
            version,
            db_size_bytes: db,
            error,
        });
    }
    out.sort_by(|a, b| (a.name.is_empty(), &a.name).cmp(&(b.name.is_empty(), &b.name)));
    let leader = out.iter().find(|m| m.leader).map(|m| m.name.to_string());
    EtcdStatus {
        members: out,
        leader,
        error: None,
    }
}

async fn readyz(api: &reqwest::Client, name: String, base: String) -> Endpoint {
    let url = format!("{base}/readyz");
    match http::send(api.get(&url), &url).await {
        Ok(s) => Endpoint {
            name,
            url: base,
            ready: true,
            readyz: s.body.trim().to_string(),
        },
        Err(e) => Endpoint {
            name,
            url: base,
            ready: false,
            readyz: format!("{e:#}"),
        },
    }
}

/// One balancer's view of the apiserver backends (haproxy's runtime API).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalancerView {
    pub balancer: String,
    pub servers: Vec<crate::engine::rotation::ServerView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Over SSH on every balancer at once, one command each: which carries the VIP (vip mode),
/// and how its haproxy sees every apiserver backend (`show servers state`).
async fn balancer_views(ctx: &Context) -> (Option<Vip>, Vec<BalancerView>) {
    use crate::engine::rotation as lb;
    let inv = ctx.inv();
    let vip = match (inv.spec.ha.mode, &inv.spec.ha.vip) {
        (HaMode::Vip, Some(v)) => Some(v.ip_and_prefix().0.to_string()),
        _ => None,
    };
    let names: Vec<String> = lb::balancers(inv)
        .iter()
        .map(|h| h.name.to_string())
        .collect();
    if names.is_empty() {
        return (None, Vec::new());
    }
    let targets: Vec<crate::ssh::Target> =
        crate::ssh::Target::from_inventory(&ctx.loaded, &ctx.state)
            .into_iter()
            .filter(|t| names.contains(&t.name))
            .collect();
    let opts = crate::ssh::ConnectOpts {
        retries: 0,
        progress: crate::ssh::ProgressMode::live_or_quiet(),
        ..Default::default()
    };
    let (pool, _errors) = crate::ssh::Pool::connect(&targets, &opts).await;
    const SPLIT: &str = "--- servers";
    let cmd = crate::ssh::shell::Shell::from("ip -o addr show")
        .then(crate::ssh::shell::Cmd::new("echo").arg(SPLIT))
        .then(lb::runtime_api_query(&format!(
            "show servers state {}",
            lb::BACKEND
        )));
    let needle = vip.as_ref().map(|ip| format!(" {ip}/"));
    let answers = futures::future::join_all(pool.hosts().into_iter().map(|h| {
        let (pool, cmd) = (&pool, &cmd);
        async move {
            let o = pool
                .exec(
                    &h,
                    cmd,
                    crate::ssh::ExecOpts::root().timeout(Duration::from_secs(3)),
                )
                .await;
            (h, o)
        }
    }))
    .await;
    pool.close().await;
    let mut holders = Vec::new();
    let mut asked = BTreeSet::new();
    let mut views = Vec::new();
    for (h, o) in answers {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                views.push(BalancerView {
                    balancer: h,
                    servers: vec![],
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let (addrs, servers) = o.stdout.split_once(SPLIT).unwrap_or((&o.stdout, ""));
        asked.insert(h.clone());
        if needle.as_ref().is_some_and(|n| addrs.contains(n.as_str())) {
            holders.push(h.clone());
        }
        let (servers, error) = if servers.trim() == lb::NO_SOCKET {
            (vec![], Some(lb::NO_SOCKET.to_string()))
        } else {
            match lb::parse_servers_state(servers) {
                Some(v) => (v, None),
                None => (
                    vec![],
                    Some(format!(
                        "runtime API: {}",
                        if servers.trim().is_empty() {
                            o.stderr.trim()
                        } else {
                            servers.trim()
                        }
                    )),
                ),
            }
        };
        views.push(BalancerView {
            balancer: h,
            servers,
            error,
        });
    }
    for n in &names {
        if !views.iter().any(|v| &v.balancer == n) {
            views.push(BalancerView {
                balancer: n.clone(),
                servers: vec![],
                error: Some("could not connect".into()),
            });
        }
    }
    views.sort_by(|a, b| a.balancer.cmp(&b.balancer));
    let vip = vip.map(|address| Vip {
        address,
        holders,
        unknown: names.into_iter().filter(|h| !asked.contains(h)).collect(),
    });
    (vip, views)
}

/// Per node, the bundle's images its containerd does not hold now, or why it could not be
/// asked (over SSH, `ctr images ls`). A node without a registry cannot pull them back: the
/// next `init` (its runtime phase) re-imports them from the bundle. Empty without a bundle.
async fn missing_bundle_images(ctx: &Context) -> Vec<(String, Result<Vec<String>, String>)> {
    use crate::phases::runtime;
    let inv = ctx.inv();
    let mut wanted = std::collections::BTreeMap::new();
    for h in inv.spec.hosts.iter().filter(|h| inv.runs_kubelet(h)) {
        match runtime::bundle_images(ctx, h) {
            Ok(v) if !v.is_empty() => {
                wanted.insert(h.name.to_string(), v);
            }
            _ => {}
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let targets: Vec<crate::ssh::Target> =
        crate::ssh::Target::from_inventory(&ctx.loaded, &ctx.state)
            .into_iter()
            .filter(|t| wanted.contains_key(&t.name))
            .collect();
    let opts = crate::ssh::ConnectOpts {
        retries: 0,
        progress: crate::ssh::ProgressMode::live_or_quiet(),
        ..Default::default()
    };
    let (pool, _errors) = crate::ssh::Pool::connect(&targets, &opts).await;
    let answers = futures::future::join_all(pool.hosts().into_iter().map(|h| {
        let pool = &pool;
        async move {
            let o = pool
                .exec(
                    &h,
                    runtime::LIST_IMAGES,
                    crate::ssh::ExecOpts::root().timeout(Duration::from_secs(5)),
                )
                .await;
            (h, o)
        }
    }))
    .await;
    pool.close().await;
    let mut out: Vec<(String, Result<Vec<String>, String>)> = answers
        .into_iter()
        .map(|(h, o)| {
            let r = match o {
                Ok(o) if o.status == 0 => Ok(runtime::missing_images(&wanted[&h], &o.stdout)),
                Ok(o) => Err(format!("{}: {}", runtime::LIST_IMAGES, o.stderr.trim())),
                Err(e) => Err(e.to_string()),
            };
            (h, r)
        })
        .collect();
    for h in wanted.keys() {
        if !out.iter().any(|(n, _)| n == h) {
            out.push((h.clone(), Err("could not connect".into())));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The certificate of the local PKI (and kubeconfigs) that expires first.
fn nearest_expiry(ctx: &Context) -> anyhow::Result<Option<CertExpiry>> {
    let local = crate::pki::expiry::LocalDir {
        pki: ctx.state.pki(),
        kubeconfig: ctx.state.root.join("kubeconfig"),
    };
    let sources: [&dyn crate::pki::expiry::CertSource; 1] = [&local];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rows = crate::pki::expiry::report(&sources, now, 0)?;
    Ok(rows
        .into_iter()
        .min_by_key(|r| r.residual_seconds)
        .map(|r| CertExpiry {
            name: r.name,
            location: r.location,
            not_after: r.not_after,
            days: r.residual_seconds.div_euclid(86_400),
        }))
}

/// Reads everything in parallel and judges it.
pub async fn read(ctx: &Context) -> anyhow::Result<Status> {
    let started = Instant::now();
    let inv = ctx.inv();
    let api = ctx.admin_http()?;
    let port = inv.spec.control_plane.apiserver_port;
    // The endpoint this machine uses: in local-proxy mode the first apiserver that answers.
    let endpoints = crate::kube::operator_endpoints(inv);
    let endpoint = async {
        match crate::kube::first_ready(&api, &endpoints).await {
            Ok((url, body)) => Endpoint {
                name: "endpoint".into(),
                url,
                ready: true,
                readyz: body.trim().to_string(),
            },
            Err(e) => Endpoint {
                name: "endpoint".into(),
                url: endpoints.join(" | "),
                ready: false,
                readyz: e,
            },
        }
    };
    let apiservers = futures::future::join_all(
        inv.control_plane_hosts()
            .map(|h| readyz(&api, h.name.to_string(), Inventory::url(h.address, port))),
    );
    let kube = ctx.kube_admin()?;
    let nodes = async {
        let v: Value = kube.get("/api/v1/nodes").await?;
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(crate::kube::nodes::Node::from_json)
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (etcd, apiservers, endpoint, nodes, (vip, balancers), images, addons) = tokio::join!(
        etcd_status(ctx),
        apiservers,
        endpoint,
        nodes,
        balancer_views(ctx),
        missing_bundle_images(ctx),
        addon_health(ctx, &kube),
    );
    let (addons, unavailable_api_services, addon_problems) = addons;
    let mut problems = addon_problems;
    let mut missing_images = std::collections::BTreeMap::new();
    for (host, r) in images {
        match r {
            Ok(v) if v.is_empty() => {}
            Ok(v) => {
                problems.push(format!(
                    "node {host}: bundle image(s) missing from containerd: {} (a node without a registry cannot pull them; `clusterctl init` re-imports them from the bundle)",
                    v.join(", ")
                ));
                missing_images.insert(host, v);
            }
            Err(e) => problems.push(format!("node {host}: cannot list its images: {e}")),
        }
    }
    if let Some(e) = &etcd.error {
        problems.push(format!("etcd: {e}"));
    }
    for m in &etcd.members {
        if !m.healthy {
            problems.push(format!(
                "etcd member {} ({}): {}",
                if m.name.is_empty() { "?" } else { &m.name },
                m.peer_url,
                m.error.as_deref().unwrap_or("unhealthy")
            ));
        }
    }
    if etcd.error.is_none() && etcd.leader.is_none() {
        problems.push("etcd has no leader".into());
    }
    for a in apiservers.iter().chain([&endpoint]) {
        if !a.ready {
            problems.push(format!("{} {}: {}", a.name, a.url, a.readyz));
        }
    }
    if let Some(v) = &vip {
        match v.holders.len() {
            1 => {}
            0 if !v.unknown.is_empty() => problems.push(format!(
                "VIP {}: no host seen with it ({} could not be asked)",
                v.address,
                v.unknown.join(", ")
            )),
            0 => problems.push(format!("VIP {}: no balancer holds it", v.address)),
            _ => problems.push(format!(
                "VIP {}: held by {} hosts at once: {}",
                v.address,
                v.holders.len(),
                v.holders.join(", ")
            )),
        }
    }
    // A backend out of a balancer's rotation gets no traffic from it, whatever its readyz
    // says (a run killed between drain and put-back leaves one; the next run puts it back).
    for b in &balancers {
        if let Some(e) = &b.error {
            problems.push(format!(
                "balancer {}: cannot read its backends: {e}",
                b.balancer
            ));
        }
        for sv in &b.servers {
            if sv.out_of_rotation() {
                problems.push(format!(
                    "balancer {}: backend {} is out of rotation ({}{}{}): it gets no requests; `clusterctl init` puts back what clusterctl drained",
                    b.balancer,
                    sv.server,
                    if sv.drained { "drain" } else { "" },
                    if sv.maintenance { " maint" } else { "" },
                    if sv.health_check { "" } else { ", health check disabled" }
                ));
            } else if sv.state != "UP" {
                problems.push(format!(
                    "balancer {}: backend {} is {}",
                    b.balancer, sv.server, sv.state
                ));
            }
        }
    }
    // Nodes that could not be read are unknown, not zero.
    let (nodes, nodes_error) = match nodes {
        Ok(n) => (Some(n), None),
        Err(e) => {
            problems.push(format!("nodes: {e:#}"));
            (None, Some(format!("{e:#}")))
        }
    };
    let nodes: Option<Vec<NodeStatus>> = nodes.map(|ns| {
        ns.into_iter()
            .map(|n| NodeStatus {
                name: n.name.to_string(),
                ready: n.ready,
                kubelet_version: n.kubelet_version.clone(),
            })
            .collect()
    });
    for n in nodes.iter().flatten() {
        if !n.ready {
            problems.push(format!("node {}: NotReady", n.name));
        }
    }
    let cert = match nearest_expiry(ctx) {
        Ok(c) => c,
        Err(e) => {
            problems.push(format!("local PKI: {e:#}"));
            None
        }
    };
    if let Some(c) = &cert
        && c.days < 0
    {
        problems.push(format!("certificate {} expired {}", c.name, c.not_after));
    }
    // A rotation half way is no health problem (every stage leaves a working cluster), but
    // it is shown until `finish` passed, with what to run next.
    let ca_rotation = match crate::pki::rotation::read_state(&ctx.state.pki()) {
        Ok(s) => crate::pki::rotation::progress(s.as_ref()),
        Err(e) => {
            problems.push(format!("local PKI: {e:#}"));
            None
        }
    };
    // What differs from the inventory (reported; not a health problem by itself).
    let mut drift = Drift::default();
    let node_names: BTreeSet<&str> = nodes.iter().flatten().map(|n| n.name.as_str()).collect();
    let inv_nodes: BTreeSet<&str> = inv.node_hosts().map(|h| h.name.as_str()).collect();
    if problems.iter().all(|p| !p.starts_with("nodes:")) {
        drift.inventory_hosts_not_nodes = inv_nodes
            .difference(&node_names)
            .map(|s| s.to_string())
            .collect();
        drift.nodes_not_in_inventory = node_names
            .difference(&inv_nodes)
            .map(|s| s.to_string())
            .collect();
    }
    if etcd.error.is_none() {
        let member_peers: BTreeSet<&str> =
            etcd.members.iter().map(|m| m.peer_url.as_str()).collect();
        drift.inventory_etcd_hosts_not_members = inv
            .etcd_hosts()
            .filter(|h| !member_peers.contains(crate::render::peer_url(h).as_str()))
            .map(|h| h.name.to_string())
            .collect();
        let inv_peers: BTreeSet<String> = inv.etcd_hosts().map(crate::render::peer_url).collect();
        drift.etcd_members_not_in_inventory = etcd
            .members
            .iter()
            .filter(|m| !inv_peers.contains(&m.peer_url))
            .map(|m| {
                if m.name.is_empty() {
                    m.peer_url.clone()
                } else {
                    m.name.to_string()
                }
            })
            .collect();
    }
    Ok(Status {
        cluster: inv.name().to_string(),
        healthy: problems.is_empty(),
        seconds: started.elapsed().as_secs_f64(),
        etcd,
        apiservers,
        endpoint: Some(endpoint),
        vip,
        balancers,
        nodes,
        nodes_error,
        nearest_certificate_expiry: cert,
        ca_rotation,
        drift,
        addons,
        unavailable_api_services,
        missing_images,
        problems,
    })
}

/// The one-screen form.
pub fn render_text(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {}: {} (read in {:.1}s)",
        s.cluster,
        if s.healthy { "healthy" } else { "UNHEALTHY" },
        s.seconds
    );
    let _ = writeln!(o, "\netcd members ({}):", s.etcd.members.len());
    if let Some(e) = &s.etcd.error {
        let _ = writeln!(o, "  cannot read: {e}");
    }
    for m in &s.etcd.members {
        let _ = writeln!(
            o,
            "  {:<10} {:<28} {:<9} {:<7} v{:<8} db {:>8}{}",
            if m.name.is_empty() {
                "(unstarted)"
            } else {
                &m.name
            },
            m.client_url,
            if m.healthy { "healthy" } else { "UNHEALTHY" },
            if m.leader { "leader" } else { "" },
            m.version,
            m.db_size_bytes
                .map(|b| format!("{} KiB", b / 1024))
                .unwrap_or_else(|| "?".into()),
            m.error
                .as_ref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(o, "\napiservers:");
    for a in s.apiservers.iter().chain(&s.endpoint) {
        let _ = writeln!(
            o,
            "  {:<10} {:<28} {}",
            a.name,
            a.url,
            if a.ready {
                format!("readyz {}", a.readyz)
            } else {
                format!("NOT READY: {}", a.readyz)
            }
        );
    }
    if let Some(v) = &s.vip {
        let _ = writeln!(
            o,
            "\nVIP {}: held by {}{}",
            v.address,
            if v.holders.is_empty() {
                "nobody".to_string()
            } else {
                v.holders.join(", ")
            },
            if v.unknown.is_empty() {
                String::new()
            } else {
                format!(" (not asked: {})", v.unknown.join(", "))
            }
        );
    }
    if !s.balancers.is_empty() {
        let _ = writeln!(
            o,
            "\nbalancers (each one's view of the apiserver backends):"
        );
        for b in &s.balancers {
            let servers: Vec<String> = b
                .servers
                .iter()
                .map(|sv| {
                    let mut st = sv.state.clone();
                    if sv.drained {
                        st += ",DRAIN";
                    }
                    if sv.maintenance {
                        st += ",MAINT";
                    }
                    if !sv.health_check {
                        st += ",no-check";
                    }
                    format!("{} {st}", sv.server)
                })
                .collect();
            let _ = writeln!(
                o,
                "  {:<10} {}{}",
                b.balancer,
                servers.join("  "),
                b.error
                    .as_ref()
                    .map(|e| format!("  ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    match (&s.nodes, &s.nodes_error) {
        (Some(ns), _) => {
            let _ = writeln!(o, "\nnodes ({}):", ns.len());
        }
        (None, e) => {
            let _ = writeln!(
                o,
                "\nnodes: unknown (could not read them: {})",
                e.as_deref().unwrap_or("no answer")
            );
        }
    }
    for n in s.nodes.iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<10} {:<8} kubelet {}",
            n.name,
            if n.ready { "Ready" } else { "NotReady" },
            n.kubelet_version
        );
    }
    if !s.addons.is_empty() {
        let _ = writeln!(o, "\nadd-ons:");
        for a in &s.addons {
            let _ = writeln!(o, "  {:<15} {:<11} {}", a.name, a.state, a.detail);
        }
    }
    if let Some(c) = &s.nearest_certificate_expiry {
        let _ = writeln!(
            o,
            "\nnearest certificate expiry: {} ({}) on {}, in {} days",
            c.name, c.location, c.not_after, c.days
        );
    }
    if let Some(r) = &s.ca_rotation {
        o.push_str(&rotation_text(r));
    }
    if !s.drift.is_empty() {
        let d = &s.drift;
        let _ = writeln!(o, "\ndiffers from the inventory:");
        for (what, v) in [
            ("in the inventory, not a node", &d.inventory_hosts_not_nodes),
            ("a node, not in the inventory", &d.nodes_not_in_inventory),
            (
                "an etcd host of the inventory, not a member",
                &d.inventory_etcd_hosts_not_members,
            ),
            (
                "an etcd member, not in the inventory",
                &d.etcd_members_not_in_inventory,
            ),
        ] {
            if !v.is_empty() {
                let _ = writeln!(o, "  {what}: {}", v.join(", "));
            }
        }
    }
    if !s.problems.is_empty() {
        let _ = writeln!(o, "\nproblems:");
        for p in &s.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    o
}

/// The CA rotation under way, in two lines.
fn rotation_text(r: &crate::pki::rotation::Progress) -> String {
    let names = |v: &[crate::pki::rotation::Stage]| {
        v.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
    };
    let state = match r.unfinished {
        Some(u) => format!("; `{}` started, not finished", u.name()),
        None => String::new(),
    };
    format!(
        "\nCA rotation under way (started {}): done: {}{state}\n  next: {}\n",
        r.started,
        if r.done.is_empty() {
            "none".to_string()
        } else {
            names(&r.done)
        },
        r.next
    )
}

pub fn run(g: &Global) -> anyhow::Result<()> {
    let (ctx, _) =
        crate::commands::cluster::prepare(g, "init", &Default::default(), Default::default())?;
    if !ctx.state.root.join("kubeconfig/admin.conf").is_file() {
        return Err(UserError::bad_input(format!(
            "no admin credentials in {}: run `clusterctl init` first (status reads the cluster with them)",
            ctx.state.root.display()
        ))
        .into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let s = rt.block_on(read(&ctx))?;
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(g.output, &s)?,
        Output::Text => print!("{}", render_text(&s)),
    }
    if s.healthy {
        Ok(())
    } else {
        Err(UserError::failed(format!(
            "cluster {}: {} problem(s)",
            s.cluster,
            s.problems.len()
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use crate::pki::rotation::{Stage, State, progress};

    #[test]
    fn a_rotation_under_way_says_what_is_done_and_what_comes_next() {
        let st = |stage, finished| State {
            stage,
            finished,
            started: "2026-12-05T12:00:00Z".into(),
            old: Default::default(),
            new: Default::default(),
            backup: None,
        };
        let t = super::rotation_text(&progress(Some(&st(Stage::Trust, true))).unwrap());
        assert_eq!(
            t,
            "\nCA rotation under way (started 2026-12-05T12:00:00Z): done: trust\n  next: clusterctl renew-certs --ca reissue\n"
        );
        let t = super::rotation_text(&progress(Some(&st(Stage::Reissue, false))).unwrap());
        assert!(
            t.contains("done: trust; `reissue` started, not finished")
                && t.contains("next: clusterctl renew-certs --ca reissue"),
            "{t}"
        );
    }
}
