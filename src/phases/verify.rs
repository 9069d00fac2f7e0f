//! verify: the end-of-run report, read from the live cluster by the operator's machine over
//! HTTPS with client certificates: etcd members and leader, each apiserver's readiness and
//! the endpoint's, the controller-manager and scheduler leader leases, and when each
//! endpoint's served certificate expires. It fails when something it reads is not healthy.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::{BoxFuture, join_all};

use crate::engine::executor::Executor;
use crate::engine::{Context, Order, Phase, PhasePlan};
use crate::inventory::{Host, Inventory, Role};
use crate::kube::http::{self, Served};

pub struct Verify;

impl Phase for Verify {
    fn name(&self) -> &'static str {
        "verify"
    }
    fn summary(&self) -> &'static str {
        "end-of-run report from the live cluster"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        // Nothing changes on a host: the report is read over HTTPS from this machine, once,
        // under the first control-plane host's name.
        if let Some(h) = ctx.hosts_where(|h| h.has(Role::ControlPlane)).first() {
            plan.host(h, vec![]);
            plan.local.push(
                "read etcd status and members, every apiserver's /readyz and the endpoint's, \
                 leader leases, each served certificate's expiry, and the nodes"
                    .into(),
            );
        }
        Ok(plan)
    }
    fn join_concerns(&self, _ctx: &Context, _host: &Host) -> Option<String> {
        Some(
            "the end-of-run report is read from this machine under its name; nothing on it changes"
                .into(),
        )
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        _host: &'a Host,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(report(ctx))
    }
}

fn expiry(s: &Served) -> String {
    match s.not_after {
        Some(t) => {
            let days = (t - time::OffsetDateTime::now_utc()).whole_days();
            format!("cert expires {} ({days} days)", t.date())
        }
        None => "no certificate seen".into(),
    }
}

/// A client for etcd's JSON gateway, with the healthcheck-client certificate.
pub fn etcd_client(ctx: &Context) -> anyhow::Result<reqwest::Client> {
    let pki = ctx.state.pki();
    let read = |f: &str| {
        let p = pki.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    http::client(
        &read("etcd/ca.crt")?,
        &read("etcd/healthcheck-client.crt")?,
        &read("etcd/healthcheck-client.key")?,
        Duration::from_secs(5),
    )
}

/// One etcd member's status through etcd's JSON gateway.
async fn etcd_status(
    client: &reqwest::Client,
    h: &Host,
) -> anyhow::Result<(Served, serde_json::Value)> {
    let url = format!("{}/v3/maintenance/status", Inventory::url(h.address, 2379));
    let s = http::send(client.post(&url).body("{}"), &url).await?;
    let v: serde_json::Value =
        serde_json::from_str(&s.body).with_context(|| format!("{url}: not JSON"))?;
    Ok((s, v))
}

/// A Lease object's spec.
async fn lease(api: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&http::get(api, url).await?)?;
    Ok(v["spec"].clone())
}

/// What the live cluster says of itself: lines that are fine, and problems.
#[derive(Debug, serde::Serialize)]
pub struct Health {
    pub healthy: Vec<String>,
    pub problems: Vec<String>,
}

/// The verify phase's gate: Ok(report lines) when healthy.
async fn report(ctx: &Context) -> anyhow::Result<Vec<String>> {
    // A fresh cluster elects its leaders within seconds: wait that long for the leases.
    let h = health(ctx, 20).await?;
    if h.problems.is_empty() {
        Ok(h.healthy)
    } else {
        anyhow::bail!(
            "the cluster is not healthy:\n  {}\nwhat was fine:\n  {}",
            h.problems.join("\n  "),
            h.healthy.join("\n  ")
        )
    }
}

/// Reads the cluster's health over HTTPS from this machine (`status`, and the verify phase),
/// waiting up to `lease_wait` seconds for the leader leases to appear.
pub async fn health(ctx: &Context, lease_wait: u32) -> anyhow::Result<Health> {
    let inv = ctx.inv();
    let mut lines = Vec::new();
    let mut problems = Vec::new();

    // etcd: names by member ID from the member list, then each member's own status.
    let etcd = etcd_client(ctx)?;
    let etcd_hosts: Vec<&Host> = inv.etcd_hosts().collect();
    let mut names = std::collections::HashMap::new();
    for h in &etcd_hosts {
        let url = format!("{}/v3/cluster/member/list", Inventory::url(h.address, 2379));
        if let Ok(s) = http::send(etcd.post(&url).body("{}"), &url).await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s.body)
        {
            for m in v["members"].as_array().into_iter().flatten() {
                if let (Some(id), Some(name)) = (m["ID"].as_str(), m["name"].as_str()) {
                    names.insert(id.to_string(), name.to_string());
                }
            }
            break;
        }
    }
    let statuses = join_all(etcd_hosts.iter().map(|h| etcd_status(&etcd, h))).await;
    let mut leaders = std::collections::BTreeSet::new();
    for (h, st) in etcd_hosts.iter().zip(statuses) {
        match st {
            Ok((s, v)) => {
                let leader = v["leader"].as_str().unwrap_or("?");
                let leader = names.get(leader).map_or(leader, String::as_str);
                leaders.insert(leader.to_string());
                lines.push(format!(
                    "etcd {}: version {}, db {} KiB, leader {leader}, raft term {}; {}",
                    h.name,
                    v["version"].as_str().unwrap_or("?"),
                    v["dbSize"]
                        .as_str()
                        .and_then(|n| n.parse::<u64>().ok())
                        .map_or("?".into(), |n| (n / 1024).to_string()),
                    v["raftTerm"].as_str().unwrap_or("?"),
                    expiry(&s)
                ));
            }
            Err(e) => problems.push(format!("etcd {}: {e:#}", h.name)),
        }
    }
    if names.len() != etcd_hosts.len() {
        problems.push(format!(
            "etcd has {} member(s), the inventory {}",
            names.len(),
            etcd_hosts.len()
        ));
    }
    if leaders.len() > 1 {
        problems.push(format!("etcd members disagree on the leader: {leaders:?}"));
    }

    // Every apiserver, then the endpoint clients use (VIP, local proxy or external).
    let api = ctx.admin_http()?;
    let port = inv.spec.control_plane.apiserver_port;
    let mut targets: Vec<(String, String)> = inv
        .control_plane_hosts()
        .map(|h| {
            (
                format!("apiserver {}", h.name),
                Inventory::url(h.address, port),
            )
        })
        .collect();
    // The endpoint this machine uses (local-proxy mode: the first apiserver that answers).
    let endpoints = crate::kube::operator_endpoints(inv);
    let endpoint = crate::kube::first_ready(&api, &endpoints)
        .await
        .map(|(u, _)| u)
        .unwrap_or_else(|_| endpoints[0].clone());
    targets.push(("endpoint".into(), endpoint.clone()));
    let readyz = join_all(targets.iter().map(|(_, base)| {
        let url = format!("{base}/readyz");
        let req = api.get(&url);
        async move { http::send(req, &url).await }
    }))
    .await;
    for ((what, base), r) in targets.iter().zip(readyz) {
        match r {
            Ok(s) => lines.push(format!(
                "{what} {base}: readyz {}; {}",
                s.body.trim(),
                expiry(&s)
            )),
            Err(e) => problems.push(format!("{what}: {e:#}")),
        }
    }

    // Leader leases: who leads, and how long ago it renewed.
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let url =
            format!("{endpoint}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}");
        let mut got = lease(&api, &url).await;
        for _ in 0..lease_wait {
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            got = lease(&api, &url).await;
        }
        match got {
            Ok(spec) => {
                let holder = spec["holderIdentity"].as_str().unwrap_or("nobody");
                let mut l = format!(
                    "lease {name}: held by {}",
                    holder.split('_').next().unwrap_or(holder)
                );
                if let Some(t) = spec["renewTime"].as_str().and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                }) {
                    let ago = (time::OffsetDateTime::now_utc() - t).as_seconds_f64();
                    let _ = write!(l, ", renewed {ago:.0} s ago");
                }
                lines.push(l);
            }
            Err(e) => problems.push(format!("lease {name}: {e:#}")),
        }
    }

    // Nodes: every control-plane and worker host registered and Ready.
    let url = format!("{endpoint}/api/v1/nodes");
    match http::get(&api, &url)
        .await
        .and_then(|b| Ok(serde_json::from_str::<serde_json::Value>(&b)?))
    {
        Ok(list) => {
            let items = list["items"].as_array().cloned().unwrap_or_default();
            for h in inv.node_hosts() {
                match items
                    .iter()
                    .find(|n| n["metadata"]["name"] == h.name.as_str())
                {
                    None => problems.push(format!("node {}: not registered", h.name)),
                    Some(n) => {
                        let node = crate::kube::nodes::Node::from_json(n)?;
                        let line = format!(
                            "node {}: {}, kubelet {}, pods {}",
                            h.name,
                            if node.ready { "Ready" } else { "NotReady" },
                            if node.kubelet_version.is_empty() {
                                "?"
                            } else {
                                &node.kubelet_version
                            },
                            n["spec"]["podCIDR"].as_str().unwrap_or("-"),
                        );
                        if node.ready {
                            lines.push(line);
                        } else {
                            problems.push(line);
                        }
                    }
                }
            }
        }
        Err(e) => problems.push(format!("nodes: {e:#}")),
    }

    Ok(Health {
        healthy: lines,
        problems,
    })
}
