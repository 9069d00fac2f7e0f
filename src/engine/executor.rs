//! The one gate every change to a host goes through, and the converge loop built on it.
//!
//! An [`Executor`] runs read-only queries and changes on a host. The SSH executor does both;
//! [`DryRun`] wraps any executor, lets queries through and records changes instead of making
//! them, so `--dry-run` walks exactly the code path of a real run (k0sctl's idea).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use serde::Serialize;

use super::{Action, HostPlan, Source};
use crate::inventory::Host;
use crate::ssh::shell::{Cmd, Script, Shell, systemctl};

#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Bytes for a file, resolved from a [`Source`] by the runner.
#[derive(Debug, Clone)]
pub enum Blob {
    Bytes(Vec<u8>),
    Path(PathBuf),
    /// The file at `path`, with its gzip stream at `gz` and its zstd stream at `zst` for
    /// transports that send it so.
    Packed {
        path: PathBuf,
        gz: PathBuf,
        zst: PathBuf,
    },
}

pub trait Executor: Send + Sync {
    /// Runs a command that only reads (runs in dry-run too).
    fn query<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>>;
    /// Runs a command that changes the host.
    fn change<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>>;
    /// Writes a file atomically with this mode (owner root). Called only when the far content
    /// differs; returns the bytes sent.
    fn put<'a>(
        &'a self,
        host: &'a Host,
        path: &'a str,
        blob: &'a Blob,
        sha256: &'a str,
        mode: u32,
    ) -> BoxFuture<'a, anyhow::Result<u64>>;
    /// True when changes are only recorded: health gates, which wait for changes to take
    /// effect, are skipped.
    fn is_dry_run(&self) -> bool {
        false
    }
    /// A phase's hosts are done: what the transport set up for the phase stops (the peer-copy
    /// servers). Default: nothing.
    fn phase_done<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Several files to one host; returns what they cost. Transports that can batch override it.
    fn put_many<'a>(
        &'a self,
        host: &'a Host,
        files: &'a [PutFile],
    ) -> BoxFuture<'a, anyhow::Result<Sent>> {
        Box::pin(async move {
            let mut sent = Sent::default();
            for f in files {
                sent.from_here += self
                    .put(host, &f.path, &f.blob, &f.sha256, f.mode)
                    .await
                    .map_err(|e| e.context(format!("writing {}", f.path)))?;
            }
            Ok(sent)
        })
    }
}

/// What writing files to a host cost: bytes sent from this machine, and bytes the host
/// fetched from its peers instead (peer copy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub from_here: u64,
    pub from_peers: u64,
}

impl Sent {
    /// `bytes` sent from this machine, none fetched from peers.
    pub fn here(bytes: u64) -> Sent {
        Sent {
            from_here: bytes,
            from_peers: 0,
        }
    }
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, other: Sent) {
        self.from_here += other.from_here;
        self.from_peers += other.from_peers;
    }
}

/// One file of a batch for `put_many`.
#[derive(Debug, Clone)]
pub struct PutFile {
    pub path: String,
    pub blob: Blob,
    pub sha256: String,
    pub mode: u32,
}

/// Quotes a word for sh (for text a person reads, e.g. a plan's line; commands quote through
/// [`Cmd`] and [`Script`]).
pub use crate::ssh::shell::quote as q;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What converging one host did: the counts a re-run must show as zero.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct HostChanges {
    pub files_written: usize,
    pub bytes_sent: u64,
    /// Bytes of the files written that the host fetched from a peer, not from here.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_from_peers: u64,
    pub dirs_made: usize,
    pub commands_run: usize,
    pub restarts: Vec<String>,
    /// Units that took a changed file by reloading (no restart).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reloads: Vec<String>,
    pub started: Vec<String>,
    /// Failed checks that are only warnings.
    pub warnings: Vec<String>,
    /// What the phase's check read and reports (the verify phase's report).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<String>,
    /// Work an interrupted run left pending on the host and this run finished (a restart the
    /// files already on disk still needed, a daemon-reload, a static pod to wait for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<String>,
    /// The host's pending record entries this change owns: cleared by [`finish_pending`] once
    /// the restarts happened and the host's gate passed.
    #[serde(skip)]
    pub pending: Vec<Pending>,
}

impl HostChanges {
    pub fn is_noop(&self) -> bool {
        self.files_written == 0
            && self.dirs_made == 0
            && self.commands_run == 0
            && self.restarts.is_empty()
            && self.reloads.is_empty()
            && self.started.is_empty()
            && self.resumed.is_empty()
    }
}

/// Where a host keeps what a change still owes it: one file per piece of work, written
/// (atomically, 0600) before the files that need it are replaced and removed only after the
/// restart and the host's gate passed. A run killed anywhere in between leaves the record,
/// and the next run finishes the work even though the files on disk already match.
pub const PENDING_DIR: &str = "/var/lib/clusterctl/pending";

/// One piece of work in a host's pending record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pending {
    /// Unit files changed: `systemctl daemon-reload` before the next start or restart.
    DaemonReload,
    /// A running unit must load its changed files: restarted, or reloaded where its plan
    /// says so.
    Unit(String),
    /// A running static pod's manifest (a file name under the kubelet's manifest directory)
    /// changed: the kubelet replaces the pod, the gate waits for the new one.
    Pod(String),
    /// The host's apiserver was taken out of the balancers' rotation (see
    /// `load_balancer::Rotation`); cleared once it is back in.
    Drain,
    /// The host's node was cordoned by clusterctl (written before the cordon): uncordoned,
    /// and the entry cleared, once the node's step is over.
    Cordon,
    /// The host's node was drained (written after the drain finished): a later run does not
    /// drain it again.
    Drained,
}

impl Pending {
    /// The entry's file name under [`PENDING_DIR`].
    pub fn file_name(&self) -> String {
        match self {
            Pending::DaemonReload => "daemon-reload".into(),
            Pending::Unit(u) => format!("unit@{u}"),
            Pending::Pod(m) => format!("pod@{m}"),
            Pending::Drain => "drain".into(),
            Pending::Cordon => "cordon".into(),
            Pending::Drained => "drained".into(),
        }
    }

    pub fn parse(name: &str) -> Option<Pending> {
        if name.contains('/') || name.is_empty() {
            return None;
        }
        Some(match name {
            "daemon-reload" => Pending::DaemonReload,
            "drain" => Pending::Drain,
            "cordon" => Pending::Cordon,
            "drained" => Pending::Drained,
            _ => {
                if let Some(u) = name.strip_prefix("unit@") {
                    Pending::Unit(u.into())
                } else if let Some(m) = name.strip_prefix("pod@") {
                    Pending::Pod(m.into())
                } else {
                    return None;
                }
            }
        })
    }

    pub fn path(&self) -> String {
        format!("{PENDING_DIR}/{}", self.file_name())
    }

    /// For reports and the journal.
    pub fn describe(&self) -> String {
        match self {
            Pending::DaemonReload => "systemctl daemon-reload".into(),
            Pending::Unit(u) => format!("{u} to load its changed files"),
            Pending::Pod(m) => format!("static pod {m} to be replaced"),
            Pending::Drain => "apiserver drained on the balancers".into(),
            Pending::Cordon => "node cordoned".into(),
            Pending::Drained => "node drained".into(),
        }
    }
}

/// A command that adds `entries` to the host's pending record: each written to a temp file
/// and renamed, so a reader never sees half an entry; only root may read them.
/// The script of [`pending_write_command`]. Arguments: the record's directory, then pairs of
/// entry name and text.
const PENDING_WRITE: &str = r#"set -e; umask 077; d=$1; shift; install -d -m 0700 "$d"
while [ $# -gt 0 ]; do printf '%s\n' "$2" >"$d/.$1.tmp"; mv -f "$d/.$1.tmp" "$d/$1"; shift 2; done"#;

pub fn pending_write_command(entries: &[Pending]) -> Shell {
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut script = Script::new(PENDING_WRITE).arg(PENDING_DIR);
    for e in entries {
        script = script
            .arg(e.file_name())
            .arg(format!("since {since}: {}", e.describe()));
    }
    script.into()
}

/// A command that removes `entries` from the host's pending record.
pub fn pending_clear_command(entries: &[Pending]) -> Shell {
    Cmd::new("rm")
        .arg("-f")
        .args(entries.iter().map(Pending::path))
        .into()
}

/// Lists the host's pending record (`pending NAME` lines): [`PENDING_DIR`]'s files. A macro so
/// that the state query can `concat!` it into its fixed text.
macro_rules! pending_query {
    () => {
        "for p in /var/lib/clusterctl/pending/*; do [ -f \"$p\" ] && echo \"pending ${p##*/}\"; done; true"
    };
}
pub const PENDING_QUERY: &str = pending_query!();

/// Parses the `pending NAME` lines of [`PENDING_QUERY`]'s answer.
pub fn parse_pending(out: &str) -> Vec<Pending> {
    out.lines()
        .filter_map(|l| l.strip_prefix("pending "))
        .filter_map(Pending::parse)
        .collect()
}

/// Clears the pending record entries `ch` owns: call once the host's gate passed.
pub async fn finish_pending(
    exec: &dyn Executor,
    host: &Host,
    ch: &mut HostChanges,
) -> anyhow::Result<()> {
    if ch.pending.is_empty() || exec.is_dry_run() {
        return Ok(());
    }
    run_change(exec, host, &pending_clear_command(&ch.pending))
        .await
        .context("clearing the host's pending record")?;
    ch.pending.clear();
    Ok(())
}

/// The far state of the paths and units a host plan names, read in one round trip.
#[derive(Debug, Default)]
struct FarState {
    sha: BTreeMap<String, String>,
    dirs: BTreeMap<String, String>,
    units: BTreeMap<String, (String, String)>,
    pending: Vec<Pending>,
}

/// Whether `actions` write `unit`'s own unit file (not a drop-in): then it is on disk once the
/// step's files are written, and can be enabled before the daemon-reload.
fn writes_unit_file(actions: &[Action], unit: &str) -> bool {
    actions.iter().any(|a| match a {
        Action::File { path, .. } => {
            in_unit_dir(path)
                && std::path::Path::new(path).file_name() == Some(std::ffi::OsStr::new(unit))
        }
        _ => false,
    })
}

/// Whether `path` is under a directory systemd loads units (and drop-ins) from: a change
/// there needs a daemon-reload.
fn in_unit_dir(path: &str) -> bool {
    path.starts_with("/etc/systemd/system/") || path.starts_with("/lib/systemd/system/")
}

/// The script of [`state_query`]. Arguments: the number of files, the number of directories,
/// the stat key format, then each file with its hash-cache entry, dirs, units. A file's sha256
/// comes from the hash cache the uploads write ([`crate::ssh::shell::HASH_CACHE_DIR`]) while
/// its size, mtime, ctime and inode are those recorded (a write, chmod or rename changes the
/// ctime, which only the kernel sets), else it is hashed (`sha256_fn`): a no-op run re-reads no
/// unchanged binary (it hashed ~400 MB per host, most of a re-run's time). The query only
/// reads the cache: a dry run writes nothing.
const STATE: &str = concat!(
    crate::hash_cache_hit!(),
    crate::sha256_fn!(),
    r#"nf=$1 nd=$2 k=$3; shift 3
while [ "$nf" -gt 0 ]; do f=$1 c=$2; shift 2; nf=$((nf - 1))
  [ -f "$f" ] || continue
  if cache_hit "$(stat -c "$k" "$f")" "$c"; then :; else h=$(sha256 "$f") && h=${h%% *}; fi && echo "$h  $f"
done
while [ "$nd" -gt 0 ]; do [ -d "$1" ] && echo "dir $(stat -c %a "$1") $1"; shift; nd=$((nd - 1)); done
for u in "$@"; do echo "unit $u $(systemctl is-enabled "$u" 2>/dev/null || true) $(systemctl is-active "$u" 2>/dev/null || true)"; done
"#,
    pending_query!()
);

/// One round trip: the sha256 of each file, the mode of each directory, each unit's enabled and
/// active state, and the pending record (a no-op run pays no extra round trip for it).
fn state_query(plan: &HostPlan) -> Shell {
    state_query_in(plan, crate::ssh::shell::HASH_CACHE_DIR)
}

fn state_query_in(plan: &HostPlan, cache_dir: &str) -> Shell {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut units = Vec::new();
    for a in &plan.actions {
        match a {
            Action::File { path, restarts, .. } => {
                files.push(path.as_str());
                units.extend(restarts.iter().map(String::as_str));
            }
            Action::Directory { path, .. } => dirs.push(path.as_str()),
            Action::Service { unit, .. } => units.push(unit.as_str()),
            _ => {}
        }
    }
    units.sort();
    units.dedup();
    let mut script = Script::new(STATE)
        .arg(files.len())
        .arg(dirs.len())
        .arg(crate::ssh::shell::STAT_KEY);
    for f in files {
        script = script
            .arg(f)
            .arg(crate::ssh::shell::cache_entry(cache_dir, f));
    }
    script.args(dirs).args(units).into()
}

fn parse_state(out: &str) -> FarState {
    let mut st = FarState::default();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("dir ") {
            if let Some((mode, path)) = rest.split_once(' ') {
                st.dirs.insert(path.to_string(), mode.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("unit ") {
            let mut it = rest.split_whitespace();
            if let (Some(u), e, a) = (it.next(), it.next().unwrap_or(""), it.next().unwrap_or("")) {
                st.units
                    .insert(u.to_string(), (e.to_string(), a.to_string()));
            }
        } else if let Some(p) = line.strip_prefix("pending ") {
            st.pending.extend(Pending::parse(p));
        } else if let Some((sha, path)) = line.split_once("  ") {
            st.sha.insert(path.to_string(), sha.to_string());
        }
    }
    st
}

/// Brings one host to its plan: one query for the far state, then only the differences.
/// `resolve` turns a file's [`Source`] into bytes (rendered content, local file, bundle blob).
/// With no gate to wait for, the host's pending record is cleared as soon as the restarts are
/// done (the runner's [`converge_gated`] keeps it until the host's gate passed).
pub async fn converge(
    exec: &dyn Executor,
    host: &Host,
    plan: &HostPlan,
    resolve: &(dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
) -> anyhow::Result<HostChanges> {
    let mut ch = converge_gated(exec, host, plan, resolve, &NoGuard).await?;
    finish_pending(exec, host, &mut ch).await?;
    Ok(ch)
}

/// Work to do before a change restarts or replaces something that runs on a host (e.g. take
/// an apiserver out of the balancers). Returns warnings for the host's report.
pub trait BeforeRestart: Send + Sync {
    /// `running`: the running units the change restarts, and the static-pod manifests of
    /// running pods it replaces.
    fn before<'a>(&'a self, host: &'a Host, running: &'a [String]) -> BoxFuture<'a, Vec<String>>;
}

/// Nothing to do before restarts.
pub struct NoGuard;

impl BeforeRestart for NoGuard {
    fn before<'a>(&'a self, _: &'a Host, _: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

/// Two guards, the first one first (e.g. etcd's leadership hand-over and the balancer
/// rotation); their warnings together.
pub struct Both<'a>(pub &'a dyn BeforeRestart, pub &'a dyn BeforeRestart);

impl BeforeRestart for Both<'_> {
    fn before<'a>(&'a self, host: &'a Host, running: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut w = self.0.before(host, running).await;
            w.extend(self.1.before(host, running).await);
            w
        })
    }
}

/// The runner's converge: like [`converge`], calling `guard` once before the first change that
/// restarts a running unit or replaces a running static pod; what the change owes the host stays
/// in its pending record (`ch.pending`) until the caller's gate passed and it calls
/// [`finish_pending`]. Work an interrupted run left pending for what this plan manages is
/// finished first: its units restart (or reload) and its pods count as replaced even when
/// every file already matches.
pub async fn converge_gated(
    exec: &dyn Executor,
    host: &Host,
    plan: &HostPlan,
    resolve: &(dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
    guard: &dyn BeforeRestart,
) -> anyhow::Result<HostChanges> {
    let mut ch = HostChanges::default();
    // The live line's step (a no-op off a terminal); the SSH pool adds the command itself.
    crate::console::host_step(&host.name, "reading the state of files and services");
    let out = exec
        .query(host, &state_query(plan))
        .await
        .context("reading the state of files and services")?;
    if out.status != 0 {
        bail!(
            "reading the state of files and services failed: {}",
            out.stderr.trim()
        );
    }
    let far = parse_state(&out.stdout);
    let mut dirty_units: BTreeSet<String> = BTreeSet::new();
    let mut unit_files_changed = false;
    // Units enabled together before this step's daemon-reload (see `Action::Service`).
    let mut enabled_early: BTreeSet<String> = BTreeSet::new();
    let mut failed_checks = Vec::new();
    // Checks that open the plan are guards: they run before anything changes, and a failed
    // one stops the host untouched (e.g. a component already running under the other
    // control-plane mode). Then directories, every file that differs in one batch, then
    // services, commands and the other checks in plan order.
    let guards = plan
        .actions
        .iter()
        .take_while(|a| matches!(a, Action::Check { .. }))
        .count();
    for a in &plan.actions[..guards] {
        if let Action::Check {
            description,
            command,
            warn_only,
        } = a
        {
            check(
                exec,
                host,
                description,
                command,
                *warn_only,
                &mut ch,
                &mut failed_checks,
            )
            .await?;
        }
    }
    if !failed_checks.is_empty() {
        bail!("{}", failed_checks.join("; "));
    }
    for a in &plan.actions {
        if let Action::Directory { path, mode } = a
            && far.dirs.get(path).map(|m| m.trim_start_matches('0'))
                != Some(format!("{:o}", mode.0).as_str())
        {
            run_change(
                exec,
                host,
                &Cmd::new("install")
                    .args(["-d", "-m", &mode.to_string()])
                    .arg(path)
                    .into(),
            )
            .await?;
            ch.dirs_made += 1;
        }
    }
    let mut batch = Vec::new();
    for a in &plan.actions {
        if let Action::File {
            path,
            mode,
            source,
            sha256,
            restarts,
            ..
        } = a
        {
            let blob = resolve(source).with_context(|| format!("preparing {path}"))?;
            let want = match sha256 {
                Some(s) => s.clone(),
                None => blob_sha(&blob)?,
            };
            if far.sha.get(path) != Some(&want) {
                batch.push(PutFile {
                    path: path.clone(),
                    blob,
                    sha256: want,
                    mode: mode.0,
                });
                dirty_units.extend(restarts.iter().cloned());
                if in_unit_dir(path) {
                    unit_files_changed = true;
                }
            }
        }
    }
    // Running, or on its way up or down (a restart an interrupted run started): it serves, or
    // is about to, with whatever files it loaded.
    let is_active = |u: &String| {
        far.units.get(u).is_some_and(|(_, a)| {
            matches!(
                a.as_str(),
                "active" | "activating" | "deactivating" | "reloading"
            )
        })
    };
    let manifest_dir = format!("{}/", crate::engine::MANIFESTS);
    // What this change owes the host: running units that must load a changed file, unit
    // files to daemon-reload, running static pods whose manifest changes.
    let mut owed: BTreeSet<Pending> = dirty_units
        .iter()
        .filter(|u| is_active(u))
        .map(|u| Pending::Unit(u.clone()))
        .collect();
    if unit_files_changed {
        owed.insert(Pending::DaemonReload);
    }
    owed.extend(batch.iter().filter_map(|f| {
        let name = f.path.strip_prefix(&manifest_dir)?;
        far.sha
            .contains_key(&f.path)
            .then(|| Pending::Pod(name.into()))
    }));
    // What an interrupted run left owed for what this plan manages: finished now, as if the
    // files had just changed. (Entries for other units wait for the phase that manages them.)
    let plan_units: BTreeSet<&str> = plan
        .actions
        .iter()
        .flat_map(|a| match a {
            Action::Service { unit, .. } => vec![unit.as_str()],
            Action::File { restarts, .. } => restarts.iter().map(String::as_str).collect(),
            _ => vec![],
        })
        .collect();
    let plan_manifests: BTreeSet<&str> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::File { path, .. } => path.strip_prefix(&manifest_dir),
            _ => None,
        })
        .collect();
    for p in &far.pending {
        let take = match p {
            Pending::Unit(u) => plan_units.contains(u.as_str()),
            Pending::Pod(m) => plan_manifests.contains(m.as_str()),
            // Whoever finds it does it: cheap, and a resumed restart must see the new unit.
            Pending::DaemonReload => true,
            // The rotation and the node's cordon have their own owners.
            Pending::Drain | Pending::Cordon | Pending::Drained => false,
        };
        if !take || owed.contains(p) {
            continue;
        }
        match p {
            Pending::Unit(u) => {
                dirty_units.insert(u.clone());
            }
            Pending::DaemonReload => unit_files_changed = true,
            _ => {}
        }
        ch.resumed.push(format!(
            "{} (left pending by an interrupted run)",
            p.describe()
        ));
        owed.insert(p.clone());
    }
    // Record it on the host before anything is replaced or drained.
    let new: Vec<Pending> = owed
        .iter()
        .filter(|p| !far.pending.contains(p))
        .cloned()
        .collect();
    if !new.is_empty() && !exec.is_dry_run() {
        run_change(exec, host, &pending_write_command(&new))
            .await
            .context("recording the change in the host's pending record")?;
    }
    ch.pending = owed.iter().cloned().collect();
    // What the change will restart or replace that runs now: the guard goes first.
    let running: Vec<String> = dirty_units
        .iter()
        .filter(|u| is_active(u))
        .cloned()
        .chain(owed.iter().filter_map(|p| match p {
            Pending::Pod(m) => Some(format!("{manifest_dir}{m}")),
            _ => None,
        }))
        .collect();
    if !running.is_empty() && !exec.is_dry_run() {
        ch.warnings.extend(guard.before(host, &running).await);
    }
    if !batch.is_empty() {
        crate::console::host_step(&host.name, &format!("writing {} file(s)", batch.len()));
        let sent = exec.put_many(host, &batch).await?;
        ch.bytes_sent += sent.from_here;
        ch.bytes_from_peers += sent.from_peers;
        ch.files_written += batch.len();
    }
    for a in &plan.actions[guards..] {
        match a {
            Action::Directory { .. } | Action::File { .. } => {}
            Action::Service { unit, reload } => {
                if unit_files_changed {
                    // `systemctl enable` reloads the manager itself (0.2-1.1 s each on a busy
                    // host): the plan's units whose files it wrote are enabled without that,
                    // before the one daemon-reload, which loads their new links with them.
                    let early: Vec<&String> = plan
                        .actions
                        .iter()
                        .filter_map(|a| match a {
                            Action::Service { unit, .. } => Some(unit),
                            _ => None,
                        })
                        .filter(|u| far.units.get(*u).is_none_or(|(e, _)| e != "enabled"))
                        .filter(|u| writes_unit_file(&plan.actions, u))
                        .collect();
                    if !early.is_empty() {
                        run_change(
                            exec,
                            host,
                            &systemctl(&["enable", "--no-reload"], &early).into(),
                        )
                        .await?;
                        ch.commands_run += 1;
                        enabled_early.extend(early.into_iter().cloned());
                    }
                    run_change(exec, host, &"systemctl daemon-reload".into()).await?;
                    unit_files_changed = false;
                }
                let (enabled, active) = far.units.get(unit).cloned().unwrap_or_default();
                if enabled != "enabled" && !enabled_early.contains(unit) {
                    run_change(exec, host, &systemctl(&["enable"], [unit]).into()).await?;
                    ch.commands_run += 1;
                }
                // A unit on its way up or down counts as running: a restart an interrupted
                // run began may have loaded older files than the ones on disk now.
                let up = is_active(unit);
                if !up || active != "active" && !dirty_units.contains(unit) {
                    unit_change(exec, host, "start", unit).await?;
                    if !up {
                        ch.started.push(unit.clone());
                    }
                    dirty_units.remove(unit);
                } else if dirty_units.remove(unit) {
                    if *reload {
                        unit_change(exec, host, "reload", unit).await?;
                        ch.reloads.push(unit.clone());
                    } else {
                        unit_change(exec, host, "restart", unit).await?;
                        ch.restarts.push(unit.clone());
                    }
                }
            }
            Action::Run {
                description,
                command,
                unless,
                warn_only,
            } => {
                crate::console::host_step(&host.name, description);
                if let Some(u) = unless
                    && exec.query(host, u).await?.status == 0
                {
                    continue;
                }
                let o = exec.change(host, command).await?;
                if o.status == 0 {
                    ch.commands_run += 1;
                } else if *warn_only {
                    ch.warnings
                        .push(format!("{description}: {}", first_words(&o)));
                } else {
                    bail!(
                        "{description}: `{command}` exited {}: {}",
                        o.status,
                        first_words(&o)
                    );
                }
            }
            Action::Check {
                description,
                command,
                warn_only,
            } => {
                check(
                    exec,
                    host,
                    description,
                    command,
                    *warn_only,
                    &mut ch,
                    &mut failed_checks,
                )
                .await?;
            }
        }
    }
    if unit_files_changed {
        run_change(exec, host, &"systemctl daemon-reload".into()).await?;
    }
    // Files that changed for a unit this plan does not manage (e.g. a re-issued certificate
    // of a running etcd): restart the unit if it runs, so it does not keep the old file loaded.
    for unit in dirty_units {
        if is_active(&unit) {
            run_change(exec, host, &systemctl(&["restart"], [&unit]).into()).await?;
            ch.restarts.push(unit);
        }
    }
    if !failed_checks.is_empty() {
        bail!("{}", failed_checks.join("; "));
    }
    Ok(ch)
}

/// Runs one check: a failure becomes a warning (`warn_only`) or joins `failed`.
async fn check(
    exec: &dyn Executor,
    host: &Host,
    description: &str,
    command: &Shell,
    warn_only: bool,
    ch: &mut HostChanges,
    failed: &mut Vec<String>,
) -> anyhow::Result<()> {
    crate::console::host_step(&host.name, &format!("check: {description}"));
    let o = exec.query(host, command).await?;
    if o.status != 0 {
        let detail = if o.stderr.trim().is_empty() {
            o.stdout.trim()
        } else {
            o.stderr.trim()
        };
        let msg = if detail.is_empty() {
            description.to_string()
        } else {
            format!("{description}: {detail}")
        };
        if warn_only {
            ch.warnings.push(msg);
        } else {
            failed.push(msg);
        }
    }
    Ok(())
}

/// The gist of a failed command's output for a message.
fn first_words(o: &CmdOutput) -> String {
    let t = if o.stderr.trim().is_empty() {
        o.stdout.trim()
    } else {
        o.stderr.trim()
    };
    t.lines().take(3).collect::<Vec<_>>().join(" / ")
}

async fn run_change(exec: &dyn Executor, host: &Host, cmd: &Shell) -> anyhow::Result<()> {
    let o = exec.change(host, cmd).await?;
    if o.status != 0 {
        bail!("`{cmd}` exited {}: {}", o.status, o.stderr.trim());
    }
    Ok(())
}

/// `systemctl start|restart UNIT`; a failure says why with the unit's last journal lines.
async fn unit_change(
    exec: &dyn Executor,
    host: &Host,
    verb: &str,
    unit: &str,
) -> anyhow::Result<()> {
    crate::console::host_step(&host.name, &format!("{verb} {unit}"));
    let cmd = Shell::from(systemctl(&[verb], [unit]));
    let o = exec.change(host, &cmd).await?;
    if o.status != 0 {
        let log = exec
            .query(
                host,
                &Cmd::new("journalctl")
                    .arg("-u")
                    .arg(unit)
                    .args(["-n", "8", "--no-pager", "-o", "cat"])
                    .raw("2>&1")
                    .into(),
            )
            .await
            .map(|l| l.stdout)
            .unwrap_or_default();
        bail!(
            "`{cmd}` exited {}; the unit's last log lines:\n    {}",
            o.status,
            log.trim().lines().collect::<Vec<_>>().join("\n    ")
        );
    }
    Ok(())
}

fn blob_sha(blob: &Blob) -> anyhow::Result<String> {
    Ok(match blob {
        Blob::Bytes(b) => super::sha256_hex(b),
        Blob::Path(p) | Blob::Packed { path: p, .. } => crate::hashing::hash_file(p)?.0,
    })
}

/// Wraps an executor: queries run, changes are recorded and reported as successful.
pub struct DryRun<'e> {
    pub inner: &'e dyn Executor,
    pub recorded: Mutex<Vec<(String, String)>>,
}

impl<'e> DryRun<'e> {
    pub fn new(inner: &'e dyn Executor) -> Self {
        DryRun {
            inner,
            recorded: Mutex::new(Vec::new()),
        }
    }
    fn record(&self, host: &Host, what: String) {
        self.recorded
            .lock()
            .unwrap()
            .push((host.name.to_string(), what));
    }
}

impl Executor for DryRun<'_> {
    fn query<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        self.inner.query(host, cmd)
    }
    fn change<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        self.record(host, format!("would run: {cmd}"));
        Box::pin(async { Ok(CmdOutput::default()) })
    }
    fn put<'a>(
        &'a self,
        host: &'a Host,
        path: &'a str,
        blob: &'a Blob,
        sha256: &'a str,
        mode: u32,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let head = format!(
                "would write: {path} mode {mode:04o} sha256 {}",
                &sha256[..12]
            );
            let what = self.describe_write(host, path, blob, mode).await?;
            self.record(host, format!("{head} {what}"));
            Ok(0)
        })
    }
    fn is_dry_run(&self) -> bool {
        true
    }
}

/// Largest file whose changes a dry run shows as a diff.
const DIFF_MAX: usize = 64 * 1024;

impl DryRun<'_> {
    /// "(new file)", or for a changed readable text file a unified diff against what the host
    /// has. Files only root may read (keys, kubeconfigs) are never shown.
    async fn describe_write(
        &self,
        host: &Host,
        path: &str,
        blob: &Blob,
        mode: u32,
    ) -> anyhow::Result<String> {
        let exists = self
            .inner
            .query(host, &Cmd::new("test").arg("-e").arg(path).into())
            .await?
            .status
            == 0;
        if !exists {
            return Ok("(new file)".into());
        }
        let new = match blob {
            Blob::Bytes(b) if b.len() <= DIFF_MAX && mode & 0o004 != 0 => {
                std::str::from_utf8(b).ok()
            }
            _ => None,
        };
        let Some(new) = new else {
            return Ok(if mode & 0o004 == 0 {
                "(changed; content not shown: only root may read it)".into()
            } else {
                "(changed; binary or large: content not shown)".into()
            });
        };
        let old = self
            .inner
            .query(
                host,
                &Cmd::new("head")
                    .arg("-c")
                    .arg((DIFF_MAX + 1).to_string())
                    .arg("--")
                    .arg(path)
                    .into(),
            )
            .await?
            .stdout;
        let diff = similar::TextDiff::from_lines(old.as_str(), new)
            .unified_diff()
            .context_radius(2)
            .header(&format!("{}:{path}", host.name), "planned")
            .to_string();
        Ok(format!("(changed)\n{}", diff.trim_end()))
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory host for testing the converge logic (what is sent, what restarts). The
    //! real transport is tested against real sshd in the lab tests.
    use super::*;

    #[derive(Default)]
    pub struct FakeHosts {
        pub files: Mutex<BTreeMap<(String, String), Vec<u8>>>,
        pub dirs: Mutex<BTreeMap<(String, String), u32>>,
        pub active: Mutex<BTreeSet<(String, String)>>,
        pub log: Mutex<Vec<String>>,
    }

    impl Executor for FakeHosts {
        fn query<'a>(
            &'a self,
            host: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            // `test -e` and `head -c` (what a dry run reads to show diffs) on the in-memory
            // files; anything else is taken for the state query and evaluated against them.
            let words = shlex::split(cmd).unwrap_or_default();
            let file = |i: usize| {
                words.get(i).and_then(|p| {
                    self.files
                        .lock()
                        .unwrap()
                        .get(&(host.name.to_string(), p.clone()))
                        .cloned()
                })
            };
            let answer = match words.first().map(String::as_str) {
                Some("test") => Some(match file(2) {
                    Some(_) => (0, String::new()),
                    None => (1, String::new()),
                }),
                Some("head") => {
                    file(words.len() - 1).map(|b| (0, String::from_utf8_lossy(&b).into_owned()))
                }
                _ => None,
            };
            if let Some((status, stdout)) = answer {
                return Box::pin(async move {
                    Ok(CmdOutput {
                        status,
                        stdout,
                        stderr: String::new(),
                    })
                });
            }
            let mut out = String::new();
            // The state query: its script with the paths and units as arguments.
            let mut lists: Vec<(String, Vec<String>)> = Vec::new();
            if let [sh, c, text, _, args @ ..] = words.as_slice()
                && sh == "sh"
                && c == "-c"
                && text == super::STATE
            {
                let nf: usize = args[0].parse().unwrap();
                let nd: usize = args[1].parse().unwrap();
                // args[2]: the stat key; then each file with its hash-cache entry.
                let rest = &args[3..];
                let files = rest[..2 * nf].iter().step_by(2).cloned().collect();
                let rest = &rest[2 * nf..];
                lists.push(("f".into(), files));
                lists.push(("d".into(), rest[..nd].to_vec()));
                lists.push(("u".into(), rest[nd..].to_vec()));
                lists.push(("p".into(), vec![format!("{PENDING_DIR}/*")]));
            } else {
                lists = loops(cmd);
            }
            for (var, list) in lists {
                for item in list {
                    let key = (host.name.to_string(), item.clone());
                    match var.as_str() {
                        "f" => {
                            if let Some(b) = self.files.lock().unwrap().get(&key) {
                                out += &format!("{}  {item}\n", crate::engine::sha256_hex(b));
                            }
                        }
                        "d" => {
                            if let Some(m) = self.dirs.lock().unwrap().get(&key) {
                                out += &format!("dir {m:o} {item}\n");
                            }
                        }
                        "p" => {
                            // The pending record: a glob over the directory.
                            let dir = item.trim_end_matches('*');
                            for (h, path) in self.files.lock().unwrap().keys() {
                                if let Some(name) = path.strip_prefix(dir)
                                    && h == &host.name
                                    && !name.contains('/')
                                    && !name.starts_with('.')
                                {
                                    out += &format!("pending {name}\n");
                                }
                            }
                        }
                        "u" => {
                            let on = self.active.lock().unwrap().contains(&key);
                            let s = if on {
                                "enabled active"
                            } else {
                                "disabled inactive"
                            };
                            out += &format!("unit {item} {s}\n");
                        }
                        _ => {}
                    }
                }
            }
            Box::pin(async move {
                Ok(CmdOutput {
                    status: 0,
                    stdout: out,
                    stderr: String::new(),
                })
            })
        }
        fn change<'a>(
            &'a self,
            host: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            self.log
                .lock()
                .unwrap()
                .push(format!("{}: {cmd}", host.name));
            // A few simple commands joined with `&&`, as the converge loop sends them, or the
            // pending record's writer.
            let w = shlex::split(cmd).unwrap_or_default();
            if let [sh, c, text, _, dir, pairs @ ..] = w.as_slice()
                && sh == "sh"
                && c == "-c"
                && text == super::PENDING_WRITE
            {
                let mut files = self.files.lock().unwrap();
                for p in pairs.chunks(2) {
                    files.insert(
                        (host.name.to_string(), format!("{dir}/{}", p[0])),
                        format!("{}\n", p[1]).into_bytes(),
                    );
                }
            } else {
                for c in w.split(|t| t == "&&") {
                    self.simple_command(host, c);
                }
            }
            Box::pin(async { Ok(CmdOutput::default()) })
        }
        fn put<'a>(
            &'a self,
            host: &'a Host,
            path: &'a str,
            blob: &'a Blob,
            _sha: &'a str,
            _mode: u32,
        ) -> BoxFuture<'a, anyhow::Result<u64>> {
            let Blob::Bytes(b) = blob else {
                panic!("fake takes bytes")
            };
            self.files
                .lock()
                .unwrap()
                .insert((host.name.to_string(), path.to_string()), b.clone());
            self.log
                .lock()
                .unwrap()
                .push(format!("{}: put {path}", host.name));
            let n = b.len() as u64;
            Box::pin(async move { Ok(n) })
        }
    }

    impl FakeHosts {
        /// `install -d -m M DIR`, `systemctl start|restart U`, `printf '%s\n' TEXT > FILE`,
        /// `mv -f A B`, `rm -f FILES...`; anything else only goes to the log.
        fn simple_command(&self, host: &Host, w: &[String]) {
            let key = |p: &str| (host.name.to_string(), p.to_string());
            let mut files = self.files.lock().unwrap();
            match w.first().map(String::as_str) {
                Some("install") if w.len() == 5 => {
                    let mode = u32::from_str_radix(&w[3], 8).unwrap();
                    self.dirs.lock().unwrap().insert(key(&w[4]), mode);
                }
                Some("systemctl") if w.len() == 3 && (w[1] == "start" || w[1] == "restart") => {
                    self.active.lock().unwrap().insert(key(&w[2]));
                }
                Some("printf") if w.len() == 5 && w[3] == ">" => {
                    files.insert(key(&w[4]), w[2].replace("\\n", "\n").into_bytes());
                }
                Some("mv") if w.len() == 4 => {
                    if let Some(b) = files.remove(&key(&w[2])) {
                        files.insert(key(&w[3]), b);
                    }
                }
                Some("rm") => {
                    for p in &w[2..] {
                        files.remove(&key(p));
                    }
                }
                _ => {}
            }
        }

        /// The host's pending record, by entry name.
        pub fn pending(&self, host: &str) -> Vec<String> {
            let dir = format!("{PENDING_DIR}/");
            self.files
                .lock()
                .unwrap()
                .keys()
                .filter(|(h, _)| h == host)
                .filter_map(|(_, p)| p.strip_prefix(&dir).map(str::to_string))
                .collect()
        }
    }

    /// Extracts `for X in a b c; do` loops from a state query.
    fn loops(cmd: &str) -> Vec<(String, Vec<String>)> {
        let mut v = Vec::new();
        for part in cmd.split("for ").skip(1) {
            let Some((head, _)) = part.split_once("; do") else {
                continue;
            };
            let Some((var, list)) = head.split_once(" in ") else {
                continue;
            };
            v.push((
                var.trim().to_string(),
                shlex::split(list).unwrap_or_default(),
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHosts;
    use super::*;
    use crate::engine::{Action, HostPlan};

    /// The state query and the pending record's writer run in a real shell (the fake hosts
    /// only imitate them): hashes, modes, a missing file, and names with spaces and quotes.
    #[test]
    fn the_state_query_and_the_record_writer_run_in_a_real_shell() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("it's a file");
        std::fs::write(&file, b"x").unwrap();
        let dir = d.path().join("a dir");
        std::fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let (file, dir) = (file.to_str().unwrap(), dir.to_str().unwrap());
        let missing = d.path().join("missing").to_str().unwrap().to_string();
        let plan = HostPlan {
            host: "h1".into(),
            address: "10.0.0.1".into(),
            actions: vec![
                Action::rendered(file, 0o644, "t", "x".into(), &["no-such.service"]),
                Action::rendered(&missing, 0o644, "t", "y".into(), &[]),
                Action::dir(dir, 0o750),
            ],
        };
        let sh = |s: &str| {
            let o = std::process::Command::new("sh")
                .args(["-c", s])
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        let cache = d.path().join("cache");
        let cache = cache.to_str().unwrap();
        let query = || parse_state(&sh(state_query_in(&plan, cache).as_str()));
        let st = query();
        assert_eq!(st.sha.get(file), Some(&crate::engine::sha256_hex(b"x")));
        assert!(!st.sha.contains_key(&missing));
        // An entry of the hash cache whose stat key matches is taken as is (the query read
        // no byte of the file); once the file changes, its key no longer matches.
        let key = sh(&format!(
            "stat -c {} {}",
            crate::ssh::shell::quote(crate::ssh::shell::STAT_KEY),
            crate::ssh::shell::quote(file)
        ));
        let entry = crate::ssh::shell::cache_entry(cache, file);
        std::fs::create_dir_all(cache).unwrap();
        std::fs::write(&entry, format!("{} cached-hash\n", key.trim())).unwrap();
        assert_eq!(
            query().sha.get(file).map(String::as_str),
            Some("cached-hash")
        );
        std::fs::write(file, b"x2").unwrap();
        assert_eq!(
            query().sha.get(file),
            Some(&crate::engine::sha256_hex(b"x2"))
        );
        assert_eq!(st.dirs.get(dir).map(String::as_str), Some("750"));
        assert!(st.units.contains_key("no-such.service"), "{st:?}");

        // The pending listing (a macro, for concat!) names the record's directory.
        assert!(
            PENDING_QUERY.contains(&format!("{PENDING_DIR}/*")) && STATE.ends_with(PENDING_QUERY)
        );
        let record = d.path().join("pending");
        let w = pending_write_command(&[Pending::Drain, Pending::Unit("a b.service".into())]);
        let w = w.as_str().replace(
            &format!(" sh {PENDING_DIR} "),
            &format!(" sh {} ", record.display()),
        );
        sh(&w);
        let drain = std::fs::read_to_string(record.join("drain")).unwrap();
        assert!(
            drain.ends_with(": apiserver drained on the balancers\n"),
            "{drain}"
        );
        assert!(record.join("unit@a b.service").exists());
        let mode = std::fs::metadata(&record).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    fn host() -> Host {
        Host {
            name: "h1".parse().unwrap(),
            address: "10.77.0.11".parse().unwrap(),
            port: None,
            user: None,
            key_file: None,
            bastion: None,
            roles: vec![],
            labels: Default::default(),
            taints: vec![],
        }
    }

    fn plan(unit_body: &str) -> HostPlan {
        HostPlan {
            host: "h1".into(),
            address: "10.77.0.11".into(),
            actions: vec![
                Action::dir("/etc/demo dir", 0o700),
                Action::rendered(
                    "/etc/systemd/system/demo.service",
                    0o644,
                    "demo",
                    unit_body.into(),
                    &["demo.service"],
                ),
                Action::service("demo.service"),
            ],
        }
    }

    fn resolve(s: &Source) -> anyhow::Result<Blob> {
        match s {
            Source::Rendered { content, .. } => Ok(Blob::Bytes(content.clone())),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn second_converge_changes_nothing_and_a_changed_file_restarts_its_unit() {
        let fake = FakeHosts::default();
        let h = host();
        let first = converge(&fake, &h, &plan("v1"), &resolve).await.unwrap();
        assert_eq!((first.files_written, first.dirs_made), (1, 1));
        assert_eq!(first.started, ["demo.service"]);
        assert!(
            first.restarts.is_empty(),
            "a started unit is not also restarted"
        );

        let again = converge(&fake, &h, &plan("v1"), &resolve).await.unwrap();
        assert!(again.is_noop(), "{again:?}");
        assert_eq!(again.bytes_sent, 0);

        fake.log.lock().unwrap().clear();
        let changed = converge(&fake, &h, &plan("v2"), &resolve).await.unwrap();
        assert_eq!(changed.files_written, 1);
        assert_eq!(changed.restarts, ["demo.service"]);
        let log = fake.log.lock().unwrap().join("\n");
        assert!(log.contains("systemctl daemon-reload"), "{log}");
        let reload = log.find("daemon-reload").unwrap();
        assert!(
            reload < log.find("restart").unwrap(),
            "reload before restart:\n{log}"
        );
    }

    /// Fresh units whose files the plan writes are enabled in one call without its own
    /// reload, before the step's one daemon-reload; a unit whose file the plan does not write
    /// (a package's) is enabled on its own, reload and all.
    #[tokio::test]
    async fn fresh_units_are_enabled_together_before_the_one_reload() {
        let fake = FakeHosts::default();
        let unit = |name: &str| {
            Action::rendered(
                format!("/etc/systemd/system/{name}"),
                0o644,
                "demo",
                format!("[Service]\nExecStart=/bin/{name}\n"),
                &[name],
            )
        };
        let plan = HostPlan {
            host: "h1".into(),
            address: "10.77.0.11".into(),
            actions: vec![
                unit("a.service"),
                unit("b.service"),
                Action::service("a.service"),
                Action::service("pkg.service"),
                Action::service("b.service"),
            ],
        };
        let ch = converge(&fake, &host(), &plan, &resolve).await.unwrap();
        assert_eq!(ch.started, ["a.service", "pkg.service", "b.service"]);
        let log = fake.log.lock().unwrap().clone();
        let at = |want: &str| {
            log.iter()
                .position(|l| l.ends_with(want))
                .unwrap_or_else(|| panic!("no {want:?} in {log:#?}"))
        };
        let early = at("systemctl enable --no-reload a.service b.service");
        let reload = at("systemctl daemon-reload");
        assert!(early < reload, "{log:#?}");
        assert!(reload < at("systemctl enable pkg.service"), "{log:#?}");
        assert_eq!(
            log.iter()
                .filter(|l| *l == "h1: systemctl daemon-reload")
                .count(),
            1,
            "{log:#?}"
        );
        assert_eq!(
            log.iter()
                .filter(|l| l.starts_with("h1: systemctl enable"))
                .count(),
            2,
            "{log:#?}"
        );
    }

    #[tokio::test]
    async fn a_reloaded_service_takes_a_changed_config_by_reload() {
        let fake = FakeHosts::default();
        let h = host();
        let lb = |cfg: &str| HostPlan {
            host: "h1".into(),
            address: "10.77.0.11".into(),
            actions: vec![
                Action::rendered("/etc/lb.cfg", 0o644, "lb", cfg.into(), &["lb.service"]),
                Action::reloaded_service("lb.service"),
            ],
        };
        let first = converge(&fake, &h, &lb("a"), &resolve).await.unwrap();
        assert_eq!(first.started, ["lb.service"]);
        fake.log.lock().unwrap().clear();
        let changed = converge(&fake, &h, &lb("b"), &resolve).await.unwrap();
        assert_eq!(changed.reloads, ["lb.service"]);
        assert!(changed.restarts.is_empty(), "{changed:?}");
        assert!(!changed.is_noop());
        let log = fake.log.lock().unwrap().join("\n");
        assert!(log.contains("systemctl reload lb.service"), "{log}");
        assert!(!log.contains("systemctl restart"), "{log}");
    }

    #[tokio::test]
    async fn dry_run_records_changes_and_makes_none() {
        let fake = FakeHosts::default();
        let dry = DryRun::new(&fake);
        let ch = converge(&dry, &host(), &plan("v1"), &resolve)
            .await
            .unwrap();
        assert_eq!(ch.files_written, 1, "the dry run reports what it would do");
        assert!(fake.files.lock().unwrap().is_empty(), "but changes nothing");
        let rec = dry.recorded.lock().unwrap();
        assert!(
            rec.iter()
                .any(|(_, w)| w.starts_with("would write: /etc/systemd/system/demo.service")),
            "{rec:?}"
        );
    }

    #[tokio::test]
    async fn dry_run_shows_a_diff_for_readable_text_and_nothing_of_secrets() {
        let fake = FakeHosts::default();
        let h = host();
        converge(
            &fake,
            &h,
            &plan("[Service]\nExecStart=/bin/demo --old\n"),
            &resolve,
        )
        .await
        .unwrap();
        let dry = DryRun::new(&fake);
        let mut p = plan("[Service]\nExecStart=/bin/demo --new\n");
        p.actions.push(Action::rendered(
            "/etc/demo dir/secret.key",
            0o600,
            "key",
            "PRIVATE KEY v1".into(),
            &[],
        ));
        converge(&dry, &h, &p, &resolve).await.unwrap();
        let rec = dry.recorded.lock().unwrap().clone();
        let unit = rec
            .iter()
            .find(|(_, w)| w.contains("demo.service"))
            .map(|(_, w)| w.as_str())
            .unwrap();
        assert!(unit.contains("(changed)"), "{unit}");
        assert!(unit.contains("-ExecStart=/bin/demo --old"), "{unit}");
        assert!(unit.contains("+ExecStart=/bin/demo --new"), "{unit}");
        assert!(
            rec.iter()
                .any(|(_, w)| w.contains("secret.key") && w.ends_with("(new file)")),
            "{rec:?}"
        );
        // Now the key exists and differs: said so, never shown.
        fake.files.lock().unwrap().insert(
            (h.name.to_string(), "/etc/demo dir/secret.key".into()),
            b"PRIVATE KEY v0".to_vec(),
        );
        let dry = DryRun::new(&fake);
        converge(&dry, &h, &p, &resolve).await.unwrap();
        let rec = dry.recorded.lock().unwrap().clone();
        let key = rec.iter().find(|(_, w)| w.contains("secret.key")).unwrap();
        assert!(key.1.contains("only root may read it"), "{key:?}");
        assert!(!rec.iter().any(|(_, w)| w.contains("PRIVATE")), "{rec:?}");
        assert_eq!(
            fake.files.lock().unwrap()[&(
                h.name.to_string(),
                "/etc/systemd/system/demo.service".into()
            )],
            b"[Service]\nExecStart=/bin/demo --old\n",
            "a dry run changes nothing"
        );
    }

    #[tokio::test]
    async fn a_failed_leading_check_stops_the_host_before_any_change() {
        let fake = FakeHosts::default();
        let h = host();
        let mut p = plan("v1");
        p.actions.insert(
            0,
            Action::check("no old unit here", "test -e /etc/guard-ok"),
        );
        let e = converge(&fake, &h, &p, &resolve).await.unwrap_err();
        assert!(e.to_string().contains("no old unit here"), "{e}");
        assert!(fake.files.lock().unwrap().is_empty(), "nothing written");
        assert!(fake.dirs.lock().unwrap().is_empty(), "no directory made");
        assert!(fake.log.lock().unwrap().is_empty(), "no command run");
        // The same check later in the plan runs after the changes (and still fails the host).
        let mut p = plan("v1");
        p.actions
            .push(Action::check("no old unit here", "test -e /etc/guard-ok"));
        assert!(converge(&fake, &h, &p, &resolve).await.is_err());
        // (The failed run keeps its pending record: the unit file's daemon-reload is owed.)
        let written: Vec<String> = fake
            .files
            .lock()
            .unwrap()
            .keys()
            .map(|k| k.1.clone())
            .filter(|p| !p.starts_with(PENDING_DIR))
            .collect();
        assert_eq!(written.len(), 1, "{written:?}");
        // Once it holds, the guarded plan converges.
        fake.files
            .lock()
            .unwrap()
            .insert((h.name.to_string(), "/etc/guard-ok".into()), vec![]);
        let mut p = plan("v1");
        p.actions.insert(
            0,
            Action::check("no old unit here", "test -e /etc/guard-ok"),
        );
        assert!(converge(&fake, &h, &p, &resolve).await.is_ok());
    }

    /// A transport that dies like a killed clusterctl: from the first change or write that
    /// `dies_at` matches on, nothing more reaches the host.
    struct Killed<'a> {
        inner: &'a FakeHosts,
        dies_at: &'a (dyn Fn(&str) -> bool + Send + Sync),
        dead: std::sync::atomic::AtomicBool,
    }

    impl<'a> Killed<'a> {
        fn new(inner: &'a FakeHosts, dies_at: &'a (dyn Fn(&str) -> bool + Send + Sync)) -> Self {
            Killed {
                inner,
                dies_at,
                dead: Default::default(),
            }
        }
        fn alive(&self, what: &str) -> anyhow::Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.dead.load(SeqCst) || (self.dies_at)(what) {
                self.dead.store(true, SeqCst);
                bail!("killed");
            }
            Ok(())
        }
    }

    impl Executor for Killed<'_> {
        fn query<'a>(
            &'a self,
            host: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            Box::pin(async move {
                self.alive("")?;
                self.inner.query(host, cmd).await
            })
        }
        fn change<'a>(
            &'a self,
            host: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            Box::pin(async move {
                self.alive(cmd.as_str())?;
                self.inner.change(host, cmd).await
            })
        }
        fn put<'a>(
            &'a self,
            host: &'a Host,
            path: &'a str,
            blob: &'a Blob,
            sha256: &'a str,
            mode: u32,
        ) -> BoxFuture<'a, anyhow::Result<u64>> {
            Box::pin(async move {
                self.alive(&format!("put {path}"))?;
                self.inner.put(host, path, blob, sha256, mode).await
            })
        }
    }

    /// Records what the guard was asked to take out of service.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<Vec<String>>>);

    impl BeforeRestart for Recorded {
        fn before<'a>(&'a self, _: &'a Host, running: &'a [String]) -> BoxFuture<'a, Vec<String>> {
            self.0.lock().unwrap().push(running.to_vec());
            Box::pin(async { Vec::new() })
        }
    }

    /// A host that runs demo.service from plan v1.
    async fn running_v1() -> (FakeHosts, Host) {
        let fake = FakeHosts::default();
        let h = host();
        converge(&fake, &h, &plan("v1"), &resolve).await.unwrap();
        fake.log.lock().unwrap().clear();
        (fake, h)
    }

    /// Whether demo.service restarted after its unit file was last written (the fake's log
    /// is the host's history).
    fn restarted_after_write(fake: &FakeHosts) -> bool {
        let log = fake.log.lock().unwrap();
        let put = log
            .iter()
            .rposition(|l| l.contains("put /etc/systemd/system/demo.service"));
        let restart = log
            .iter()
            .rposition(|l| l.contains("systemctl restart demo.service"));
        let reload = log
            .iter()
            .rposition(|l| l.ends_with("systemctl daemon-reload"));
        matches!((put, reload, restart), (Some(p), Some(d), Some(r)) if p < d && d < r)
    }

    #[tokio::test]
    async fn a_run_killed_after_the_files_and_before_the_restart_is_finished_by_the_next() {
        let (fake, h) = running_v1().await;
        let dies = |c: &str| c == "systemctl daemon-reload";
        let killed = Killed::new(&fake, &dies);
        assert!(
            converge(&killed, &h, &plan("v2"), &resolve).await.is_err(),
            "killed"
        );
        assert_eq!(
            fake.files.lock().unwrap()[&(
                h.name.to_string(),
                "/etc/systemd/system/demo.service".into()
            )],
            b"v2",
            "the new file is on the host, the old process runs"
        );
        let mut owed = fake.pending("h1");
        owed.sort();
        assert_eq!(owed, ["daemon-reload", "unit@demo.service"]);

        // The plain re-run: every file matches, yet the work is done.
        let again = converge(&fake, &h, &plan("v2"), &resolve).await.unwrap();
        assert_eq!(again.files_written, 0);
        assert_eq!(again.restarts, ["demo.service"]);
        assert_eq!(again.resumed.len(), 2, "{again:?}");
        assert!(!again.is_noop(), "a resumed run is no no-op");
        assert!(
            restarted_after_write(&fake),
            "{:?}",
            fake.log.lock().unwrap()
        );
        assert!(fake.pending("h1").is_empty(), "the record is cleared");
        let third = converge(&fake, &h, &plan("v2"), &resolve).await.unwrap();
        assert!(third.is_noop(), "{third:?}");
    }

    #[tokio::test]
    async fn the_record_is_written_before_any_file_so_a_kill_while_writing_is_covered() {
        let (fake, h) = running_v1().await;
        // Killed while the files go out: the record is there, the file may be old or new.
        let dies = |c: &str| c.starts_with("put ");
        let killed = Killed::new(&fake, &dies);
        assert!(converge(&killed, &h, &plan("v2"), &resolve).await.is_err());
        assert!(
            fake.pending("h1")
                .contains(&"unit@demo.service".to_string())
        );
        let again = converge(&fake, &h, &plan("v2"), &resolve).await.unwrap();
        assert_eq!(again.files_written, 1);
        assert_eq!(
            again.restarts,
            ["demo.service"],
            "restarted once, not twice"
        );
        assert!(restarted_after_write(&fake));
        assert!(fake.pending("h1").is_empty());
    }

    #[tokio::test]
    async fn a_run_killed_after_the_restart_and_before_the_gate_restarts_and_gates_again() {
        let (fake, h) = running_v1().await;
        // The runner's form: restarted, then killed while its gate waits (no finish_pending).
        let ch = converge_gated(&fake, &h, &plan("v2"), &resolve, &NoGuard)
            .await
            .unwrap();
        assert_eq!(ch.restarts, ["demo.service"]);
        assert!(!fake.pending("h1").is_empty(), "kept until the gate passed");
        let mut again = converge_gated(&fake, &h, &plan("v2"), &resolve, &NoGuard)
            .await
            .unwrap();
        assert_eq!(again.restarts, ["demo.service"], "restart what is pending");
        assert_eq!(again.files_written, 0);
        // The gate passed: now the record goes.
        finish_pending(&fake, &h, &mut again).await.unwrap();
        assert!(fake.pending("h1").is_empty());
        assert!(
            converge_gated(&fake, &h, &plan("v2"), &resolve, &NoGuard)
                .await
                .unwrap()
                .is_noop()
        );
    }

    #[tokio::test]
    async fn pending_work_of_units_another_phase_manages_waits_for_that_phase() {
        let (fake, h) = running_v1().await;
        fake.files.lock().unwrap().insert(
            (
                h.name.to_string(),
                Pending::Unit("other.service".into()).path(),
            ),
            b"x".to_vec(),
        );
        let ch = converge(&fake, &h, &plan("v1"), &resolve).await.unwrap();
        assert!(ch.is_noop(), "{ch:?}");
        assert_eq!(
            fake.pending("h1"),
            ["unit@other.service"],
            "left for its phase"
        );
    }

    #[tokio::test]
    async fn a_restart_resumed_by_another_phase_daemon_reloads_first() {
        let (fake, h) = running_v1().await;
        let dies = |c: &str| c == "systemctl daemon-reload";
        let killed = Killed::new(&fake, &dies);
        let _ = converge(&killed, &h, &plan("v2"), &resolve).await;
        // An earlier phase of the re-run loads a certificate of the same unit: it finds the
        // pending restart, and must not restart on the old unit definition.
        let certs = HostPlan {
            host: "h1".into(),
            address: "10.77.0.11".into(),
            actions: vec![Action::rendered(
                "/etc/demo.crt",
                0o644,
                "c",
                "cert".into(),
                &["demo.service"],
            )],
        };
        fake.log.lock().unwrap().clear();
        let ch = converge(&fake, &h, &certs, &resolve).await.unwrap();
        assert_eq!(ch.restarts, ["demo.service"]);
        assert!(
            restarted_after_write(&fake) || {
                let log = fake.log.lock().unwrap();
                let d = log
                    .iter()
                    .position(|l| l.ends_with("systemctl daemon-reload"));
                let r = log
                    .iter()
                    .position(|l| l.ends_with("systemctl restart demo.service"));
                matches!((d, r), (Some(d), Some(r)) if d < r)
            }
        );
        assert!(fake.pending("h1").is_empty(), "{:?}", fake.pending("h1"));
        let later = converge(&fake, &h, &plan("v2"), &resolve).await.unwrap();
        assert!(later.is_noop(), "{later:?}");
    }

    #[tokio::test]
    async fn a_pending_static_pod_is_taken_out_of_service_and_gated_again() {
        let fake = FakeHosts::default();
        let h = host();
        let manifest = format!("{}/kube-apiserver.yaml", crate::engine::MANIFESTS);
        let pod = |v: &str| HostPlan {
            host: "h1".into(),
            address: "10.77.0.11".into(),
            actions: vec![Action::rendered(&manifest, 0o600, "m", v.into(), &[])],
        };
        converge(&fake, &h, &pod("v1"), &resolve).await.unwrap();
        let guard = Recorded::default();
        // Replaced, then killed before the gate saw the new pod.
        converge_gated(&fake, &h, &pod("v2"), &resolve, &guard)
            .await
            .unwrap();
        assert_eq!(fake.pending("h1"), ["pod@kube-apiserver.yaml"]);
        let mut again = converge_gated(&fake, &h, &pod("v2"), &resolve, &guard)
            .await
            .unwrap();
        assert_eq!(again.files_written, 0);
        assert_eq!(again.resumed.len(), 1, "{again:?}");
        assert_eq!(
            *guard.0.lock().unwrap(),
            [vec![manifest.clone()], vec![manifest.clone()]],
            "out of the balancers both times"
        );
        finish_pending(&fake, &h, &mut again).await.unwrap();
        assert!(fake.pending("h1").is_empty());
    }

    #[tokio::test]
    async fn a_dry_run_neither_writes_nor_clears_the_record() {
        let (fake, h) = running_v1().await;
        let dies = |c: &str| c == "systemctl daemon-reload";
        let killed = Killed::new(&fake, &dies);
        let _ = converge(&killed, &h, &plan("v2"), &resolve).await;
        let before = fake.pending("h1");
        let dry = DryRun::new(&fake);
        let ch = converge(&dry, &h, &plan("v2"), &resolve).await.unwrap();
        assert_eq!(
            ch.restarts,
            ["demo.service"],
            "it says what the run would finish"
        );
        assert_eq!(fake.pending("h1"), before);
    }

    #[test]
    fn pending_entries_round_trip_through_their_file_names() {
        for p in [
            Pending::DaemonReload,
            Pending::Unit("kube-apiserver.service".into()),
            Pending::Unit("etcd-backup@x.timer".into()),
            Pending::Pod("etcd.yaml".into()),
            Pending::Drain,
        ] {
            assert_eq!(Pending::parse(&p.file_name()), Some(p.clone()));
            assert!(p.path().starts_with(PENDING_DIR));
        }
        assert_eq!(Pending::parse("../x"), None);
        assert_eq!(Pending::parse(".unit@x.tmp"), None);
        assert_eq!(
            parse_pending("pending unit@a.service\npending drain\nnoise\n"),
            [Pending::Unit("a.service".into()), Pending::Drain]
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(q("/etc/demo dir"), "'/etc/demo dir'");
        assert_eq!(q("/etc/plain"), "/etc/plain");
    }
}
