//! `clusterctl upgrade`: move a running cluster to the inventory's versions (or `--to`) from
//! the bundle, in the order the version skew policy asks for, without dropping the API.
//!
//! 1. Every host is asked what it runs (the running process's executable, through
//!    /proc/<pid>/exe: its `--version` and sha256), the targets come from the bundle, and the
//!    skew check (`skew`) refuses a plan outside the policy before anything changes.
//!    `upgrade plan` stops here and prints it.
//! 2. The stages of `playbooks/upgrade.yaml`, in order: etcd members one at a time, then the
//!    control plane one host at a time, then the nodes (control-plane nodes one at a time,
//!    workers in batches of `--max-unavailable`, each cordoned, drained and uncordoned).
//!    On each host the current binaries are first kept in
//!    `/usr/local/lib/clusterctl/previous/` (`binaries`), then the targets are converged with
//!    the units the existing phases render for the target version, then the stage's gate.
//! 3. A failed step stops the run; the hosts not reached keep serving their old version. The
//!    next `upgrade` resumes: converged hosts are no-ops (and are not drained again).
//! 4. `clusters/<name>/versions.json` (`record`) says what the cluster runs; `init` and `join`
//!    refuse an inventory that disagrees with it, and an unfinished upgrade.
//!
//! `upgrade --rollback --hosts X` installs the copies kept on those hosts again, one host at a
//! time behind the same gates (etcd excluded: a member is never downgraded).

pub mod binaries;
pub mod control_plane;
pub mod drain;
pub mod etcd;
pub mod nodes;
pub mod record;
pub mod rollback;
pub mod skew;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::{Global, Output};
use crate::diag::UserError;
use crate::inventory::{Host, Role};
use crate::phases::blobs::Blobs;
use crate::phases::cmd::Scope;
use crate::phases::executor::{Blob, DryRun, Executor, HostChanges, converge, converge_guarded};
use crate::phases::runner::{HostOutcome, Journal, PlainProgress, Progress};
use crate::phases::ssh_exec::SshExecutor;
use crate::phases::{Context, HostPlan, Phase, PhasePlan, Source};
use binaries::{Component, Running};

#[derive(Args, Debug, Clone, Default)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    pub action: Option<UpgradeCmd>,
    /// Target Kubernetes version (default: the inventory's spec.kubernetesVersion). The etcd
    /// target is always spec.etcd.version.
    #[arg(long)]
    pub to: Option<String>,
    /// Workers upgraded at once (each cordoned and drained first).
    #[arg(long, default_value_t = 1)]
    pub max_unavailable: usize,
    /// How long a node's drain may take (PodDisruptionBudgets, grace periods): e.g. 300s, 5m.
    #[arg(long, default_value = "300s", value_parser = crate::duration::parse)]
    pub drain_timeout: Duration,
    /// Return the hosts of --hosts to the binaries the last upgrade kept on them.
    #[arg(long)]
    pub rollback: bool,
    /// Only print what would be done (reads hosts, changes nothing, drains nothing).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Subcommand, Debug, Clone)]
pub enum UpgradeCmd {
    /// Versions running now per host, the targets, the skew check, and what will restart
    /// where. Reads the hosts, changes nothing; exit 2 when the plan breaks the skew policy.
    Plan {
        /// Target Kubernetes version (default: the inventory's).
        #[arg(long)]
        to: Option<String>,
    },
}

/// The components a stage swaps.
fn stage_components(stage: &str) -> &'static [Component] {
    match stage {
        "upgrade-etcd" => &binaries::ETCD,
        "upgrade-control-plane" => &binaries::CONTROL_PLANE,
        _ => &binaries::NODE,
    }
}

/// What each host runs now, per component (every component its roles run).
type Observations = BTreeMap<String, Vec<Running>>;

fn host_components(ctx: &Context, h: &Host) -> Vec<Component> {
    let mut v = Vec::new();
    if h.has(Role::Etcd) {
        v.push(binaries::ETCD[0]);
    }
    if h.has(Role::ControlPlane) {
        v.extend(binaries::CONTROL_PLANE);
    }
    if ctx.inv().runs_kubelet(h) {
        v.extend(binaries::NODE);
    }
    v
}

async fn observe(ctx: &Context, exec: &dyn Executor) -> anyhow::Result<Observations> {
    let hosts: Vec<&Host> = ctx.inv().spec.hosts.iter().collect();
    let all = futures::future::join_all(hosts.iter().map(|h| async move {
        let comps: Vec<(Component, String)> = host_components(ctx, h)
            .into_iter()
            .map(|c| {
                let path = binaries::target_item(ctx, h, &c)
                    .ok()
                    .flatten()
                    .and_then(|i| i.install.as_ref().map(|x| x.path.clone()))
                    .unwrap_or_else(|| format!("/usr/local/bin/{}", c.name));
                (c, path)
            })
            .collect();
        let o = exec
            .query(h, &binaries::observe_script(&comps))
            .await
            .with_context(|| format!("{}: reading what runs", h.name))?;
        anyhow::Ok((h.name.clone(), binaries::parse_observed(&o.stdout)))
    }))
    .await;
    all.into_iter().collect()
}

/// The versions the upgrade moves to.
fn targets(ctx: &Context) -> record::Targets {
    record::Targets {
        kubernetes_version: ctx.inv().spec.kubernetes_version.clone(),
        etcd_version: ctx.inv().spec.etcd.version.clone(),
    }
}

/// Per host and component: (now, target, changes?) for the plan and the skew check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanRow {
    host: String,
    component: String,
    state: String,
    now: Option<String>,
    target: String,
    /// The running binary (or the one on disk) differs from the target's sha256: the unit
    /// restarts with the new binary.
    restarts: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn plan_rows(ctx: &Context, obs: &Observations) -> anyhow::Result<Vec<PlanRow>> {
    let mut rows = Vec::new();
    for h in &ctx.inv().spec.hosts {
        for c in host_components(ctx, h) {
            let it = binaries::target_item(ctx, h, &c)?.ok_or_else(|| {
                UserError::bad_input(format!(
                    "{}: the bundle has no {} binary for {} (roles {:?})\n  fix: use a bundle that holds the target versions (`clusterctl bundle ls`)",
                    ctx.loaded.path.display(),
                    c.name,
                    h.name,
                    h.roles
                ))
            })?;
            let want_version = if c.name == "etcd" {
                ctx.inv().spec.etcd.version.clone()
            } else {
                Some(ctx.inv().spec.kubernetes_version.clone())
            };
            if let Some(w) = &want_version
                && !record::same(&it.version, w)
            {
                let have: Vec<String> = ctx
                    .bundle
                    .as_ref()
                    .map(|b| {
                        b.manifest
                            .items
                            .iter()
                            .filter(|i| i.name == c.name)
                            .map(|i| i.version.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(UserError::bad_input(format!(
                    "the bundle has no {} {w} (it has: {})\n  fix: use a bundle with that version, or pick one it has with --to / spec.etcd.version",
                    c.name,
                    have.join(", ")
                ))
                .into());
            }
            let r = obs
                .get(&h.name)
                .and_then(|v| v.iter().find(|r| r.component == c.name));
            let target_sha = it.sha256.as_deref();
            let restarts = r.is_none_or(|r| {
                r.sha256.as_deref() != target_sha || r.disk_sha256.as_deref() != target_sha
            });
            rows.push(PlanRow {
                host: h.name.clone(),
                component: c.name.to_string(),
                state: r
                    .map(|r| r.state.clone())
                    .unwrap_or_else(|| "missing".into()),
                now: r.and_then(|r| r.version.clone()),
                target: it.version.clone(),
                restarts,
                note: it.note.clone(),
            });
        }
    }
    Ok(rows)
}

fn skew_check(ctx: &Context, rows: &[PlanRow]) -> Vec<String> {
    let mut hosts: BTreeMap<String, skew::Observed> = BTreeMap::new();
    for r in rows {
        let Some(v) = r.now.as_deref().and_then(skew::Ver::parse) else {
            continue;
        };
        hosts
            .entry(r.host.clone())
            .or_insert_with(|| skew::Observed {
                host: r.host.clone(),
                ..Default::default()
            })
            .versions
            .insert(r.component.clone(), v);
    }
    let Some(kube) = skew::Ver::parse(&ctx.inv().spec.kubernetes_version) else {
        return vec![format!(
            "target {} is not a version",
            ctx.inv().spec.kubernetes_version
        )];
    };
    let t = skew::Targets {
        kube,
        etcd: ctx
            .inv()
            .spec
            .etcd
            .version
            .as_deref()
            .and_then(skew::Ver::parse),
    };
    let mut v = skew::check(&hosts.into_values().collect::<Vec<_>>(), &t);
    for r in rows {
        if r.state == "missing" {
            v.push(format!(
                "{}: {} is not installed: `upgrade` moves a running cluster (install it with `clusterctl init` or `join`)",
                r.host, r.component
            ));
        }
    }
    v
}

fn render_plan(ctx: &Context, rows: &[PlanRow], problems: &[String], stages: &[String]) -> String {
    let mut s = String::new();
    let t = targets(ctx);
    let _ = writeln!(
        s,
        "upgrade plan for cluster {:?}: Kubernetes -> {}, etcd -> {}",
        ctx.inv().name(),
        t.kubernetes_version,
        t.etcd_version
            .as_deref()
            .unwrap_or("(unchanged: spec.etcd.version not set)")
    );
    let _ = writeln!(
        s,
        "\n{:<10} {:<24} {:<9} {:<10} {:<10} action",
        "HOST", "COMPONENT", "STATE", "NOW", "TARGET"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<10} {:<24} {:<9} {:<10} {:<10} {}",
            r.host,
            r.component,
            r.state,
            r.now.as_deref().unwrap_or("?"),
            r.target,
            if r.restarts {
                "replace + restart"
            } else {
                "unchanged"
            }
        );
    }
    let mut notes: Vec<&String> = rows.iter().filter_map(|r| r.note.as_ref()).collect();
    notes.sort();
    notes.dedup();
    for n in notes {
        let _ = writeln!(s, "note (bundle): {n}");
    }
    let _ = writeln!(s, "\norder:");
    for (i, st) in stages.iter().enumerate() {
        let hosts: Vec<String> = {
            let comps = stage_components(st);
            let mut hs: Vec<String> = rows
                .iter()
                .filter(|r| r.restarts && comps.iter().any(|c| c.name == r.component))
                .map(|r| r.host.clone())
                .collect();
            hs.dedup();
            hs
        };
        let _ = writeln!(
            s,
            "  {}. {st}: {}",
            i + 1,
            if hosts.is_empty() {
                "nothing to change".to_string()
            } else {
                hosts.join(", ")
            }
        );
    }
    let _ = writeln!(
        s,
        "  the previous binaries are kept on each host in {}",
        binaries::PREVIOUS_DIR
    );
    if problems.is_empty() {
        let _ = writeln!(
            s,
            "\nskew check: ok (Kubernetes version skew policy, etcd one minor at a time, no downgrade)"
        );
    } else {
        let _ = writeln!(s, "\nskew check: {} problem(s):", problems.len());
        for p in problems {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}

/// Everything one host step needs.
struct Env<'a> {
    ctx: &'a Context,
    exec: &'a dyn Executor,
    resolve: &'a (dyn Fn(&Source) -> anyhow::Result<Blob> + Send + Sync),
    journal: &'a Journal,
    progress: PlainProgress,
    /// Takes an apiserver out of every balancer before a change restarts it (back after the
    /// gate): the runner's rotation, used the same way.
    rotation: crate::phases::load_balancer::Rotation<'a>,
}

/// One host's turn in a stage: keep the current binaries, converge the rest, then the gate;
/// progress and journal either way.
async fn host_step(env: &Env<'_>, phase: &dyn Phase, plan: &PhasePlan, h: &Host) -> HostOutcome {
    let t = Instant::now();
    env.progress.host_started(plan, h);
    let hp = plan
        .hosts
        .iter()
        .find(|p| p.host == h.name)
        .expect("the host is in the plan");
    let (keep, rest) = binaries::split_keep(&hp.actions);
    let part = |actions: Vec<crate::phases::Action>| HostPlan {
        host: hp.host.clone(),
        address: hp.address.clone(),
        actions,
    };
    let r = async {
        let mut ch = HostChanges::default();
        if !keep.is_empty() {
            let k = converge(env.exec, h, &part(keep), env.resolve)
                .await
                .context("keeping the current binaries")?;
            ch.commands_run += k.commands_run;
        }
        let c = converge_guarded(env.exec, h, &part(rest), env.resolve, &env.rotation).await?;
        ch.files_written += c.files_written;
        ch.bytes_sent += c.bytes_sent;
        ch.dirs_made += c.dirs_made;
        ch.commands_run += c.commands_run;
        ch.restarts = c.restarts;
        ch.reloads = c.reloads;
        ch.started = c.started;
        ch.warnings = c.warnings;
        if !env.exec.is_dry_run() {
            ch.report = phase
                .verify(env.ctx, h, env.exec)
                .await
                .with_context(|| format!("{} gate", phase.name()))?;
        }
        anyhow::Ok(ch)
    }
    .await;
    // Back into the balancers after the gate; after a failure too (their own health checks
    // keep a broken apiserver out).
    let back = env.rotation.put_back(h).await;
    let r = r.map(|mut c| {
        c.warnings.extend(back);
        c
    });
    let outcome = match r {
        Ok(c) => HostOutcome::Done(c),
        Err(e) => HostOutcome::Failed(format!("{e:#}")),
    };
    env.progress.host_finished(plan, h, &outcome, t.elapsed());
    env.journal.record("upgrade", plan, h, &outcome);
    outcome
}

/// Whether converging `h` to its plan would change anything (a dry run of the same path).
async fn needs_change(env: &Env<'_>, plan: &PhasePlan, h: &Host) -> anyhow::Result<bool> {
    let hp = plan
        .hosts
        .iter()
        .find(|p| p.host == h.name)
        .expect("the host is in the plan");
    let (keep, rest) = binaries::split_keep(&hp.actions);
    let _ = keep;
    let dry = DryRun::new(env.exec);
    let part = HostPlan {
        host: hp.host.clone(),
        address: hp.address.clone(),
        actions: rest,
    };
    let ch = converge(&dry, h, &part, env.resolve).await?;
    Ok(!ch.is_noop())
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct StageReport {
    stage: String,
    seconds: f64,
    #[serde(serialize_with = "outcomes")]
    hosts: BTreeMap<String, HostOutcome>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    drains: BTreeMap<String, serde_json::Value>,
}

/// Host outcomes as JSON objects: `{"result": "done", ...counts}` or `{"result": "failed",
/// "error": ...}` (serde's internal tagging cannot put a tag beside a bare string).
fn outcomes<S: serde::Serializer>(
    m: &BTreeMap<String, HostOutcome>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let v: BTreeMap<&String, serde_json::Value> = m
        .iter()
        .map(|(h, o)| {
            let j = match o {
                HostOutcome::Done(c) => {
                    let mut j = serde_json::to_value(c).unwrap_or_default();
                    j["result"] = "done".into();
                    j
                }
                HostOutcome::Failed(e) => serde_json::json!({"result": "failed", "error": e}),
            };
            (h, j)
        })
        .collect();
    v.serialize(s)
}

fn failed_hosts(r: &StageReport) -> Vec<String> {
    r.hosts
        .iter()
        .filter_map(|(h, o)| match o {
            HostOutcome::Failed(e) => Some(format!("{h}: {e}")),
            _ => None,
        })
        .collect()
}

/// etcd and control plane: one host at a time, stop at the first failure.
async fn serial_stage(env: &Env<'_>, phase: &dyn Phase, plan: &PhasePlan) -> StageReport {
    let mut rep = StageReport {
        stage: plan.phase.clone(),
        ..Default::default()
    };
    for hp in &plan.hosts {
        let h = env.ctx.inv().host(&hp.host).expect("planned hosts exist");
        let o = host_step(env, phase, plan, h).await;
        let failed = matches!(o, HostOutcome::Failed(_));
        rep.hosts.insert(h.name.clone(), o);
        if failed {
            break;
        }
    }
    rep
}

/// Nodes: control-plane nodes one at a time, then workers in batches; each node that will
/// change is cordoned and drained first and uncordoned after, whatever happened.
async fn nodes_stage(
    env: &Env<'_>,
    phase: &dyn Phase,
    plan: &PhasePlan,
    a: &UpgradeArgs,
) -> anyhow::Result<StageReport> {
    let mut rep = StageReport {
        stage: plan.phase.clone(),
        ..Default::default()
    };
    let dry = env.exec.is_dry_run();
    let api = crate::kube::Client::admin(env.ctx)?;
    let cordoned = drain::Cordoned::at(env.ctx.state.root.join("upgrade-cordoned.json"));
    let hosts: Vec<&Host> = plan
        .hosts
        .iter()
        .filter_map(|hp| env.ctx.inv().host(&hp.host))
        .collect();
    let (cp, workers): (Vec<&Host>, Vec<&Host>) =
        hosts.into_iter().partition(|h| h.has(Role::ControlPlane));
    let mut batches: Vec<Vec<&Host>> = cp.into_iter().map(|h| vec![h]).collect();
    batches.extend(workers.chunks(a.max_unavailable.max(1)).map(|c| c.to_vec()));
    for batch in batches {
        let mut work = Vec::new();
        for h in &batch {
            if needs_change(env, plan, h).await? {
                work.push(*h);
            } else {
                // Done in an earlier run: the gate only; uncordon if that run stopped before.
                let o = host_step(env, phase, plan, h).await;
                if !dry {
                    let _ = drain::uncordon(&api, &h.name, &cordoned).await;
                }
                rep.hosts.insert(h.name.clone(), o);
            }
        }
        if work.is_empty() {
            continue;
        }
        // Cordon and drain the batch together.
        let drained = futures::future::join_all(work.iter().map(|h| {
            let api = &api;
            let cordoned = &cordoned;
            async move {
                if dry {
                    eprintln!("{}: would cordon and drain (dry run)", h.name);
                    return Ok(serde_json::json!({"dryRun": true}));
                }
                let ours = drain::cordon(api, &h.name, cordoned).await?;
                let d = drain::drain(api, &h.name, a.drain_timeout, env.ctx.inv().kube_version().minor).await?;
                eprintln!(
                    "upgrade-nodes {}: cordoned{}, drained in {:.1}s: {} pod(s) evicted, {} skipped{}",
                    h.name,
                    if ours { "" } else { " (it already was: stays cordoned)" },
                    d.seconds,
                    d.evicted.len(),
                    d.skipped.len(),
                    if d.pdb_waits > 0 {
                        format!(", {} eviction(s) held by a PodDisruptionBudget", d.pdb_waits)
                    } else {
                        String::new()
                    }
                );
                anyhow::Ok(serde_json::to_value(&d)?)
            }
        }))
        .await;
        let mut ready = Vec::new();
        for (h, d) in work.iter().zip(drained) {
            match d {
                Ok(v) => {
                    rep.drains.insert(h.name.clone(), v);
                    ready.push(*h);
                }
                Err(e) => {
                    rep.hosts
                        .insert(h.name.clone(), HostOutcome::Failed(format!("drain: {e:#}")));
                }
            }
        }
        if ready.len() == work.len() {
            let outs =
                futures::future::join_all(ready.iter().map(|h| host_step(env, phase, plan, h)))
                    .await;
            for (h, o) in ready.iter().zip(outs) {
                rep.hosts.insert(h.name.clone(), o);
            }
        }
        // Uncordon every node of the batch, whatever happened to it.
        if !dry {
            for h in &work {
                match drain::uncordon(&api, &h.name, &cordoned).await {
                    Ok(true) => eprintln!("upgrade-nodes {}: uncordoned", h.name),
                    Ok(false) => {}
                    Err(e) => {
                        let prev = rep.hosts.remove(&h.name);
                        let msg = format!(
                            "uncordon failed ({e:#}); run `kubectl uncordon {}`{}",
                            h.name,
                            match prev {
                                Some(HostOutcome::Failed(p)) => format!("; before: {p}"),
                                _ => String::new(),
                            }
                        );
                        rep.hosts.insert(h.name.clone(), HostOutcome::Failed(msg));
                    }
                }
            }
        }
        if !failed_hosts(&rep).is_empty() {
            break;
        }
    }
    Ok(rep)
}

/// Every host of the cluster: an upgrade reads them all, and changes them stage by stage.
async fn connect(ctx: &Context) -> anyhow::Result<crate::ssh::Pool> {
    let hosts: Vec<&Host> = ctx.inv().spec.hosts.iter().collect();
    crate::ops::connect(ctx, &hosts).await
}

pub fn run(g: &Global, a: &UpgradeArgs) -> anyhow::Result<()> {
    let plan_only = matches!(a.action, Some(UpgradeCmd::Plan { .. }));
    let to = match &a.action {
        Some(UpgradeCmd::Plan { to }) => to.clone().or(a.to.clone()),
        None => a.to.clone(),
    };
    let (mut ctx, runner) = crate::phases::cmd::prepare(
        g,
        "upgrade",
        &a.scope,
        crate::phases::RunOptions {
            dry_run: a.dry_run,
            ..Default::default()
        },
    )?;
    let inv_path = ctx.loaded.path.display().to_string();
    if ctx.inv().static_pods() {
        return Err(UserError::not_built(
            "upgrade of a static-pods control plane (controlPlane.mode: static-pods)",
            "issue 8: only the systemd mode is upgraded yet",
        )
        .into());
    }
    if ctx.bundle.is_none() {
        return Err(UserError::bad_input(format!(
            "{inv_path}: spec.bundle is not set: `upgrade` installs the target binaries from a bundle\n  fix: set spec.bundle to a bundle that holds the target versions"
        ))
        .into());
    }
    if let Some(to) = &to {
        let v: crate::version::KubeVersion = to
            .parse()
            .map_err(|e: String| UserError::bad_input(format!("--to: {e}")))?;
        if !v.is_supported() {
            return Err(UserError::bad_input(format!(
                "--to {to}: clusterctl supports Kubernetes {} (flags and templates per minor)",
                crate::version::KubeVersion::supported_list()
            ))
            .into());
        }
        ctx.loaded.inventory.spec.kubernetes_version = to.clone();
    }
    if !ctx.state.root.join("kubeconfig/admin.conf").is_file() {
        return Err(UserError::bad_input(format!(
            "{inv_path}: no cluster here yet (no admin credentials in {}): run `clusterctl init` first",
            ctx.state.root.display()
        ))
        .into());
    }
    if a.rollback && a.scope.hosts.is_empty() {
        return Err(UserError::bad_input(
            "--rollback needs --hosts: name the hosts to return to their previous binaries",
        )
        .into());
    }
    // The targets must be in the bundle (checked before anything is planned or contacted).
    if let Some(b) = &ctx.bundle {
        let mut wanted: Vec<(&str, String)> = binaries::CONTROL_PLANE
            .iter()
            .chain(binaries::NODE.iter())
            .map(|c| (c.name, ctx.inv().spec.kubernetes_version.clone()))
            .collect();
        if let Some(e) = &ctx.inv().spec.etcd.version {
            wanted.push(("etcd", e.clone()));
        }
        for (name, v) in wanted {
            let have: Vec<&str> = b
                .manifest
                .items
                .iter()
                .filter(|i| i.name == name)
                .map(|i| i.version.as_str())
                .collect();
            if !have.iter().any(|h| record::same(h, &v)) {
                return Err(UserError::bad_input(format!(
                    "{}: has no {name} {v} (it has: {}); nothing was changed\n  fix: pick a version the bundle holds (--to, spec.etcd.version) or use a bundle with {v}",
                    b.path.display(),
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                ))
                .into());
            }
        }
    }
    let stages: Vec<String> = runner.phases.iter().map(|p| p.name().to_string()).collect();
    let plans = runner.plan(&ctx)?;
    let blobs = Blobs::prepare(&plans, ctx.bundle.as_ref(), &ctx.state.root.join("cache"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    rt.block_on(async {
        let pool = connect(&ctx).await?;
        let ssh = SshExecutor {
            pool: pool.clone(),
            timeout: Duration::from_secs(600),
        };
        let r = async {
            let obs = observe(&ctx, &ssh).await?;
            if a.rollback {
                return rollback::rollback(&ctx, &ssh, &obs, a).await;
            }
            let rows = plan_rows(&ctx, &obs)?;
            let problems = skew_check(&ctx, &rows);
            if plan_only {
                match g.output {
                    Output::Json | Output::Yaml => crate::output::print(g.output, &serde_json::json!({
                            "cluster": ctx.inv().name(),
                            "targets": targets(&ctx),
                            "hosts": rows,
                            "stages": stages,
                            "skewProblems": problems,
                        }))?,
                    Output::Text => print!("{}", render_plan(&ctx, &rows, &problems, &stages)),
                }
                if !problems.is_empty() {
                    return Err(UserError::bad_input(format!(
                        "the upgrade plan breaks the version skew policy ({} problem(s), listed above); nothing was changed",
                        problems.len()
                    ))
                    .into());
                }
                return Ok(());
            }
            if !problems.is_empty() {
                return Err(UserError::bad_input(format!(
                    "the upgrade plan breaks the version skew policy; nothing was changed:\n  - {}\n  (see `clusterctl upgrade plan`)",
                    problems.join("\n  - ")
                ))
                .into());
            }
            upgrade(&ctx, &ssh, &runner.phases, &plans, &blobs, a, g, started).await
        }
        .await;
        pool.close().await;
        r
    })
}

#[allow(clippy::too_many_arguments)]
async fn upgrade(
    ctx: &Context,
    ssh: &SshExecutor,
    phases: &[Box<dyn Phase>],
    plans: &[PhasePlan],
    blobs: &Blobs,
    a: &UpgradeArgs,
    g: &Global,
    started: Instant,
) -> anyhow::Result<()> {
    let dry = DryRun::new(ssh);
    let exec: &dyn Executor = if a.dry_run { &dry } else { ssh };
    let journal = if a.dry_run {
        Journal::disabled()
    } else {
        Journal::at(ctx.state.journal())
    };
    let resolve = |s: &Source| blobs.resolve(s);
    let env = Env {
        ctx,
        exec,
        resolve: &resolve,
        journal: &journal,
        progress: PlainProgress,
        rotation: crate::phases::load_balancer::Rotation::new(ctx, exec),
    };
    let t = targets(ctx);
    let mut rec = record::load(ctx)?.unwrap_or_else(|| record::Record {
        kubernetes_version: String::new(),
        ..Default::default()
    });
    if !a.dry_run {
        // A verified etcd backup before anything changes (each run, a resumed one too: the
        // newest is the state right before this run's changes). A failed backup stops here.
        let t0 = Instant::now();
        let path = crate::ops::backup::take_backup(ctx, &ssh.pool, None)
            .await
            .map_err(|e| {
                UserError::failed(format!(
                    "the pre-upgrade etcd backup failed, nothing was changed: {e:#}"
                ))
            })?;
        eprintln!(
            "etcd-backup: {} ({:.1}s; `clusterctl restore` takes it)",
            path.display(),
            t0.elapsed().as_secs_f64()
        );
        rec.upgrading = Some(t.clone());
        record::save(ctx, &rec)?;
    }
    let mut stages = Vec::new();
    for (phase, plan) in phases.iter().zip(plans) {
        let st = Instant::now();
        env.progress.phase(plan);
        let mut rep = if phase.name() == "upgrade-nodes" {
            nodes_stage(&env, phase.as_ref(), plan, a).await?
        } else {
            serial_stage(&env, phase.as_ref(), plan).await
        };
        rep.seconds = st.elapsed().as_secs_f64();
        eprintln!("{}: {:.1}s", rep.stage, rep.seconds);
        let failed = failed_hosts(&rep);
        stages.push(rep);
        if !failed.is_empty() {
            let not_reached: Vec<&str> = plan
                .hosts
                .iter()
                .map(|h| h.host.as_str())
                .filter(|h| !stages.last().unwrap().hosts.contains_key(*h))
                .collect();
            if g.output != Output::Text {
                crate::output::print(
                    g.output,
                    &serde_json::json!({
                        "command": "upgrade", "ok": false, "targets": t, "stages": stages,
                        "seconds": started.elapsed().as_secs_f64(),
                    }),
                )?;
            }
            return Err(UserError::failed(format!(
                "upgrade stopped in {} on {}\n  the hosts not reached keep running their current version{}\n  fix the cause and run `clusterctl upgrade` again: hosts already upgraded are not redone",
                phase.name(),
                failed.join("\n  "),
                if not_reached.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", not_reached.join(", "))
                }
            ))
            .into());
        }
    }
    if !a.dry_run {
        // Hosts limited by --hosts: the others may still run the old version.
        if a.scope.hosts.is_empty() {
            rec.kubernetes_version = t.kubernetes_version.clone();
            if t.etcd_version.is_some() {
                rec.etcd_version = t.etcd_version.clone();
            }
            rec.upgrading = None;
            rec.rolled_back.clear();
        } else {
            for h in &a.scope.hosts {
                rec.rolled_back.remove(h);
            }
        }
        record::save(ctx, &rec)?;
    }
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(
            g.output,
            &serde_json::json!({
                "command": "upgrade", "ok": true, "dryRun": a.dry_run, "targets": t,
                "stages": stages, "seconds": started.elapsed().as_secs_f64(),
                "wouldChange": dry.recorded.lock().unwrap().iter()
                    .map(|(h, w)| serde_json::json!({"host": h, "change": w})).collect::<Vec<_>>(),
            }),
        )?,
        Output::Text => {
            for (h, w) in dry.recorded.lock().unwrap().iter() {
                println!("{h}: {w}");
            }
            println!(
                "upgrade{}: Kubernetes {}{} in {:.1}s",
                if a.dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                },
                t.kubernetes_version,
                t.etcd_version
                    .as_ref()
                    .map(|e| format!(", etcd {e}"))
                    .unwrap_or_default(),
                started.elapsed().as_secs_f64()
            );
            for s in &stages {
                println!("  {:<22} {:>6.1}s", s.stage, s.seconds);
            }
            if !a.scope.hosts.is_empty() {
                println!(
                    "  only {} (--hosts): the cluster's recorded version is unchanged until every host is upgraded",
                    a.scope.hosts.join(", ")
                );
            }
        }
    }
    Ok(())
}
