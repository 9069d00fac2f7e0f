//! etcd membership: what each member started with (`clusters/<name>/etcd-members.json`), the
//! member list/add/remove calls through etcd's JSON gateway over TLS, and adding one member to
//! a running cluster (`join` of a new etcd host).
//!
//! Each member keeps the `--initial-cluster`/`--initial-cluster-state` it first started with:
//! etcd reads them only on its first start, and rendering them from today's inventory would
//! change (and so restart) every existing member's unit when the cluster grows.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::diag::UserError;
use crate::inventory::{Host, Inventory};
use crate::phases::Context;
use crate::phases::health;
use crate::phases::runner::JournalEntry;
use crate::render::{EtcdStart, peer_url};

/// The record's file name under the cluster's state directory.
pub const MEMBERS_FILE: &str = "etcd-members.json";

/// Per member name, how it started (its flags stay these).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub members: BTreeMap<String, EtcdStart>,
}

impl Membership {
    pub fn path(ctx: &Context) -> std::path::PathBuf {
        ctx.state.root.join(MEMBERS_FILE)
    }

    /// The record, or for a cluster set up before it existed, the etcd hosts the journal shows
    /// as set up (they started together as a new cluster); None for a cluster with no member.
    pub fn load(ctx: &Context) -> anyhow::Result<Option<Membership>> {
        let p = Self::path(ctx);
        if p.is_file() {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let m: Membership = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an etcd membership record", p.display()))?;
            return Ok(Some(m));
        }
        let set_up = set_up_in_phase(&ctx.state.journal(), "etcd");
        let started: Vec<&Host> = ctx
            .inv()
            .etcd_hosts()
            .filter(|h| set_up.contains(&h.name))
            .collect();
        if started.is_empty() {
            return Ok(None);
        }
        let start = EtcdStart {
            initial_cluster: started
                .iter()
                .map(|h| format!("{}={}", h.name, peer_url(h)))
                .collect::<Vec<_>>()
                .join(","),
            initial_state: "new".into(),
        };
        Ok(Some(Membership {
            members: started
                .iter()
                .map(|h| (h.name.clone(), start.clone()))
                .collect(),
        }))
    }

    pub fn save(&self, ctx: &Context) -> anyhow::Result<()> {
        let p = Self::path(ctx);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }
}

/// How the member on `h` starts: as recorded; as a member of a new cluster when the cluster
/// has no member yet; else (a host not yet added) as a joiner of today's members, which only
/// `join` may start (it adds the member first): the bool is false then.
pub fn start_for(ctx: &Context, h: &Host) -> anyhow::Result<(EtcdStart, bool)> {
    match Membership::load(ctx)? {
        None => Ok((EtcdStart::new_cluster(ctx.inv()), true)),
        Some(m) => match m.members.get(&h.name) {
            Some(s) => Ok((s.clone(), true)),
            None => {
                let mut names: Vec<String> = m
                    .members
                    .keys()
                    .filter_map(|n| ctx.inv().host(n))
                    .map(|m| format!("{}={}", m.name, peer_url(m)))
                    .collect();
                names.push(format!("{}={}", h.name, peer_url(h)));
                Ok((
                    EtcdStart {
                        initial_cluster: names.join(","),
                        initial_state: "existing".into(),
                    },
                    false,
                ))
            }
        },
    }
}

/// Every journal entry in file order.
pub fn journal_entries(path: &Path) -> Vec<JournalEntry> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Per host, its journal entries since its last `reset` (a reset host starts over).
pub fn since_reset(path: &Path) -> BTreeMap<String, Vec<JournalEntry>> {
    let mut m: BTreeMap<String, Vec<JournalEntry>> = BTreeMap::new();
    for e in journal_entries(path) {
        if e.command == "reset" {
            // Only a finished reset of the host starts it over (the playbook's last host
            // phase, or the single entry older versions wrote); the hosts that stay are in
            // the journal of a partial reset too (their balancers reloaded).
            if e.ok && (e.phase == crate::phases::reset::DONE_PHASE || e.phase == "reset") {
                m.remove(&e.host);
            }
        } else {
            m.entry(e.host.clone()).or_default().push(e);
        }
    }
    m
}

/// Hosts with a successful `phase` by `init` or `join` since their last reset.
pub fn set_up_in_phase(path: &Path, phase: &str) -> std::collections::BTreeSet<String> {
    since_reset(path)
        .into_iter()
        .filter(|(_, es)| {
            es.iter().any(|e| {
                e.ok && (e.command == "init" || e.command == "join")
                    && (phase.is_empty() || e.phase == phase)
            })
        })
        .map(|(h, _)| h)
        .collect()
}

/// One member as etcd's member list shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub id: String,
    /// Empty while the member was added but has not started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl Member {
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// Members from a `/v3/cluster/member/list` (or add/remove) answer.
pub fn parse_members(v: &Value) -> Vec<Member> {
    let strings = |x: &Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| Member {
            // uint64 in the JSON gateway is a string.
            id: m["ID"]
                .as_str()
                .map(str::to_string)
                .or_else(|| m["ID"].as_u64().map(|n| n.to_string()))
                .unwrap_or_default(),
            name: m["name"].as_str().unwrap_or_default().to_string(),
            peer_urls: strings(&m["peerURLs"]),
            client_urls: strings(&m["clientURLs"]),
        })
        .collect()
}

/// `--initial-cluster` for the member at `peer` named `name`: every member by its peer URL, the
/// one not started yet (the new one) under `name`.
pub fn initial_cluster(members: &[Member], name: &str, peer: &str) -> String {
    members
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls.first()?;
            let n = if url == peer {
                name
            } else if m.started() {
                m.name.as_str()
            } else {
                return None;
            };
            Some(format!("{n}={url}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Votes needed for a cluster of `n` members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// etcd's JSON gateway on the members of a cluster.
pub struct Etcd {
    http: reqwest::Client,
    /// `https://addr:2379` of the members to ask, in order.
    pub endpoints: Vec<String>,
}

impl Etcd {
    /// A client for the recorded members (else the inventory's etcd hosts).
    pub fn new(ctx: &Context) -> anyhow::Result<Etcd> {
        let http = crate::phases::verify::etcd_client(ctx)?;
        let recorded = Membership::load(ctx)?.unwrap_or_default();
        let inv = ctx.inv();
        let mut hosts: Vec<&Host> = inv
            .etcd_hosts()
            .filter(|h| recorded.members.contains_key(&h.name))
            .collect();
        if hosts.is_empty() {
            hosts = inv.etcd_hosts().collect();
        }
        Ok(Etcd {
            http,
            endpoints: hosts
                .iter()
                .map(|h| Inventory::url(&h.address, 2379))
                .collect(),
        })
    }

    /// POST to one endpoint.
    pub async fn call(&self, endpoint: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{endpoint}{path}");
        let s = health::send(self.http.post(&url).body(body.to_string()), &url).await?;
        serde_json::from_str(&s.body).with_context(|| format!("{url}: not JSON"))
    }

    /// POST to the first member that answers.
    pub async fn call_any(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match self.call(ep, path, body).await {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        anyhow::bail!("no etcd member answered: {}", errors.join("; "))
    }

    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        Ok(parse_members(
            &self.call_any("/v3/cluster/member/list", &json!({})).await?,
        ))
    }

    /// `/v3/maintenance/status` of one member.
    pub async fn status(&self, client_url: &str) -> anyhow::Result<Value> {
        self.call(client_url, "/v3/maintenance/status", &json!({}))
            .await
    }

    /// Started members whose status does not answer: (name, error).
    pub async fn unhealthy(&self, members: &[Member]) -> Vec<(String, String)> {
        let checks = members.iter().map(|m| async move {
            let Some(url) = m.client_urls.first() else {
                return Some((m.name.clone(), "no client URL".to_string()));
            };
            self.status(url)
                .await
                .err()
                .map(|e| (m.name.clone(), format!("{e:#}")))
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The members a reset removes and those that stay, checked: every removed member is known,
/// at least one member stays, and the members that stay keep a quorum of healthy ones.
#[derive(Debug, Default)]
pub struct Removal {
    pub removing: Vec<Member>,
    pub staying: Vec<Member>,
}

impl Removal {
    pub fn describe(&self) -> Vec<String> {
        if self.removing.is_empty() {
            return vec![];
        }
        vec![format!(
            "etcd: removing {} leaves {} member(s), quorum {}: ok",
            self.removing
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.staying.len(),
            quorum(self.staying.len())
        )]
    }
}

/// Reads the member list and checks that the members of `hosts` can go (read only). A member
/// already removed (a re-run) is not in `removing`.
pub async fn check_removal(ctx: &Context, hosts: &[&Host]) -> anyhow::Result<Removal> {
    let peers: std::collections::BTreeSet<String> = hosts
        .iter()
        .filter(|h| h.has(crate::inventory::Role::Etcd))
        .map(|h| peer_url(h))
        .collect();
    if peers.is_empty() {
        return Ok(Removal::default());
    }
    let etcd = Etcd::new(ctx)?;
    let members = etcd.members().await.map_err(|e| {
        UserError::failed(format!(
            "cannot read etcd's member list: {e:#}; nothing was done"
        ))
    })?;
    let (removing, staying): (Vec<_>, Vec<_>) = members
        .into_iter()
        .partition(|m| m.peer_urls.iter().any(|u| peers.contains(u)));
    if removing.is_empty() {
        return Ok(Removal { removing, staying });
    }
    if staying.is_empty() {
        return Err(UserError::bad_input(
            "this would remove the last etcd member(s); reset every host instead. Nothing was done.",
        )
        .into());
    }
    let down = etcd.unhealthy(&staying).await;
    let up = staying.len() - down.len();
    if up < quorum(staying.len()) {
        return Err(UserError::failed(format!(
            "removing {} would leave {up} healthy of {} etcd members, below the quorum of {} (down: {}). Bring them back first. Nothing was done.",
            removing.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
            staying.len(),
            quorum(staying.len()),
            down.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; ")
        ))
        .into());
    }
    Ok(Removal { removing, staying })
}

/// The member that leads now, by ID, as a member that answers says.
async fn leader_id(etcd: &Etcd, members: &[Member]) -> anyhow::Result<String> {
    let mut errors = Vec::new();
    for m in members {
        let Some(url) = m.client_urls.first() else {
            continue;
        };
        match etcd.status(url).await {
            Ok(v) => {
                if let Some(id) = v["leader"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| v["leader"].as_u64().map(|n| n.to_string()))
                {
                    return Ok(id);
                }
                errors.push(format!("{}: no leader in {v}", m.name));
            }
            Err(e) => errors.push(format!("{}: {e:#}", m.name)),
        }
    }
    anyhow::bail!("no member said who leads: {}", errors.join("; "))
}

/// When a member to remove leads, leadership moves to a member that stays first (through the
/// leader, `move-leader`), so removing it costs no election. Returns what was done.
pub async fn move_leader_off(ctx: &Context, r: &Removal) -> anyhow::Result<Option<String>> {
    if r.removing.is_empty() {
        return Ok(None);
    }
    let etcd = Etcd::new(ctx)?;
    let all: Vec<Member> = r.staying.iter().chain(&r.removing).cloned().collect();
    let leader = leader_id(&etcd, &all).await?;
    let Some(old) = r.removing.iter().find(|m| m.id == leader) else {
        return Ok(None);
    };
    let down: Vec<String> = etcd
        .unhealthy(&r.staying)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let Some(new) = r.staying.iter().find(|m| !down.contains(&m.name)) else {
        anyhow::bail!(
            "no healthy member to move the leadership of {} to",
            old.name
        );
    };
    let url = old
        .client_urls
        .first()
        .with_context(|| format!("member {} has no client URL", old.name))?;
    etcd.call(
        url,
        "/v3/maintenance/transfer-leadership",
        &json!({"targetID": new.id}),
    )
    .await
    .with_context(|| format!("moving etcd leadership from {} to {}", old.name, new.name))?;
    Ok(Some(format!(
        "etcd: leadership moved from {} to {} before its removal",
        old.name, new.name
    )))
}

/// `member remove`, one member at a time, each against the members left (after
/// [`check_removal`]); the membership record follows. Returns what was done.
pub async fn remove_members(ctx: &Context, r: &Removal) -> anyhow::Result<Vec<String>> {
    let etcd = Etcd::new(ctx)?;
    let mut record = Membership::load(ctx)?.unwrap_or_default();
    let mut lines = Vec::new();
    for m in &r.removing {
        let v = etcd
            .call_any("/v3/cluster/member/remove", &json!({"ID": m.id}))
            .await
            .map_err(|e| {
                UserError::failed(format!(
                    "etcd member remove {} (ID {}): {e:#}",
                    m.name, m.id
                ))
            })?;
        let left = parse_members(&v).len();
        lines.push(format!("etcd: member {} removed, {left} left", m.name));
        record.members.remove(&m.name);
        record.save(ctx)?;
        // The next removal waits until etcd has settled on the new membership.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(lines)
}

/// Adds the member on `h` to the running cluster (`member add`), unless it is a member
/// already (a re-run: a member added but not started is resumed, not added twice), and
/// records how it starts. Refuses when another added member has not started, or when a
/// member is down (the new one would count against a quorum that is not there).
pub async fn add_member(ctx: &Context, h: &Host) -> anyhow::Result<String> {
    let etcd = Etcd::new(ctx);
    let members = match &etcd {
        Ok(etcd) => etcd.members().await,
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    }
    .map_err(|e| {
        UserError::failed(format!(
            "cannot read etcd's member list to add {}: {e:#}",
            h.name
        ))
    })?;
    let etcd = etcd?;
    let peer = peer_url(h);
    let mut record = Membership::load(ctx)?.unwrap_or_default();
    let mine = members.iter().find(|m| m.peer_urls.contains(&peer));
    let what = match mine {
        Some(m) if m.started() => {
            if m.name != h.name {
                return Err(UserError::failed(format!(
                    "etcd member {} (ID {}) already has {}'s peer URL {peer}: remove it (`clusterctl reset --hosts {}` or etcdctl member remove) before adding {}",
                    m.name, m.id, h.name, m.name, h.name
                ))
                .into());
            }
            format!("{} is a started member already (ID {})", h.name, m.id)
        }
        Some(m) => format!(
            "{} was added before (ID {}) but never started: starting it, not adding it again",
            h.name, m.id
        ),
        None => {
            if let Some(o) = members.iter().find(|m| !m.started()) {
                return Err(UserError::failed(format!(
                    "etcd member {} (ID {}) was added but never started: etcd counts it in the quorum, so clusterctl adds one member at a time. Start it (run `clusterctl join` with its host in the inventory) or remove it (`etcdctl member remove {:x}`), then join {}",
                    o.peer_urls.join(","),
                    o.id,
                    o.id.parse::<u64>().unwrap_or_default(),
                    h.name
                ))
                .into());
            }
            let down = etcd.unhealthy(&members).await;
            if !down.is_empty() {
                return Err(UserError::failed(format!(
                    "etcd member(s) not answering: {}: adding {} now would leave {} of {} members up (quorum {}); bring them back first",
                    down.iter()
                        .map(|(n, e)| format!("{n} ({e})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    h.name,
                    members.len() - down.len(),
                    members.len() + 1,
                    quorum(members.len() + 1)
                ))
                .into());
            }
            // etcd refuses a reconfiguration ("unhealthy cluster") until every member has
            // been connected for 5 s: right after the previous member joined, wait for that.
            let v = crate::kube::wait_until(
                &format!("etcd member add {} ({peer})", h.name),
                Duration::from_secs(60),
                Duration::from_secs(1),
                || async {
                    match etcd
                        .call_any("/v3/cluster/member/add", &json!({"peerURLs": [peer]}))
                        .await
                    {
                        Ok(v) => Ok(crate::kube::Wait::Done(Ok(v))),
                        Err(e) if format!("{e:#}").contains("unhealthy cluster") => {
                            Ok(crate::kube::Wait::Pending(format!("{e:#}")))
                        }
                        Err(e) => Ok(crate::kube::Wait::Done(Err(e))),
                    }
                },
            )
            .await
            .and_then(|r| r)
            .map_err(|e| {
                UserError::failed(format!("etcd member add {} ({peer}): {e:#}", h.name))
            })?;
            let id = v["member"]["ID"].as_str().unwrap_or("?").to_string();
            let after = parse_members(&v);
            record.members.insert(
                h.name.clone(),
                EtcdStart {
                    initial_cluster: initial_cluster(&after, &h.name, &peer),
                    initial_state: "existing".into(),
                },
            );
            record.save(ctx)?;
            return Ok(format!(
                "member add {} ({peer}): ID {id}, {} members now",
                h.name,
                after.len()
            ));
        }
    };
    if !record.members.contains_key(&h.name) {
        record.members.insert(
            h.name.clone(),
            EtcdStart {
                initial_cluster: initial_cluster(&members, &h.name, &peer),
                initial_state: "existing".into(),
            },
        );
        record.save(ctx)?;
    }
    Ok(what)
}

/// The gate after a member joined: it answers, it is in the member list, and every member
/// started (the cluster has N+1 started members).
pub async fn wait_started(ctx: &Context, h: &Host) -> anyhow::Result<String> {
    let peer = peer_url(h);
    let etcd = Etcd::new(ctx)?;
    let url = Inventory::url(&h.address, 2379);
    crate::kube::wait_until(
        &format!("etcd member {} started", h.name),
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            etcd.status(&url).await?;
            let ms = etcd.members().await?;
            let started = ms.iter().filter(|m| m.started()).count();
            let mine = ms
                .iter()
                .any(|m| m.peer_urls.contains(&peer) && m.started());
            Ok(if mine && started == ms.len() {
                crate::kube::Wait::Done(format!(
                    "etcd: {} joined; {started} members, all started",
                    h.name
                ))
            } else {
                crate::kube::Wait::Pending(format!("{started} of {} members started", ms.len()))
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Value {
        json!({"members": [
            {"ID": "1", "name": "h1", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": ["https://10.0.0.1:2379"]},
            {"ID": "2", "name": "h2", "peerURLs": ["https://10.0.0.2:2380"], "clientURLs": ["https://10.0.0.2:2379"]},
            {"ID": "3", "name": "h3", "peerURLs": ["https://10.0.0.3:2380"], "clientURLs": ["https://10.0.0.3:2379"]},
            {"ID": "4", "peerURLs": ["https://10.0.0.5:2380"]}
        ]})
    }

    #[test]
    fn the_new_member_is_named_and_the_started_ones_keep_their_names() {
        let ms = parse_members(&list());
        assert_eq!(ms.len(), 4);
        assert!(!ms[3].started());
        assert_eq!(
            initial_cluster(&ms, "h5", "https://10.0.0.5:2380"),
            "h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380,h3=https://10.0.0.3:2380,h5=https://10.0.0.5:2380"
        );
        // Another unstarted member is not part of the new member's initial cluster.
        assert_eq!(
            initial_cluster(&ms[..3], "h6", "https://10.0.0.6:2380"),
            "h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380,h3=https://10.0.0.3:2380"
        );
    }

    #[test]
    fn quorum_of_members() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
    }

    #[test]
    fn a_reset_starts_a_host_over_in_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        let e = |cmd: &str, phase: &str, host: &str| {
            serde_json::to_string(&JournalEntry {
                time: String::new(),
                command: cmd.into(),
                phase: phase.into(),
                host: host.into(),
                inputs: String::new(),
                ok: true,
                noop: false,
            })
            .unwrap()
        };
        let lines = [
            e("init", "etcd", "h1"),
            e("init", "etcd", "h2"),
            e("init", "kubelet", "h4"),
            e("reset", "reset", "h2"),
            e("reset", "reset", "h4"),
            e("join", "kubelet", "h4"),
            // A partial reset's entries for a host that stays (its balancer reloaded) do not
            // start it over; the reset host's last phase does.
            e("reset", "reset-balancers", "h1"),
            e("init", "kubelet", "h5"),
            e("reset", "reset-host", "h5"),
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let etcd = set_up_in_phase(&p, "etcd");
        assert_eq!(etcd.into_iter().collect::<Vec<_>>(), ["h1"]);
        let any = set_up_in_phase(&p, "");
        assert_eq!(any.into_iter().collect::<Vec<_>>(), ["h1", "h4"]);
    }
}
