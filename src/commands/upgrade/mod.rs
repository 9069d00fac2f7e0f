//! `clusterctl upgrade`: move a running cluster to the inventory's versions (or `--to`) from
//! the bundle, in the order the version skew policy asks for, without dropping the API.
//!
//! 1. Every host is asked what it runs (the running process's executable, through
//!    /proc/<pid>/exe: its `--version` and sha256), the targets come from the bundle, and the
//!    skew check (`skew`) refuses a plan outside the policy before anything changes.
//!    `upgrade plan` stops here and prints it.
//! 2. A verified etcd backup, then the phases of `playbooks/upgrade.yaml`
//!    (`phases::upgrade`) on the one runner, as every other command: etcd members one at a
//!    time, then the control plane one host at a time, then the nodes (control-plane nodes
//!    first, `--max-unavailable` at a time, each cordoned, drained and uncordoned). On each
//!    host the current binaries are first kept in `/usr/local/lib/clusterctl/previous/`, then
//!    the targets are converged with the units the existing phases render for the target
//!    version, then the stage's gate. The runner brings the ordering, the balancer rotation,
//!    the host run markers, the pending records, the journal and `--dry-run`.
//! 3. A failed step stops the run; the hosts not reached keep serving their old version. The
//!    next `upgrade` resumes: converged hosts are no-ops (and are not drained again). A run
//!    killed at any point is resumed the same way: the host's pending record says what its
//!    change still owes (a restart, its apiserver back into the balancers, its node
//!    uncordoned, a drain already done).
//! 4. `clusters/<name>/versions.json` (`record`) says what the cluster runs; `init` and `join`
//!    refuse an inventory that disagrees with it, and an unfinished upgrade.
//!
//! `upgrade --rollback --hosts X` installs the copies kept on those hosts again, one host at a
//! time behind the same gates (etcd excluded: a member is never downgraded).

pub mod record;
pub mod rollback;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::commands::cluster::Scope;
use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::engine::Context;
use crate::engine::blobs::Blobs;
use crate::engine::executor::Executor;
use crate::engine::runner::{HostOutcome, RunReport, Runner};
use crate::engine::ssh_exec::SshExecutor;
use crate::inventory::{Host, Role};
use crate::phases::upgrade::binaries::{self, Component, Running};
use crate::phases::upgrade::skew;

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
pub(crate) type Observations = BTreeMap<String, Vec<Running>>;

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

pub(crate) async fn observe(ctx: &Context, exec: &dyn Executor) -> anyhow::Result<Observations> {
    let hosts: Vec<&Host> = ctx.inv().spec.hosts.iter().collect();
    let all = futures::future::join_all(hosts.iter().map(|h| async move {
        let (from_images, from_binaries): (Vec<Component>, Vec<Component>) =
            host_components(ctx, h)
                .into_iter()
                .partition(|c| binaries::runs_from_image(ctx, c));
        let comps: Vec<(Component, String)> = from_binaries
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
        let mut running = binaries::parse_observed(&o.stdout);
        // The host facts the kubelet's rendering reads (protectKernelDefaults, the EC2
        // metadata lookup), as `init` left them: without them the stages would render a
        // different kubelet unit and config than `init` did, and restart every kubelet.
        if ctx.inv().runs_kubelet(h) {
            use crate::phases::kernel;
            kernel::read_into_facts(ctx, exec, h, kernel::Stage::Applied)
                .await
                .with_context(|| format!("{}: reading its kernel settings", h.name))?;
        }
        if !from_images.is_empty() {
            let o = exec
                .query(h, &binaries::observe_images_script(&from_images))
                .await
                .with_context(|| format!("{}: reading its static pods' images", h.name))?;
            running.extend(binaries::parse_observed_images(&o.stdout));
        }
        anyhow::Ok((h.name.to_string(), running))
    }))
    .await;
    all.into_iter().collect()
}

/// The versions the upgrade moves to.
fn targets(ctx: &Context) -> record::Targets {
    record::Targets {
        kubernetes_version: ctx.inv().spec.kubernetes_version.to_string(),
        etcd_version: ctx.inv().spec.etcd.version.as_ref().map(|v| v.to_string()),
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
            let r = obs
                .get(h.name.as_str())
                .and_then(|v| v.iter().find(|r| r.component == c.name));
            let (target, restarts, note) = if binaries::runs_from_image(ctx, &c) {
                image_target(ctx, &c, r)?
            } else {
                binary_target(ctx, h, &c, r)?
            };
            rows.push(PlanRow {
                host: h.name.to_string(),
                component: c.name.to_string(),
                state: r
                    .map(|r| r.state.clone())
                    .unwrap_or_else(|| "missing".into()),
                now: r.and_then(|r| r.version.clone()),
                target,
                restarts,
                note,
            });
        }
    }
    Ok(rows)
}

/// (target version, restarts?, bundle note) of a static pod: its manifest names the image,
/// and the change is the image.
fn image_target(
    ctx: &Context,
    c: &Component,
    r: Option<&Running>,
) -> anyhow::Result<(String, bool, Option<String>)> {
    let target = binaries::target_image(ctx, c)?.ok_or_else(|| {
        UserError::bad_input(format!(
            "{}: the bundle has no {} image for {} (static-pods mode runs it from one)\n  fix: use a bundle that holds the target versions' images (`clusterctl bundle ls`)",
            ctx.loaded.path.display(),
            c.name,
            ctx.inv().spec.kubernetes_version
        ))
    })?;
    let restarts = r.is_none_or(|r| r.image.as_deref() != Some(target.as_str()));
    let tag = crate::phases::static_pods::repo_and_tag(&target)
        .1
        .to_string();
    Ok((tag, restarts, None))
}

/// (target version, restarts?, bundle note) of a binary: the bundle's item at the target
/// version, and whether the running (or installed) binary differs from it.
fn binary_target(
    ctx: &Context,
    h: &Host,
    c: &Component,
    r: Option<&Running>,
) -> anyhow::Result<(String, bool, Option<String>)> {
    let it = binaries::target_item(ctx, h, c)?.ok_or_else(|| {
        UserError::bad_input(format!(
            "{}: the bundle has no {} binary for {} (roles {:?})\n  fix: use a bundle that holds the target versions (`clusterctl bundle ls`)",
            ctx.loaded.path.display(),
            c.name,
            h.name,
            h.roles
        ))
    })?;
    let want_version = if c.name == "etcd" {
        ctx.inv().spec.etcd.version.as_ref().map(|v| v.to_string())
    } else {
        Some(ctx.inv().spec.kubernetes_version.to_string())
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
    let target_sha = it.sha256.as_deref();
    let restarts = r.is_none_or(|r| {
        r.sha256.as_deref() != target_sha || r.disk_sha256.as_deref() != target_sha
    });
    Ok((it.version.clone(), restarts, it.note.clone()))
}

fn skew_check(ctx: &Context, rows: &[PlanRow]) -> Vec<String> {
    let mut hosts: BTreeMap<String, skew::Observed> = BTreeMap::new();
    for r in rows {
        let Some(v) = r.now.as_deref().and_then(|s| s.parse().ok()) else {
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
    let t = skew::Targets {
        kube: ctx.inv().spec.kubernetes_version,
        etcd: ctx
            .inv()
            .spec
            .etcd
            .version
            .as_deref()
            .and_then(|s| s.parse().ok()),
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

/// Host outcomes as JSON objects: `{"result": "done", ...counts}` or `{"result": "failed",
/// "error": ...}` (serde's internal tagging cannot put a tag beside a bare string).
fn outcomes(m: &BTreeMap<String, HostOutcome>) -> serde_json::Value {
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
    serde_json::to_value(v).unwrap_or_default()
}

/// The run's phases as the upgrade's stages: per host its outcome, and what the phase's host
/// steps reported (kept binaries, drains).
fn stages_json(report: &RunReport) -> Vec<serde_json::Value> {
    report
        .phases
        .iter()
        .map(|p| {
            serde_json::json!({
                "stage": p.phase,
                "seconds": p.seconds,
                "hosts": outcomes(&p.hosts),
            })
        })
        .collect()
}

/// Every host of the cluster: an upgrade reads them all, and changes them stage by stage.
pub(crate) async fn connect(ctx: &Context) -> anyhow::Result<crate::ssh::Pool> {
    let hosts: Vec<&Host> = ctx.inv().spec.hosts.iter().collect();
    crate::engine::ssh_exec::connect(ctx, &hosts).await
}

pub fn run(g: &Global, a: &UpgradeArgs) -> anyhow::Result<()> {
    let plan_only = matches!(a.action, Some(UpgradeCmd::Plan { .. }));
    let to = match &a.action {
        Some(UpgradeCmd::Plan { to }) => to.clone().or(a.to.clone()),
        None => a.to.clone(),
    };
    let (mut ctx, runner) = crate::commands::cluster::prepare(
        g,
        "upgrade",
        &a.scope,
        crate::engine::RunOptions {
            dry_run: a.dry_run,
            drain_timeout: Some(a.drain_timeout),
            max_unavailable: Some(a.max_unavailable),
            ..Default::default()
        },
    )?;
    let inv_path = ctx.loaded.path.display().to_string();
    if a.rollback && ctx.inv().static_pods() {
        return Err(UserError::not_built(
            "upgrade --rollback of a static-pods control plane (controlPlane.mode: static-pods)",
            "only systemd mode keeps the previous binaries; in static-pods mode upgrade again with --to the previous version (its images stay in containerd), or restore the pre-upgrade backup",
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
        ctx.loaded.inventory.spec.kubernetes_version = v;
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
    // The targets must be in the bundle (checked before anything is planned or contacted): the
    // binaries, and in static-pods mode the control plane's images.
    if let Some(b) = &ctx.bundle {
        let mut wanted: Vec<(&str, String)> = binaries::CONTROL_PLANE
            .iter()
            .chain(binaries::NODE.iter())
            .filter(|c| !binaries::runs_from_image(&ctx, c))
            .map(|c| (c.name, ctx.inv().spec.kubernetes_version.to_string()))
            .collect();
        for c in binaries::CONTROL_PLANE
            .iter()
            .chain(&binaries::ETCD[..1])
            .filter(|c| binaries::runs_from_image(&ctx, c))
        {
            if binaries::target_image(&ctx, c)?.is_none() {
                let want = crate::phases::static_pods::image(&ctx, c.name)?;
                return Err(UserError::bad_input(format!(
                    "{}: has no image {want} (static-pods mode runs {} from it); nothing was changed\n  fix: pick a version the bundle holds (--to, spec.etcd.version) or use a bundle with that image",
                    b.path.display(),
                    c.name
                ))
                .into());
            }
        }
        if let Some(e) = &ctx.inv().spec.etcd.version {
            wanted.push(("etcd", e.to_string()));
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
    if a.rollback {
        return rollback::run(ctx, a, g);
    }
    let stages: Vec<String> = runner.phases.iter().map(|p| p.name().to_string()).collect();
    let plans = runner.plan(&ctx)?;
    let blobs = Blobs::prepare(&plans, ctx.bundle.as_ref(), &ctx.state.item_cache())?;
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    rt.block_on(async {
        let pool = connect(&ctx).await?;
        let ssh = SshExecutor::new(pool.clone(), ctx.inv());
        let r = async {
            let obs = observe(&ctx, &ssh).await?;
            let rows = plan_rows(&ctx, &obs)?;
            let problems = skew_check(&ctx, &rows);
            if plan_only {
                match g.output {
                    Output::Json | Output::Yaml => crate::output::print(
                        g.output,
                        &serde_json::json!({
                            "cluster": ctx.inv().name(),
                            "targets": targets(&ctx),
                            "hosts": rows,
                            "stages": stages,
                            "skewProblems": problems,
                        }),
                    )?,
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
            upgrade(&ctx, &ssh, &runner, &blobs, a, g, started).await
        }
        .await;
        pool.close().await;
        r
    })
}

async fn upgrade(
    ctx: &Context,
    ssh: &SshExecutor,
    runner: &Runner,
    blobs: &Blobs,
    a: &UpgradeArgs,
    g: &Global,
    started: Instant,
) -> anyhow::Result<()> {
    let t = targets(ctx);
    let mut rec = record::load(ctx)?.unwrap_or_else(|| record::Record {
        kubernetes_version: String::new(),
        ..Default::default()
    });
    if !a.dry_run {
        // A verified etcd backup before anything changes (each run, a resumed one too: the
        // newest is the state right before this run's changes). A failed backup stops here.
        let t0 = Instant::now();
        let path = crate::commands::backup::take_backup(ctx, &ssh.pool, None)
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
    // The stages are the playbook's phases on the one runner: its ordering, gates, balancer
    // rotation, host run markers, pending records and journal.
    let (report, recorded) = match crate::commands::cluster::apply_on(
        ctx, ssh, runner, blobs, a.dry_run,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let msg = match e.downcast_ref::<UserError>() {
                Some(u) => u.message.clone(),
                None => format!("{e:#}"),
            };
            if g.output != Output::Text {
                crate::output::print(
                    g.output,
                    &serde_json::json!({
                        "command": "upgrade", "ok": false, "targets": t, "error": msg,
                        "seconds": started.elapsed().as_secs_f64(),
                    }),
                )?;
            }
            let code = e.downcast_ref::<UserError>().map(|u| u.code);
            let msg = format!(
                "upgrade stopped: {msg}\n  the hosts not reached keep running their current version; hosts already upgraded are not redone"
            );
            return Err(match code {
                Some(crate::diag::EXIT_BAD_INPUT) => UserError::bad_input(msg),
                _ => UserError::failed(msg),
            }
            .into());
        }
    };
    let stages = stages_json(&report);
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
                "wouldChange": crate::commands::cluster::would_change(&recorded),
            }),
        )?,
        Output::Text => {
            for (h, w) in &recorded {
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
            for l in report.phase_lines() {
                println!("{l}");
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
