//! etcd membership: what each member started with (`clusters/<name>/etcd-members.json`), the
//! member list/add/promote/remove and move-leader calls through etcd's JSON gateway over TLS,
//! and the quorum guards that every membership change passes.
//!
//! Each member keeps the `--initial-cluster`/`--initial-cluster-state` it first started with:
//! etcd reads them only on its first start, and rendering them from today's inventory would
//! change (and so restart) every existing member's unit when the cluster grows.
//!
//! Growth keeps the quorum at every instant: a new member is added as a learner (etcd >= 3.4;
//! it counts in no quorum), started, and promoted once it caught up; one member at a time
//! ([`join_member`], [`promote_when_ready`], run by the etcd phase of `join`). Removal only
//! when the members of now can commit it and those left keep a quorum, the leadership moved
//! away first ([`remove_member`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::diag::UserError;
use crate::engine::Context;
use crate::engine::runner::JournalEntry;
use crate::inventory::{Host, Inventory};
use crate::kube::http;
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
            .filter(|h| set_up.contains(h.name.as_str()))
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
                .map(|h| (h.name.to_string(), start.clone()))
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
/// has no member yet; else (a host not yet added) as a joiner of the running cluster, which
/// only `join` may start (it adds the member first): the bool is false then. A joiner's
/// `--initial-cluster` is known before `member add` runs, since `join` adds members one at a
/// time in [`join_order`]: the recorded members, the joiners before it, and itself.
pub fn start_for(ctx: &Context, h: &Host) -> anyhow::Result<(EtcdStart, bool)> {
    match Membership::load(ctx)? {
        None => Ok((EtcdStart::new_cluster(ctx.inv()), true)),
        Some(m) => match m.members.get(h.name.as_str()) {
            Some(s) => Ok((s.clone(), true)),
            None => {
                let inv = ctx.inv();
                let mut names: Vec<String> = m
                    .members
                    .keys()
                    .filter_map(|n| inv.host(n))
                    .map(|m| format!("{}={}", m.name, peer_url(m)))
                    .collect();
                for j in join_order(ctx, &m) {
                    if j == h.name {
                        break;
                    }
                    if m.members.contains_key(&j) {
                        continue; // recorded: among the members above already
                    }
                    if let Some(o) = inv.host(&j) {
                        names.push(format!("{}={}", o.name, peer_url(o)));
                    }
                }
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

/// The etcd hosts a `join` adds (those of `RunOptions::joining`), in the order they become
/// members, one at a time: those already recorded first (a run stopped after their `member
/// add` resumes them), then the others in inventory order.
pub fn join_order(ctx: &Context, record: &Membership) -> Vec<String> {
    let joining: Vec<&Host> = ctx
        .inv()
        .etcd_hosts()
        .filter(|h| ctx.options.joining.iter().any(|n| *n == h.name))
        .collect();
    let (first, then): (Vec<&Host>, Vec<&Host>) = joining
        .into_iter()
        .partition(|h| record.members.contains_key(h.name.as_str()));
    first
        .into_iter()
        .chain(then)
        .map(|h| h.name.to_string())
        .collect()
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
    /// A learner (etcd >= 3.4): it receives the log but does not vote, so it counts in no
    /// quorum until it is promoted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
}

impl Member {
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }

    /// A voter that runs: what a quorum is made of.
    pub fn is_voter(&self) -> bool {
        !self.is_learner
    }

    /// Added but not yet a started voter: a learner, or a voter that never started.
    pub fn pending(&self) -> bool {
        self.is_learner || !self.started()
    }

    /// How people and etcdctl name it: its name, else (never started) its peer URL.
    pub fn label(&self) -> String {
        if self.started() {
            self.name.clone()
        } else {
            self.peer_urls.join(",")
        }
    }

    /// etcdctl's hexadecimal ID.
    pub fn hex_id(&self) -> String {
        format!("{:x}", self.id.parse::<u64>().unwrap_or_default())
    }
}

/// Members from a `/v3/cluster/member/list` (or add/remove/promote) answer.
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
            is_learner: m["isLearner"].as_bool().unwrap_or(false),
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

/// Votes needed for a cluster of `n` voting members.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The quorum guard for adding a member to `voters` voting members of which `healthy` answer,
/// with `pending` (learners or voters that never started) already in the cluster. A learner
/// counts in no quorum until its promotion, which happens once it runs and caught up; a voter
/// added without being a learner (etcd < 3.4) counts at once, while it has not started yet.
pub fn guard_add(
    voters: usize,
    healthy: usize,
    pending: &[String],
    learner: bool,
) -> Result<(), String> {
    if !pending.is_empty() {
        return Err(format!(
            "etcd member(s) {} were added but are not started voters yet: clusterctl changes one member at a time",
            pending.join(", ")
        ));
    }
    if healthy < quorum(voters) {
        return Err(format!(
            "{healthy} of {voters} etcd members answer, below the quorum of {}: bring them back first",
            quorum(voters)
        ));
    }
    if !learner && healthy < quorum(voters + 1) {
        return Err(format!(
            "adding a voting member that has not started yet makes {} members with a quorum of {}, and only {healthy} would be up (this etcd has no learners: upgrade to 3.4 or later)",
            voters + 1,
            quorum(voters + 1)
        ));
    }
    Ok(())
}

/// The quorum guard for removing one member from `voters` voting members of which `healthy`
/// answer: the removal must be committed by a quorum of the members of now, and the members
/// left must keep a quorum of their own.
pub fn guard_remove(
    voters: usize,
    healthy: usize,
    target_is_voter: bool,
    target_healthy: bool,
) -> Result<(), String> {
    if healthy < quorum(voters) {
        return Err(format!(
            "{healthy} of {voters} etcd members answer, below the quorum of {} that must commit the removal",
            quorum(voters)
        ));
    }
    if !target_is_voter {
        return Ok(());
    }
    if voters <= 1 {
        return Err("it is the last voting etcd member".into());
    }
    let left = healthy - usize::from(target_healthy);
    if left < quorum(voters - 1) {
        return Err(format!(
            "{left} healthy member(s) would be left of {}, below their quorum of {}",
            voters - 1,
            quorum(voters - 1)
        ));
    }
    Ok(())
}

/// etcd's JSON gateway on the members of a cluster.
pub struct Etcd {
    http: reqwest::Client,
    /// `https://addr:2379` of the members to ask, in order.
    pub endpoints: Vec<String>,
}

/// The answer of etcd that means "not yet, ask again": a reconfiguration right after another
/// (every member must have been connected for 5 s), a learner still catching up.
fn transient(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("unhealthy cluster")
        || s.contains("in sync with leader")
        || s.contains("leader changed")
        || s.contains("no leader")
}

/// `endpoints` without those in `urls` (trailing slashes aside); all of them when that would
/// leave none (a lone member is still asked: there is no other).
fn endpoints_without(endpoints: &[String], urls: &[String]) -> Vec<String> {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let rest: Vec<String> = endpoints
        .iter()
        .filter(|ep| !urls.iter().any(|u| same(u, ep)))
        .cloned()
        .collect();
    if rest.is_empty() {
        endpoints.to_vec()
    } else {
        rest
    }
}

impl Etcd {
    /// A client for the recorded members (else the inventory's etcd hosts).
    pub fn new(ctx: &Context) -> anyhow::Result<Etcd> {
        let http = crate::phases::verify::etcd_client(ctx)?;
        let recorded = Membership::load(ctx)?.unwrap_or_default();
        let inv = ctx.inv();
        let mut hosts: Vec<&Host> = inv
            .etcd_hosts()
            .filter(|h| recorded.members.contains_key(h.name.as_str()))
            .collect();
        if hosts.is_empty() {
            hosts = inv.etcd_hosts().collect();
        }
        Ok(Etcd {
            http,
            endpoints: hosts
                .iter()
                .map(|h| Inventory::url(h.address, 2379))
                .collect(),
        })
    }

    /// The same client without the endpoints in `urls` (a member's client URLs): to ask the
    /// other members about it ([`endpoints_without`]).
    pub fn without(&self, urls: &[String]) -> Etcd {
        Etcd {
            http: self.http.clone(),
            endpoints: endpoints_without(&self.endpoints, urls),
        }
    }

    /// POST to one endpoint.
    pub async fn call(&self, endpoint: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let url = format!("{endpoint}{path}");
        let s = http::send(self.http.post(&url).body(body.to_string()), &url).await?;
        serde_json::from_str(&s.body).with_context(|| format!("{url}: not JSON"))
    }

    /// POST to the first member that answers. An answer of etcd (an error it gave) is
    /// returned as is; only members that cannot be reached are skipped.
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

    /// `call_any`, again every second while etcd says "not yet" (see [`transient`]), up to
    /// `within`.
    pub async fn call_retrying(
        &self,
        what: &str,
        path: &str,
        body: &Value,
        within: Duration,
    ) -> anyhow::Result<Value> {
        crate::kube::wait_until(what, within, Duration::from_secs(1), || async {
            match self.call_any(path, body).await {
                Ok(v) => Ok(crate::kube::Wait::Done(Ok(v))),
                Err(e) if transient(&e) => Ok(crate::kube::Wait::Pending(format!("{e:#}"))),
                Err(e) => Ok(crate::kube::Wait::Done(Err(e))),
            }
        })
        .await
        .and_then(|r| r)
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
                return Some((m.label(), "not started".to_string()));
            };
            self.status(url)
                .await
                .err()
                .map(|e| (m.label(), format!("{e:#}")))
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The leader's member ID and the version, from the first member whose status answers.
    pub async fn leader_and_version(&self, members: &[Member]) -> anyhow::Result<(String, String)> {
        let mut errors = Vec::new();
        for m in members.iter().filter(|m| m.started() && m.is_voter()) {
            let Some(url) = m.client_urls.first() else {
                continue;
            };
            match self.status(url).await {
                Ok(s) => {
                    return Ok((
                        s["leader"].as_str().unwrap_or_default().to_string(),
                        s["version"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        anyhow::bail!("no etcd member told its status: {}", errors.join("; "))
    }

    /// Moves the leadership from `leader` to `target` (etcd's move-leader: only the leader
    /// takes the request).
    pub async fn move_leader(&self, leader: &Member, target: &Member) -> anyhow::Result<()> {
        let url = leader
            .client_urls
            .first()
            .ok_or_else(|| anyhow::anyhow!("the leader {} has no client URL", leader.name))?;
        crate::kube::wait_until(
            &format!("etcd move-leader {} -> {}", leader.name, target.name),
            Duration::from_secs(30),
            Duration::from_secs(1),
            || async {
                match self
                    .call(
                        url,
                        "/v3/maintenance/transfer-leadership",
                        &json!({"targetID": target.id}),
                    )
                    .await
                {
                    Ok(_) => Ok(crate::kube::Wait::Done(())),
                    Err(e) => Ok(crate::kube::Wait::Pending(format!("{e:#}"))),
                }
            },
        )
        .await
    }
}

/// Whether etcd `version` (`3.4.23`) has learners (3.4 and later).
pub fn has_learners(version: &str) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (3, 4)
}

/// The guard numbers of `members`: (voters, healthy voters, pending members by label).
async fn counts(
    etcd: &Etcd,
    members: &[Member],
) -> (usize, usize, Vec<String>, Vec<(String, String)>) {
    let voters: Vec<Member> = members.iter().filter(|m| m.is_voter()).cloned().collect();
    let down = etcd.unhealthy(&voters).await;
    let pending = members
        .iter()
        .filter(|m| m.pending())
        .map(Member::label)
        .collect();
    (voters.len(), voters.len() - down.len(), pending, down)
}

/// Before a joining etcd host converges (`join`): makes it a member as a learner, unless it is
/// one already (a run stopped after `member add` resumes it: it is started, not added again),
/// and records how it starts. The guard first: one member at a time, and the cluster must
/// have its quorum now and after the member's promotion. With `dry_run`, says what it would do.
pub async fn join_member(ctx: &Context, h: &Host, dry_run: bool) -> anyhow::Result<Vec<String>> {
    let etcd = Etcd::new(ctx)?;
    let members = etcd.members().await.map_err(|e| {
        UserError::failed(format!(
            "cannot read etcd's member list to add {}: {e:#}",
            h.name
        ))
    })?;
    let peer = peer_url(h);
    let (planned, _) = start_for(ctx, h)?;
    let mine = members.iter().find(|m| m.peer_urls.contains(&peer));
    if let Some(m) = mine {
        if m.started() && m.name != h.name {
            return Err(UserError::failed(format!(
                "etcd member {} (ID {}) already has {}'s peer URL {peer}: remove it (`clusterctl reset --hosts {}` or `etcdctl member remove {}`) before adding {}",
                m.name, m.id, h.name, m.name, m.hex_id(), h.name
            ))
            .into());
        }
        let what = match (m.started(), m.is_learner) {
            (true, false) => format!("{} is a member already (ID {})", h.name, m.id),
            (true, true) => format!(
                "{} is a learner already (ID {}): it is promoted once it caught up",
                h.name, m.id
            ),
            (false, learner) => format!(
                "{} was added before ({}ID {}) but never started: starting it, not adding it again",
                h.name,
                if learner { "as a learner, " } else { "" },
                m.id
            ),
        };
        if !dry_run {
            let mut record = Membership::load(ctx)?.unwrap_or_default();
            if !record.members.contains_key(h.name.as_str()) {
                // Added by a run that stopped before it recorded the member: how it must
                // start is what etcd has now.
                record.members.insert(
                    h.name.to_string(),
                    EtcdStart {
                        initial_cluster: initial_cluster(&members, &h.name, &peer),
                        initial_state: "existing".into(),
                    },
                );
                record.save(ctx)?;
            }
        }
        return Ok(vec![what]);
    }
    let (voters, healthy, pending, down) = counts(&etcd, &members).await;
    let (_, version) = etcd.leader_and_version(&members).await.unwrap_or_default();
    let learner = version.is_empty() || has_learners(&version);
    guard_add(voters, healthy, &pending, learner).map_err(|e| {
        UserError::failed(format!(
            "not adding {} to etcd: {e}{}",
            h.name,
            if down.is_empty() {
                String::new()
            } else {
                format!(
                    " (not answering: {})",
                    down.iter()
                        .map(|(n, e)| format!("{n}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ))
    })?;
    let how = if learner {
        "as a learner"
    } else {
        "as a voter (etcd < 3.4)"
    };
    if dry_run {
        return Ok(vec![format!(
            "would add {} {how} (member add, {voters} voting member(s), {healthy} healthy), start it with --initial-cluster-state=existing, wait until it caught up, then promote it",
            h.name
        )]);
    }
    // Recorded first: a run killed right after the add renders the same unit on its re-run.
    let mut record = Membership::load(ctx)?.unwrap_or_default();
    record.members.insert(h.name.to_string(), planned.clone());
    record.save(ctx)?;
    let v = etcd
        .call_retrying(
            &format!("etcd member add {} ({peer}) {how}", h.name),
            "/v3/cluster/member/add",
            &json!({"peerURLs": [peer], "isLearner": learner}),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| UserError::failed(format!("etcd member add {} ({peer}): {e:#}", h.name)))?;
    if std::env::var_os(ABORT_AFTER_MEMBER_ADD).is_some() {
        eprintln!(
            "{ABORT_AFTER_MEMBER_ADD}: aborting right after member add of {}",
            h.name
        );
        std::process::abort();
    }
    let id = v["member"]["ID"].as_str().unwrap_or("?").to_string();
    let after = parse_members(&v);
    let actual = initial_cluster(&after, &h.name, &peer);
    if same_members(&actual, &planned.initial_cluster) {
        return Ok(vec![format!(
            "member add {} ({peer}) {how}: ID {id}, {} members now",
            h.name,
            after.len()
        )]);
    }
    // etcd's members are not those recorded (changed by hand?): record what etcd has, so the
    // next run renders the member's unit with it; this one stops before starting it.
    record.members.insert(
        h.name.to_string(),
        EtcdStart {
            initial_cluster: actual.clone(),
            initial_state: "existing".into(),
        },
    );
    record.save(ctx)?;
    Err(UserError::failed(format!(
        "etcd member add {} (ID {id}): etcd's members ({actual}) are not those {} recorded ({}): recorded them; run `clusterctl join` again to start {} with them",
        h.name,
        Membership::path(ctx).display(),
        planned.initial_cluster,
        h.name
    ))
    .into())
}

/// Set to make `join` abort (SIGABRT, as a kill would stop it) right after an etcd `member
/// add` was answered: for tests of a run killed at the worst moment. Never set it otherwise.
pub const ABORT_AFTER_MEMBER_ADD: &str = "CLUSTERCTL_TEST_ABORT_AFTER_MEMBER_ADD";

/// Two `--initial-cluster` values with the same members in any order.
fn same_members(a: &str, b: &str) -> bool {
    let set = |s: &str| {
        s.split(',')
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
    };
    set(a) == set(b)
}

/// The gate of an etcd host whose member may be new: it started, and a learner is promoted
/// once it caught up (etcd refuses the promotion until then: asked again every second). For
/// a member that started as a voter long ago this is one member list. Returns what it did.
pub async fn promote_when_ready(ctx: &Context, h: &Host) -> anyhow::Result<Vec<String>> {
    let peer = peer_url(h);
    let etcd = Etcd::new(ctx)?;
    let mut lines = Vec::new();
    let t = std::time::Instant::now();
    let promoted = std::sync::atomic::AtomicBool::new(false);
    crate::kube::wait_until(
        &format!("etcd member {} started and a voter", h.name),
        Duration::from_secs(180),
        Duration::from_secs(1),
        || async {
            let ms = etcd.members().await?;
            let Some(me) = ms.iter().find(|m| m.peer_urls.contains(&peer)) else {
                anyhow::bail!(
                    "{} ({peer}) is not an etcd member (removed meanwhile?): run `clusterctl join` again",
                    h.name
                );
            };
            if !me.started() {
                return Ok(crate::kube::Wait::Pending(format!(
                    "{} has not started yet",
                    h.name
                )));
            }
            if !me.is_learner {
                return Ok(crate::kube::Wait::Done(()));
            }
            // Promotion makes it a voter: the voters now plus it must keep a quorum.
            let (voters, healthy, _, _) = counts(&etcd, &ms).await;
            if healthy + 1 < quorum(voters + 1) {
                return Ok(crate::kube::Wait::Pending(format!(
                    "promoting {} needs {} of {} members up; {healthy} voters answer",
                    h.name,
                    quorum(voters + 1),
                    voters + 1
                )));
            }
            match etcd
                .call_any("/v3/cluster/member/promote", &json!({"ID": me.id}))
                .await
            {
                Ok(_) => {
                    promoted.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(crate::kube::Wait::Done(()))
                }
                Err(e) if transient(&e) => Ok(crate::kube::Wait::Pending(format!("{e:#}"))),
                Err(e) => Err(e),
            }
        },
    )
    .await?;
    if promoted.load(std::sync::atomic::Ordering::Relaxed) {
        let ms = etcd.members().await?;
        lines.push(format!(
            "{} is a voting member ({} voters) [{:.1}s]",
            h.name,
            ms.iter().filter(|m| m.is_voter()).count(),
            t.elapsed().as_secs_f64()
        ));
    }
    Ok(lines)
}

/// Removes `target` from etcd, keeping the quorum: refused when the members of now could not
/// commit it or those left would have no quorum; when it leads, the leadership moves to a
/// healthy voter first. The record forgets it. Returns what was done.
pub async fn remove_member(
    ctx: &Context,
    etcd: &Etcd,
    target: &Member,
) -> anyhow::Result<Vec<String>> {
    let members = etcd.members().await?;
    let Some(target) = members.iter().find(|m| m.id == target.id).cloned() else {
        return Ok(vec![format!(
            "etcd: {} is no member any more",
            target.label()
        )]);
    };
    let (voters, healthy, _, down) = counts(etcd, &members).await;
    let target_healthy = !down.iter().any(|(n, _)| *n == target.label());
    guard_remove(voters, healthy, target.is_voter(), target_healthy).map_err(|e| {
        UserError::failed(format!(
            "not removing etcd member {}: {e}{}. Nothing was removed.",
            target.label(),
            if down.is_empty() {
                String::new()
            } else {
                format!(
                    " (not answering: {})",
                    down.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ))
    })?;
    let mut lines = move_leader_away(etcd, &target).await?;
    // Asked of the other members: the removed one stops itself as it applies its removal,
    // and its own answer is then an error ("server stopped") although the removal was
    // committed (seen in static_pods_lab, followed by a timeout from the next member and
    // "member not found" from the last one).
    let others = etcd.without(&target.client_urls);
    let removed = others
        .call_retrying(
            &format!("etcd member remove {}", target.label()),
            "/v3/cluster/member/remove",
            &json!({"ID": target.id}),
            Duration::from_secs(60),
        )
        .await;
    let left = match removed {
        Ok(v) => parse_members(&v),
        // An answer lost on the way (a member that stopped, a timeout) or a removal an
        // earlier, killed run committed: the members of now tell whether it is gone.
        Err(e) => match others.members().await {
            Ok(now) if !now.iter().any(|m| m.id == target.id) => now,
            _ => {
                return Err(UserError::failed(format!(
                    "etcd member remove {} (ID {}): {e:#}",
                    target.label(),
                    target.id
                ))
                .into());
            }
        },
    };
    lines.push(format!(
        "etcd: member {} removed, {} left ({} voting)",
        target.label(),
        left.len(),
        left.iter().filter(|m| m.is_voter()).count()
    ));
    let mut record = Membership::load(ctx)?.unwrap_or_default();
    if record.members.remove(&target.name).is_some() {
        record.save(ctx)?;
    }
    Ok(lines)
}

/// When `target` leads etcd, moves the leadership to another healthy voter (etcd's
/// move-leader), so its removal or stop costs no election. Returns what was done.
pub async fn move_leader_away(etcd: &Etcd, target: &Member) -> anyhow::Result<Vec<String>> {
    move_leader_away_preferring(etcd, target, &[]).await
}

/// [`move_leader_away`], handing over to a member named in `preferred` when one of them is a
/// healthy voter: a roll that restarts members one at a time passes the members it already
/// restarted, so the leadership changes once in the whole roll.
pub async fn move_leader_away_preferring(
    etcd: &Etcd,
    target: &Member,
    preferred: &[String],
) -> anyhow::Result<Vec<String>> {
    let members = etcd.members().await?;
    let Ok((leader, _)) = etcd.leader_and_version(&members).await else {
        return Ok(vec![]);
    };
    if leader != target.id {
        return Ok(vec![]);
    }
    let voters: Vec<Member> = members
        .iter()
        .filter(|m| m.id != target.id && m.is_voter() && m.started())
        .cloned()
        .collect();
    let down = etcd.unhealthy(&voters).await;
    let healthy = |m: &&Member| !down.iter().any(|(n, _)| *n == m.label());
    let Some(next) = voters
        .iter()
        .filter(healthy)
        .find(|m| preferred.contains(&m.name))
        .or_else(|| voters.iter().find(healthy))
    else {
        return Ok(vec![]);
    };
    etcd.move_leader(target, next).await?;
    Ok(vec![format!(
        "etcd: leadership moved from {} to {}",
        target.name, next.name
    )])
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

/// `member remove` of each of `r.removing`, one at a time, each against the members left
/// ([`remove_member`]: quorum-guarded, the leadership moved away first when it leads; the
/// record follows). Returns what was done.
pub async fn remove_members(ctx: &Context, r: &Removal) -> anyhow::Result<Vec<String>> {
    let etcd = Etcd::new(ctx)?;
    let mut lines = Vec::new();
    for m in &r.removing {
        lines.extend(remove_member(ctx, &etcd, m).await?);
    }
    Ok(lines)
}

/// At the start of `join`: a member added but never made a started voter (a learner, or a
/// voter that never started) whose host is no etcd host of the inventory any more is removed
/// (etcd takes one learner at a time, and an unstarted voter weighs on the quorum). Those
/// whose host is still there are left to the etcd phase, which starts and promotes them.
/// With `dry_run`, says what it would do.
pub async fn settle_departed(ctx: &Context, dry_run: bool) -> anyhow::Result<Vec<String>> {
    if ctx.inv().etcd_hosts().next().is_none() || Membership::load(ctx)?.is_none() {
        return Ok(vec![]);
    }
    let etcd = Etcd::new(ctx)?;
    let Ok(members) = etcd.members().await else {
        // The etcd phase reports an unreachable etcd with its own words.
        return Ok(vec![]);
    };
    let peers: std::collections::BTreeSet<String> = ctx.inv().etcd_hosts().map(peer_url).collect();
    let mut lines = Vec::new();
    for m in members.iter().filter(|m| m.pending()) {
        if m.peer_urls.iter().any(|u| peers.contains(u)) {
            continue;
        }
        if dry_run {
            lines.push(format!(
                "etcd: would remove member {} (ID {}): added but never made a started voter, and its host is no etcd host of the inventory",
                m.label(),
                m.id
            ));
            continue;
        }
        lines.extend(remove_member(ctx, &etcd, m).await.map_err(|e| {
            UserError::failed(format!(
                "{e:#}\n  etcd member {} (ID {}) was added but never started, and its host is no etcd host of {}: put the host back into the inventory and run `clusterctl join`, or restore etcd from a backup",
                m.label(),
                m.id,
                ctx.loaded.path.display()
            ))
        })?);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member's removal is asked of the other members: the removed member stops as it
    /// applies it, and its answer is lost. A lone member is still asked (there is no other).
    #[test]
    fn a_removal_is_asked_of_the_other_members() {
        let all = [
            "https://10.0.0.1:2379",
            "https://10.0.0.2:2379/",
            "https://10.0.0.3:2379",
        ]
        .map(String::from);
        let members = parse_members(&list());
        assert_eq!(members[0].name, "h1");
        assert_eq!(
            endpoints_without(&all, &members[0].client_urls),
            ["https://10.0.0.2:2379/", "https://10.0.0.3:2379"]
        );
        assert_eq!(
            endpoints_without(&all, &members[1].client_urls),
            ["https://10.0.0.1:2379", "https://10.0.0.3:2379"],
            "a trailing slash is the same URL"
        );
        assert_eq!(
            endpoints_without(&all[..1], &members[0].client_urls),
            ["https://10.0.0.1:2379"]
        );
    }

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
    fn learners_and_unstarted_members_are_pending() {
        let v = json!({"members": [
            {"ID": "1", "name": "h1", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": ["https://10.0.0.1:2379"]},
            {"ID": "2", "peerURLs": ["https://10.0.0.2:2380"], "isLearner": true},
            {"ID": "3", "name": "h3", "peerURLs": ["https://10.0.0.3:2380"], "clientURLs": ["https://10.0.0.3:2379"], "isLearner": true}
        ]});
        let ms = parse_members(&v);
        assert_eq!(
            ms.iter()
                .map(|m| (m.is_voter(), m.pending()))
                .collect::<Vec<_>>(),
            [(true, false), (false, true), (false, true)]
        );
        assert_eq!(ms[1].label(), "https://10.0.0.2:2380");
        assert_eq!(ms[2].hex_id(), "3");
    }

    #[test]
    fn growing_keeps_the_quorum_at_every_instant() {
        // One member: a learner may join (it counts in no quorum until promoted) ...
        assert_eq!(guard_add(1, 1, &[], true), Ok(()));
        // ... a voter that has not started yet may not: 2 members, quorum 2, 1 up.
        let e = guard_add(1, 1, &[], false).unwrap_err();
        assert!(e.contains("quorum of 2"), "{e}");
        // Even counts likewise: 2 -> 3 without learners needs both up (2 of 3).
        assert_eq!(guard_add(2, 2, &[], false), Ok(()));
        assert_eq!(
            guard_add(4, 3, &[], false),
            Ok(()),
            "4 -> 5 with 3 up: 3 of 5"
        );
        assert!(
            guard_add(3, 2, &[], false).is_err(),
            "3 -> 4 with 2 up: 2 of 4"
        );
        assert_eq!(
            guard_add(3, 2, &[], true),
            Ok(()),
            "3 with one down keeps 2 of 3"
        );
        // No quorum now: nothing is added.
        let e = guard_add(3, 1, &[], true).unwrap_err();
        assert!(e.contains("1 of 3"), "{e}");
        // One member at a time.
        let e = guard_add(3, 3, &["h4".into()], true).unwrap_err();
        assert!(
            e.contains("h4") && e.contains("one member at a time"),
            "{e}"
        );
    }

    #[test]
    fn shrinking_keeps_the_quorum_at_every_instant() {
        // 5 -> 4, 3 -> 2, 2 -> 1 with everyone up.
        assert_eq!(guard_remove(5, 5, true, true), Ok(()));
        assert_eq!(guard_remove(3, 3, true, true), Ok(()));
        assert_eq!(guard_remove(2, 2, true, true), Ok(()));
        // The last voter stays.
        assert!(guard_remove(1, 1, true, true).unwrap_err().contains("last"));
        // A down member goes when the rest keeps its quorum ...
        assert_eq!(guard_remove(3, 2, true, false), Ok(()));
        // ... but not when the removal itself cannot be committed (1 of 2 answers).
        let e = guard_remove(2, 1, true, false).unwrap_err();
        assert!(e.contains("commit"), "{e}");
        // Not when those left would lack a quorum: 5 members, 2 down, removing a healthy one.
        let e = guard_remove(5, 3, true, true).unwrap_err();
        assert!(e.contains("2 healthy member(s) would be left of 4"), "{e}");
        assert_eq!(guard_remove(4, 3, true, true), Ok(()), "2 of 3 left");
        // A learner weighs on no quorum.
        assert_eq!(guard_remove(1, 1, false, false), Ok(()));
    }

    #[test]
    fn learners_came_with_etcd_3_4() {
        assert!(has_learners("3.4.23"));
        assert!(has_learners("3.5.16"));
        assert!(!has_learners("3.3.27"));
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
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let etcd = set_up_in_phase(&p, "etcd");
        assert_eq!(etcd.into_iter().collect::<Vec<_>>(), ["h1"]);
        let any = set_up_in_phase(&p, "");
        assert_eq!(any.into_iter().collect::<Vec<_>>(), ["h1", "h4"]);
    }
}
