//! The one runner behind every command: phase selection, plan, apply with per-host progress,
//! health gates, and a journal of what was done.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use serde::Serialize;

use super::HostPlan;
use super::executor::{
    BeforeRestart, Blob, Both, Executor, HostChanges, converge, converge_gated, finish_pending,
};
use super::{Context, Order, Phase, PhasePlan, Source};
use crate::diag::UserError;
use crate::inventory::Host;
use futures::future::BoxFuture;

/// A playbook ready to run: the command's name and its phases in order (built by
/// `phases::playbook::Playbook::runner`).
pub struct Runner {
    pub command: String,
    pub phases: Vec<Box<dyn Phase>>,
    /// Who else rolls with the hosts (etcd's leadership: the phases provide it, the engine
    /// knows no phase). None: hosts go in plan order and only the balancer rotation guards a
    /// restart.
    pub roll_guard: Option<RollGuardFactory>,
}

/// Makes a run's [`RollGuard`] from its context.
pub type RollGuardFactory = for<'a> fn(&'a Context) -> Box<dyn RollGuard + 'a>;

/// Work outside the engine that must go with a one-at-a-time walk: which host goes last, and
/// (as a [`BeforeRestart`]) what happens right before a change restarts something running.
pub trait RollGuard: BeforeRestart {
    /// The host to walk last among `plans` (e.g. the etcd member that leads now), if any.
    fn last<'a>(&'a self, plans: Vec<&'a HostPlan>) -> BoxFuture<'a, Option<String>>;
}

/// No guard beyond the rotation.
struct NoGuard;

impl BeforeRestart for NoGuard {
    fn before<'a>(&'a self, _: &'a Host, _: &'a [String]) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
}

impl RollGuard for NoGuard {
    fn last<'a>(&'a self, _: Vec<&'a HostPlan>) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }
}

impl Runner {
    pub fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<PhasePlan>> {
        self.phases
            .iter()
            .map(|p| {
                p.plan(ctx)
                    .with_context(|| format!("planning phase {}", p.name()))
            })
            .collect()
    }

    /// Plans and applies every selected phase in order. A phase whose host fails stops the run
    /// after the other hosts finished their current step; the journal says where it stopped.
    /// Every host of the run carries this run's marker meanwhile (see [`super::lock`]; not
    /// in a dry run), so a run from another machine is refused.
    pub async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        exec: &'a dyn Executor,
        resolve: &'a (dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
        progress: &'a dyn Progress,
        journal: &'a Journal,
    ) -> anyhow::Result<RunReport> {
        let hosts = ctx.hosts_where(|_| true);
        let owner = super::lock::Owner::current(&self.command);
        let marked = !exec.is_dry_run();
        if marked {
            for l in super::lock::take_hosts(exec, &hosts, &owner, ctx.options.break_lock).await? {
                eprintln!("{} lock {l}", stamp());
            }
        }
        let r = self
            .apply_phases(ctx, exec, resolve, progress, journal)
            .await;
        // A phase left by an error stops its transport's servers too.
        exec.phase_done().await;
        // The live lines go before anything reports the run: its summary or its error.
        crate::console::end_phase();
        if marked {
            super::lock::release_hosts(exec, &hosts, &owner).await;
        }
        r
    }

    async fn apply_phases<'a>(
        &'a self,
        ctx: &'a Context,
        exec: &'a dyn Executor,
        resolve: &'a (dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
        progress: &'a dyn Progress,
        journal: &'a Journal,
    ) -> anyhow::Result<RunReport> {
        let mut report = RunReport {
            command: self.command.clone(),
            phases: Vec::new(),
        };
        let concurrency = ctx.inv().spec.ssh.concurrency.max(1);
        let rotation = crate::engine::rotation::Rotation::new(ctx, exec);
        // Before a restart: etcd's leadership handed over, the apiserver out of the balancers.
        let leadership: Box<dyn RollGuard + '_> = match self.roll_guard {
            Some(make) => make(ctx),
            None => Box::new(NoGuard),
        };
        let guard = Both(leadership.as_ref(), &rotation);
        // A run killed while an apiserver was out of the balancers left it there: put back
        // every backend clusterctl drained whose apiserver is ready, before anything else.
        for (host, line) in rotation.reconcile().await {
            eprintln!("{} rotation {host}: {line}", stamp());
            journal.note(&self.command, "rotation", &host, &line);
        }
        for (index, phase) in self.phases.iter().enumerate() {
            let started = Instant::now();
            phase
                .gather(ctx, exec)
                .await
                .with_context(|| format!("phase {}: reading the hosts' facts", phase.name()))?;
            let plan = phase
                .plan(ctx)
                .with_context(|| format!("planning phase {}", phase.name()))?;
            progress.phase(&plan);
            phase
                .apply_local(ctx)
                .with_context(|| format!("phase {}: local step", phase.name()))?;
            let hosts: Vec<(&Host, &super::HostPlan)> = plan
                .hosts
                .iter()
                .filter_map(|hp| ctx.inv().host(&hp.host).map(|h| (h, hp)))
                .collect();
            let bad_input = std::sync::Mutex::new(Vec::new());
            let one = HostRun {
                bad_input: &bad_input,
                command: &self.command,
                phase: phase.as_ref(),
                plan: &plan,
                ctx,
                exec,
                resolve,
                progress,
                journal,
                rotation: &rotation,
                guard: &guard,
            };
            // Rolling: split into hosts where the phase's services already run (one at a time)
            // and fresh hosts (together).
            let mut batch = 1;
            let (parallel, mut serial): (Vec<_>, Vec<_>) = match plan.order {
                Order::Parallel => (hosts.clone(), Vec::new()),
                Order::OneAtATime => (Vec::new(), hosts.clone()),
                Order::Batches(n) => {
                    batch = n.max(1);
                    (Vec::new(), hosts.clone())
                }
                Order::Rolling => {
                    let running = futures::stream::iter(hosts.iter().map(|&(h, hp)| async move {
                        let runs = match phase.running_check(ctx, h) {
                            // A failed query counts as running, the safe side.
                            Some(cmd) => exec.query(h, &cmd).await.map_or(true, |o| o.status == 0),
                            None => runs_any(exec, h, hp).await,
                        };
                        (h.name.to_string(), runs)
                    }))
                    .buffer_unordered(concurrency)
                    .collect::<BTreeMap<String, bool>>()
                    .await;
                    hosts
                        .iter()
                        .partition(|(h, _)| !running.get(h.name.as_str()).copied().unwrap_or(false))
                }
            };
            let mut results: Vec<(String, HostOutcome)> =
                futures::stream::iter(parallel.iter().map(|&(h, hp)| one.run(h, hp)))
                    .buffer_unordered(concurrency)
                    .collect()
                    .await;
            // The etcd member leading now restarts last: the leadership changes once.
            let plans = serial.iter().map(|(_, hp)| &**hp).collect();
            if let Some(last) = leadership.last(plans).await
                && let Some(i) = serial.iter().position(|(h, _)| h.name == last)
            {
                serial[i..].rotate_left(1);
            }
            if !results
                .iter()
                .any(|(_, o)| matches!(o, HostOutcome::Failed(_)))
            {
                results.extend({
                    let mut v = Vec::new();
                    for group in serial.chunks(batch) {
                        let r =
                            futures::future::join_all(group.iter().map(|&(h, hp)| one.run(h, hp)))
                                .await;
                        let failed = r.iter().any(|(_, o)| matches!(o, HostOutcome::Failed(_)));
                        v.extend(r);
                        if failed {
                            break; // the others keep serving; a re-run resumes here
                        }
                    }
                    v
                });
            }
            // Nothing the transport started for this phase outlives it.
            exec.phase_done().await;
            let hosts: BTreeMap<String, HostOutcome> = results.into_iter().collect();
            let failed: Vec<String> = hosts
                .iter()
                .filter_map(|(h, o)| {
                    if let HostOutcome::Failed(e) = o {
                        Some(format!("{h}: {e}"))
                    } else {
                        None
                    }
                })
                .collect();
            let cluster = if failed.is_empty() {
                let r = phase
                    .apply_cluster(ctx, exec.is_dry_run())
                    .await
                    .with_context(|| format!("phase {}: cluster step", phase.name()));
                match r {
                    Ok(lines) => {
                        progress.cluster_finished(&plan, &lines);
                        lines
                    }
                    Err(e) => {
                        report.phases.push(PhaseReport {
                            phase: plan.phase.clone(),
                            seconds: started.elapsed().as_secs_f64(),
                            hosts,
                            cluster: vec![],
                        });
                        self.undo(index, ctx, exec, resolve, progress, journal, &mut report)
                            .await;
                        return Err(UserError::failed(format!(
                            "{e:#}\nfix the cause and run `clusterctl {}` again: finished steps are not redone",
                            self.command
                        ))
                        .in_phase(plan.phase.clone())
                        .with_fix(format!("fix the cause and run `clusterctl {}` again: finished steps are not redone", self.command))
                        .into());
                    }
                }
            } else {
                Vec::new()
            };
            report.phases.push(PhaseReport {
                phase: plan.phase.clone(),
                seconds: started.elapsed().as_secs_f64(),
                hosts,
                cluster,
            });
            if !failed.is_empty() {
                self.undo(index, ctx, exec, resolve, progress, journal, &mut report)
                    .await;
                // Every host failed on bad input (e.g. preflight refusing what the inventory
                // asks of a host): the command's answer to bad input, exit 2.
                let bad = bad_input.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let code = if failed
                    .iter()
                    .all(|f| bad.iter().any(|h| f.starts_with(&format!("{h}: "))))
                {
                    crate::diag::EXIT_BAD_INPUT
                } else {
                    crate::diag::EXIT_FAILED
                };
                return Err(UserError::with_code(code, format!(
                    "phase {} failed on {} host(s):\n  {}\nfix the cause and run `clusterctl {}` again: finished steps are not redone",
                    plan.phase,
                    failed.len(),
                    failed.join("\n  "),
                    self.command
                ))
                .in_phase(plan.phase.clone())
                .on_host(failed[0].split(':').next().unwrap_or_default())
                .with_fix(format!("fix the cause and run `clusterctl {}` again: finished steps are not redone", self.command))
                .into());
            }
        }
        Ok(report)
    }
    /// After phase `failed` failed: when it has an undo plan ([`Phase::undo`]), that plan and
    /// those of the phases right before it that have one are converged, newest first, every
    /// host of a plan at once (no gate; the journal records them as `<phase>-undo`). A phase
    /// without an undo plan is a point of no return: nothing before it is undone.
    #[allow(clippy::too_many_arguments)]
    async fn undo(
        &self,
        failed: usize,
        ctx: &Context,
        exec: &dyn Executor,
        resolve: &(dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
        progress: &dyn Progress,
        journal: &Journal,
        report: &mut RunReport,
    ) {
        for phase in self.phases[..=failed].iter().rev() {
            let plan = match phase.undo(ctx) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("{}: planning its undo failed: {e:#}", phase.name());
                    break;
                }
            };
            let started = Instant::now();
            progress.phase(&plan);
            let hosts = futures::stream::iter(
                plan.hosts
                    .iter()
                    .filter_map(|hp| ctx.inv().host(&hp.host).map(|h| (h, hp))),
            )
            .map(|(h, hp)| {
                let plan = &plan;
                async move {
                    let t = Instant::now();
                    let outcome = match converge(exec, h, hp, resolve).await {
                        Ok(c) => HostOutcome::Done(c),
                        Err(e) => HostOutcome::Failed(format!("{e:#}")),
                    };
                    progress.host_finished(plan, h, &outcome, t.elapsed());
                    journal.record(&self.command, plan, h, &outcome);
                    (h.name.to_string(), outcome)
                }
            })
            .buffer_unordered(ctx.inv().spec.ssh.concurrency.max(1))
            .collect()
            .await;
            report.phases.push(PhaseReport {
                phase: plan.phase.clone(),
                seconds: started.elapsed().as_secs_f64(),
                hosts,
                cluster: vec![],
            });
        }
    }
}

/// Whether any service the host plan manages, or would restart, is active now (a failed query
/// counts as running, the safe side).
async fn runs_any(exec: &dyn Executor, h: &Host, hp: &super::HostPlan) -> bool {
    let mut units: Vec<String> = hp
        .actions
        .iter()
        .flat_map(|a| match a {
            super::Action::Service { unit, .. } => vec![unit.as_str()],
            super::Action::File { restarts, .. } => restarts.iter().map(String::as_str).collect(),
            _ => vec![],
        })
        .map(str::to_string)
        .collect();
    units.sort();
    units.dedup();
    if units.is_empty() {
        return false;
    }
    match exec
        .query(
            h,
            &crate::ssh::shell::systemctl(&["is-active"], &units)
                .raw("2>/dev/null")
                .into(),
        )
        .await
    {
        Ok(o) => o.stdout.lines().any(|l| l.trim() == "active"),
        Err(_) => true,
    }
}

/// Everything one host's turn in a phase needs.
#[derive(Clone, Copy)]
struct HostRun<'a, 'p> {
    /// Hosts whose failure was bad input ([`UserError`] with exit 2 in the error's chain).
    bad_input: &'a std::sync::Mutex<Vec<String>>,
    command: &'a str,
    phase: &'a dyn Phase,
    plan: &'p PhasePlan,
    ctx: &'a Context,
    exec: &'a dyn Executor,
    resolve: &'a (dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
    progress: &'a dyn Progress,
    journal: &'a Journal,
    /// Takes an apiserver out of the balancers before a change restarts it.
    rotation: &'a crate::engine::rotation::Rotation<'a>,
    /// What must happen before a change restarts something running (the rotation included).
    guard: &'a dyn BeforeRestart,
}

impl HostRun<'_, '_> {
    /// Converge, then the phase's health gate; progress and journal either way.
    async fn run(self, h: &Host, hp: &super::HostPlan) -> (String, HostOutcome) {
        self.progress.host_started(self.plan, h);
        let t = Instant::now();
        let r = async {
            // Cluster-side work the host's change depends on (e.g. etcd's member add).
            let before = self
                .phase
                .before_host(self.ctx, h, self.exec)
                .await
                .with_context(|| format!("{} before {}", self.phase.name(), h.name))?;
            let mut changes = converge_gated(self.exec, h, hp, self.resolve, self.guard).await?;
            if self.exec.is_dry_run() {
                changes.report = before;
                return anyhow::Ok(changes);
            }
            crate::console::host_step(&h.name, "health check");
            changes.report = self
                .phase
                .verify(self.ctx, h, self.exec)
                .await
                .with_context(|| format!("{} check", self.phase.name()))?;
            changes.report.splice(0..0, before);
            // Only now is the work done: a run killed before this line leaves the host's
            // pending record, and the next run restarts and gates again.
            finish_pending(self.exec, h, &mut changes).await?;
            anyhow::Ok(changes)
        }
        .await;
        // Back into the balancers once the gate passed; after a failure too, where their own
        // health checks keep a broken apiserver out.
        let back = self.rotation.put_back(h).await;
        let r = r.map(|mut c| {
            c.warnings.extend(back);
            c
        });
        // The phase's own clean-up of the host's turn (e.g. uncordon), whatever happened.
        let after = self
            .phase
            .after_host(self.ctx, h, self.exec, r.is_ok())
            .await
            .with_context(|| format!("{} after {}", self.phase.name(), h.name));
        let r = match (r, after) {
            (Ok(mut c), Ok(w)) => {
                c.warnings.extend(w);
                Ok(c)
            }
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Err(e), Err(a)) => Err(e.context(format!("{a:#}"))),
        };
        let outcome = match r {
            Ok(c) => HostOutcome::Done(c),
            Err(e) => {
                if e.chain().any(|c| {
                    c.downcast_ref::<UserError>()
                        .is_some_and(|u| u.code == crate::diag::EXIT_BAD_INPUT)
                }) {
                    self.bad_input
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(h.name.to_string());
                }
                HostOutcome::Failed(format!("{e:#}"))
            }
        };
        tracing::info!(
            phase = self.phase.name(),
            host = %h.name,
            seconds = t.elapsed().as_secs_f64(),
            ok = matches!(outcome, HostOutcome::Done(_)),
            "host finished"
        );
        self.progress
            .host_finished(self.plan, h, &outcome, t.elapsed());
        self.journal.record(self.command, self.plan, h, &outcome);
        (h.name.to_string(), outcome)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum HostOutcome {
    Done(HostChanges),
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub seconds: f64,
    pub hosts: BTreeMap<String, HostOutcome>,
    /// What the phase's cluster step (`Phase::apply_cluster`) reported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub command: String,
    pub phases: Vec<PhaseReport>,
}

impl RunReport {
    /// Files written, bytes sent and services restarted or started over the whole run.
    pub fn totals(&self) -> (usize, u64, usize) {
        let mut t = (0, 0, 0);
        for p in &self.phases {
            for o in p.hosts.values() {
                if let HostOutcome::Done(c) = o {
                    t.0 += c.files_written;
                    t.1 += c.bytes_sent;
                    t.2 += c.restarts.len() + c.started.len();
                }
            }
        }
        t
    }

    /// One line per phase with its wall time, names aligned: what a command prints last.
    pub fn phase_lines(&self) -> Vec<String> {
        let width = self.phases.iter().map(|p| p.phase.len()).max().unwrap_or(0);
        self.phases
            .iter()
            .map(|p| format!("  {:<width$} {:>6.1}s", p.phase, p.seconds))
            .collect()
    }
}

/// Per-host progress. `ConsoleProgress` prints timestamped lines (above the live per-host lines
/// on a terminal, plainly on a pipe or in CI) and drives those live lines.
pub trait Progress: Send + Sync {
    fn phase(&self, plan: &PhasePlan);
    fn host_started(&self, plan: &PhasePlan, host: &Host);
    fn host_finished(&self, plan: &PhasePlan, host: &Host, outcome: &HostOutcome, took: Duration);
    /// The phase's cluster step is done; `lines` is what it reported.
    fn cluster_finished(&self, plan: &PhasePlan, lines: &[String]) {
        for l in lines {
            eprintln!("{} {}: {l}", stamp(), plan.phase);
        }
    }
}

/// The console's progress: each line below goes through `eprintln!` (the console: above the
/// live view on a terminal, exactly these plain lines off one), and on a terminal each phase
/// gets one live line per host (step, bytes sent, elapsed; see `crate::console`), cleared when
/// the next phase or the end of the run comes.
pub struct ConsoleProgress;

fn stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:02}:{:02}:{:02}", now.hour(), now.minute(), now.second())
}

impl Progress for ConsoleProgress {
    fn phase(&self, plan: &PhasePlan) {
        eprintln!(
            "{} == {}: {} ({} host(s))",
            stamp(),
            plan.phase,
            plan.summary,
            plan.hosts.len()
        );
        let hosts: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
        crate::console::begin_phase(&format!("{}: {}", plan.phase, plan.summary), &hosts);
    }
    fn host_started(&self, _plan: &PhasePlan, host: &Host) {
        crate::console::host_start(&host.name);
    }
    fn host_finished(&self, plan: &PhasePlan, host: &Host, outcome: &HostOutcome, took: Duration) {
        let what = match outcome {
            HostOutcome::Done(c) if c.is_noop() => "unchanged".to_string(),
            HostOutcome::Done(c) => format!(
                "{} file(s) written ({} B{}), {} started, {} restarted{}",
                c.files_written,
                c.bytes_sent,
                if c.bytes_from_peers > 0 {
                    format!(" + {} B from peers", c.bytes_from_peers)
                } else {
                    String::new()
                },
                c.started.len(),
                c.restarts.len(),
                if c.reloads.is_empty() {
                    String::new()
                } else {
                    format!(", {} reloaded", c.reloads.len())
                }
            ),
            HostOutcome::Failed(e) => format!("FAILED: {e}"),
        };
        crate::console::host_done(&host.name, &format!("{what} [{:.1}s]", took.as_secs_f64()));
        eprintln!(
            "{} {} {}: {what} [{:.1}s]",
            stamp(),
            plan.phase,
            host.name,
            took.as_secs_f64()
        );
        if let HostOutcome::Done(c) = outcome {
            for r in &c.resumed {
                eprintln!("{} {} {}: resumed: {r}", stamp(), plan.phase, host.name);
            }
            for w in &c.warnings {
                eprintln!("{} {} {}: warning: {w}", stamp(), plan.phase, host.name);
            }
            for r in &c.report {
                eprintln!("{} {}: {r}", stamp(), plan.phase);
            }
        }
    }
}

/// Append-only record of what each phase did on each host, keyed by the hash of its plan:
/// `clusters/<name>/journal.jsonl`.
pub struct Journal {
    path: Option<PathBuf>,
    lock: std::sync::Mutex<()>,
}

#[derive(Serialize, serde::Deserialize, Debug, Clone)]
pub struct JournalEntry {
    pub time: String,
    pub command: String,
    pub phase: String,
    pub host: String,
    pub inputs: String,
    pub ok: bool,
    #[serde(default)]
    pub noop: bool,
}

/// A journal line as written: the entry, plus the work an interrupted run had left pending
/// that this one finished (readers that do not need it ignore the field).
#[derive(Serialize)]
struct Written<'a> {
    #[serde(flatten)]
    entry: &'a JournalEntry,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    resumed: &'a [String],
}

impl Journal {
    pub fn at(path: PathBuf) -> Journal {
        Journal {
            path: Some(path),
            lock: std::sync::Mutex::new(()),
        }
    }

    /// A journal that records nothing (dry runs).
    pub fn disabled() -> Journal {
        Journal {
            path: None,
            lock: std::sync::Mutex::new(()),
        }
    }

    pub fn record(&self, command: &str, plan: &PhasePlan, host: &Host, outcome: &HostOutcome) {
        if self.path.is_none() {
            return;
        }
        let e = JournalEntry {
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            command: command.into(),
            phase: plan.phase.clone(),
            host: host.name.to_string(),
            inputs: plan.inputs_hash(&host.name),
            ok: matches!(outcome, HostOutcome::Done(_)),
            noop: matches!(outcome, HostOutcome::Done(c) if c.is_noop()),
        };
        let resumed = match outcome {
            HostOutcome::Done(c) => c.resumed.as_slice(),
            HostOutcome::Failed(_) => &[],
        };
        self.append(&e, resumed);
    }

    /// A line about `host` outside any phase's plan (e.g. the balancer rotation reconciled
    /// at the start of a run).
    pub fn note(&self, command: &str, phase: &str, host: &str, what: &str) {
        let e = JournalEntry {
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            command: command.into(),
            phase: phase.into(),
            host: host.into(),
            inputs: String::new(),
            ok: true,
            noop: false,
        };
        self.append(&e, &[what.to_string()]);
    }

    fn append(&self, entry: &JournalEntry, resumed: &[String]) {
        let e = Written { entry, resumed };
        let Some(path) = &self.path else { return };
        let _g = self.lock.lock().unwrap();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{}", serde_json::to_string(&e).unwrap_or_default());
        }
    }

    /// The last entry per (phase, host).
    pub fn last(&self) -> BTreeMap<(String, String), JournalEntry> {
        let mut m = BTreeMap::new();
        let Some(path) = &self.path else { return m };
        let Ok(text) = std::fs::read_to_string(path) else {
            return m;
        };
        for line in text.lines() {
            if let Ok(e) = serde_json::from_str::<JournalEntry>(line) {
                m.insert((e.phase.clone(), e.host.clone()), e);
            }
        }
        m
    }
}
