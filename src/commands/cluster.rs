//! `init`, `join`, `upgrade`, `renew-certs`, `plan`: the commands that run playbooks.
use std::fmt::Write as _;

use clap::Args;

use crate::commands::{Global, Output, load_inventory, state_dir};
use crate::diag::UserError;
use crate::engine::blobs::Blobs;
use crate::engine::executor::{DryRun, Executor};
use crate::engine::runner::{ConsoleProgress, Journal, Runner};
use crate::engine::ssh_exec::SshExecutor;
use crate::engine::{Action, Context, Order, Phase, PhasePlan, Source};
use crate::phases::playbook;
use crate::phases::playbook::Selection;

/// Which phases and hosts a run or plan covers.
#[derive(Args, Debug, Clone, Default)]
pub struct Scope {
    /// Skip these phases (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_phases: Vec<String>,
    /// Only these phases (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only_phase: Vec<String>,
    /// Limit to these hosts (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Only print what would be done (reads hosts, changes nothing).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub scope: Scope,
}

/// `renew-certs`: which certificates.
#[derive(Args, Debug, Clone, Default)]
pub struct RenewArgs {
    /// Every leaf certificate and kubeconfig (the default when no --component is given).
    #[arg(long, conflicts_with = "component")]
    pub all: bool,
    /// Only these components' certificates (comma separated): etcd, apiserver,
    /// controller-manager, scheduler, kubelet, kube-proxy, admin.
    #[arg(long, value_delimiter = ',')]
    pub component: Vec<String>,
    /// Rotate the CAs (cluster, etcd, front-proxy), one stage per run, in order: `trust` (new
    /// CAs beside the old in every trust bundle), `reissue` (every leaf from the new CAs),
    /// `finish` (the old CAs out of every bundle; refused while an endpoint serves an old-CA
    /// leaf). Each stage is rolled like a renewal and resumes when run again.
    #[arg(long, value_name = "STAGE", value_parser = ["trust", "reissue", "finish"], conflicts_with_all = ["component", "all"])]
    pub ca: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PlanArgs {
    /// The command to plan.
    #[arg(long, default_value = "init")]
    pub command: String,
    #[command(flatten)]
    pub scope: Scope,
    /// Also print the rendered content of every file.
    #[arg(long)]
    pub show_files: bool,
    /// Connect to the hosts (read only) and show what would change on each: new files,
    /// unified diffs of changed text files, services to start and commands to run.
    #[arg(long)]
    pub diff: bool,
}

/// Loads inventory, templates and playbook: everything a run needs before touching a host.
pub fn prepare(
    g: &Global,
    command: &str,
    scope: &Scope,
    options: crate::engine::RunOptions,
) -> anyhow::Result<(Context, Runner)> {
    let Scope {
        skip_phases: skip,
        only_phase: only,
        hosts,
    } = scope;
    let loaded = load_inventory(g)?;
    let state = state_dir(g, &loaded);
    for h in hosts {
        if loaded.inventory.host(h).is_none() {
            return Err(UserError::bad_input(format!(
                "--hosts: `{h}` is not a host of {} (hosts: {})",
                loaded.path.display(),
                loaded
                    .inventory
                    .spec
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    }
    let render = crate::render::Renderer::new(Some(&state.root.join("templates")))?;
    let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
    let pb = playbook::load(command, Some(&state.root.join("playbooks")), &known)?;
    // The bundle's signature is checked here, once, before any phase plans (see bundle::trust).
    let bundle = crate::bundle::trust::open_for_install(&loaded)?.map(|(path, head, trust)| {
        crate::engine::BundleRef {
            path,
            manifest: head.manifest,
            trust,
        }
    });
    let runner = pb.runner(&Selection {
        skip: skip.to_vec(),
        only: only.to_vec(),
    })?;
    Ok((
        Context {
            loaded,
            state,
            render,
            host_filter: hosts.to_vec(),
            bundle,
            options: crate::engine::RunOptions {
                break_lock: g.break_lock,
                ..options
            },
            facts: Default::default(),
        },
        runner,
    ))
}

/// Hosts that a run of `init` or `join` already set up, since the host's last `reset`: those
/// with an ok entry in the journal for the last phase that concerns them — `kubelet` for a
/// node, else `etcd` for an etcd host, else `load-balancer` for a balancer — so a `join` that
/// stopped anywhere before that (right after an etcd `member add`, say) resumes the host.
fn joined_hosts(ctx: &Context) -> std::collections::BTreeSet<String> {
    use crate::inventory::Role;
    let journal = ctx.state.journal();
    let any = crate::phases::etcd::members::set_up_in_phase(&journal, "");
    let inv = ctx.inv();
    let done: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> =
        ["kubelet", "etcd", "load-balancer"]
            .into_iter()
            .map(|p| {
                (
                    p,
                    crate::phases::etcd::members::set_up_in_phase(&journal, p),
                )
            })
            .collect();
    any.into_iter()
        .filter(|n| {
            let Some(h) = inv.host(n) else { return true };
            let last = if inv.runs_kubelet(h) {
                "kubelet"
            } else if h.has(Role::Etcd) {
                "etcd"
            } else if h.has(Role::Lb) {
                "load-balancer"
            } else {
                return true;
            };
            // (A journal where no host ran that phase, e.g. one that only ran some phases,
            // is read as before: any ok entry.)
            done[last].is_empty() || done[last].contains(n)
        })
        .collect()
}

/// `join`: the hosts that are new in the inventory (or those of `--hosts`, which must be new)
/// join the cluster. Phases plan for them (`RunOptions::joining`); a host already in the
/// cluster takes part in a phase only where that phase says a joining host concerns it
/// ([`Phase::join_concerns`]: a balancer gets the new apiserver as a backend, a node a route to
/// the new node's pods), and the plan says so. Nothing else on an existing host is changed or
/// gated. New hosts the user did not select are left out entirely. New etcd hosts become
/// members one at a time (the etcd phase: learner, start, promote). Returns the joining hosts
/// and the runner with its phases scoped so.
fn scope_join(ctx: &mut Context, runner: Runner) -> anyhow::Result<(Vec<String>, Runner)> {
    let joined = joined_hosts(ctx);
    let inv_path = ctx.loaded.path.display().to_string();
    if joined.is_empty() {
        return Err(UserError::bad_input(format!(
            "{inv_path}: no host of this cluster was set up yet (no journal in {}): run `clusterctl init` first",
            ctx.state.root.display()
        ))
        .into());
    }
    let new: Vec<String> = ctx
        .inv()
        .spec
        .hosts
        .iter()
        .filter(|h| !joined.contains(h.name.as_str()))
        .map(|h| h.name.to_string())
        .collect();
    let selected: Vec<String> = if ctx.host_filter.is_empty() {
        new.clone()
    } else {
        for h in &ctx.host_filter {
            if !new.contains(h) {
                return Err(UserError::bad_input(format!(
                    "--hosts: `{h}` is already part of the cluster; `join` adds new hosts (new in {inv_path}: {}); `clusterctl init` converges existing ones",
                    if new.is_empty() { "none".to_string() } else { new.join(", ") }
                ))
                .into());
            }
        }
        ctx.host_filter.clone()
    };
    ctx.loaded
        .inventory
        .spec
        .hosts
        .retain(|h| joined.contains(h.name.as_str()) || selected.iter().any(|n| *n == h.name));
    ctx.host_filter.clear();
    ctx.options.joining = selected.clone();
    let phases = runner
        .phases
        .into_iter()
        .map(|p| Box::new(JoinScoped(p)) as Box<dyn Phase>)
        .collect();
    Ok((
        selected,
        Runner {
            command: runner.command,
            phases,
            roll_guard: runner.roll_guard,
        },
    ))
}

/// A phase of `join`: its plan keeps the joining hosts and, of the hosts already in the
/// cluster, those the phase says a joining host concerns, each with the reason as a note.
struct JoinScoped(Box<dyn Phase>);

impl Phase for JoinScoped {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn summary(&self) -> &'static str {
        self.0.summary()
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = self.0.plan(ctx)?;
        let mut notes = Vec::new();
        plan.hosts.retain(|hp| {
            if ctx.options.joining.contains(&hp.host) {
                return true;
            }
            let why = ctx
                .inv()
                .host(&hp.host)
                .and_then(|h| self.0.join_concerns(ctx, h));
            if let Some(why) = &why {
                notes.push(format!("{} (in the cluster already): {why}", hp.host));
            }
            why.is_some()
        });
        plan.notes.extend(notes);
        Ok(plan)
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        self.0.apply_local(ctx)
    }
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a crate::inventory::Host,
        exec: &'a dyn Executor,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.0.before_host(ctx, host, exec)
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a crate::inventory::Host,
        exec: &'a dyn Executor,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.0.verify(ctx, host, exec)
    }
    fn running_check(
        &self,
        ctx: &Context,
        host: &crate::inventory::Host,
    ) -> Option<crate::engine::Shell> {
        self.0.running_check(ctx, host)
    }
    fn join_concerns(&self, ctx: &Context, host: &crate::inventory::Host) -> Option<String> {
        self.0.join_concerns(ctx, host)
    }
    fn undo(&self, ctx: &Context) -> anyhow::Result<Option<PhasePlan>> {
        self.0.undo(ctx)
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<Vec<String>>> {
        self.0.apply_cluster(ctx, dry_run)
    }
}

/// `renew-certs`: the renew-certs playbook with the chosen components.
pub fn renew_certs(g: &Global, a: &RenewArgs) -> anyhow::Result<()> {
    let inv_path = g.inventory.display().to_string();
    for c in &a.component {
        if !crate::phases::certs::COMPONENTS.iter().any(|(n, _)| n == c) {
            return Err(UserError::bad_input(format!(
                "--component: `{c}` is not a component (components: {}); {inv_path} was not read",
                crate::phases::certs::COMPONENTS.map(|(n, _)| n).join(", ")
            ))
            .into());
        }
    }
    let ca_stage = a.ca.as_deref().and_then(crate::pki::rotation::Stage::parse);
    if let Some(stage) = ca_stage {
        if !a.run.scope.hosts.is_empty() {
            return Err(UserError::bad_input(
                "--ca with --hosts: a CA rotation is cluster-wide (every host trusts the CAs); run it without --hosts",
            )
            .into());
        }
        ca_finish_gate(g, stage)?;
    }
    run_with(
        "renew-certs",
        g,
        &a.run,
        crate::engine::RunOptions {
            dry_run: a.run.dry_run,
            renew_components: a.component.clone(),
            ca_stage,
            ..Default::default()
        },
    )
}

/// `--ca finish` starts only when no endpoint serves a leaf of an old CA any more (read over
/// TLS): dropping the old CA from the bundles would cut it off. A resumed or converging
/// `finish` (the bundles already changed) is not gated again.
fn ca_finish_gate(g: &Global, stage: crate::pki::rotation::Stage) -> anyhow::Result<()> {
    use crate::pki::rotation;
    if stage != rotation::Stage::Finish {
        return Ok(());
    }
    let loaded = crate::commands::load_inventory(g)?;
    let pki_dir = crate::commands::state_dir(g, &loaded).pki();
    let state = rotation::read_state(&pki_dir)?;
    if rotation::step(state.as_ref(), stage)
        .map_err(|e| UserError::failed(format!("renew-certs --ca finish: {e:#}")))?
        != rotation::Step::Start
    {
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let old = rt.block_on(crate::phases::certs::old_ca_endpoints(
        &loaded.inventory,
        &pki_dir,
    ));
    if !old.is_empty() {
        return Err(UserError::failed(format!(
            "renew-certs --ca finish refused: {} endpoint(s) do not serve a leaf of the new CA, and would lose their clients' trust:\n  {}\nfix: run `renew-certs --ca reissue` again (it resumes), then check with `certs check-expiration`",
            old.len(),
            old.join("\n  ")
        ))
        .into());
    }
    eprintln!("renew-certs --ca finish: every endpoint serves a leaf of the new CAs");
    Ok(())
}

pub fn run(command: &str, g: &Global, a: &RunArgs) -> anyhow::Result<()> {
    if command != "init" && command != "join" {
        return Err(UserError::not_built(command, "its issue is open").into());
    }
    run_with(
        command,
        g,
        a,
        crate::engine::RunOptions {
            dry_run: a.dry_run,
            ..Default::default()
        },
    )
}

fn run_with(
    command: &str,
    g: &Global,
    a: &RunArgs,
    options: crate::engine::RunOptions,
) -> anyhow::Result<()> {
    // Everything is checked before a host is contacted.
    let (mut ctx, runner) = prepare(g, command, &a.scope, options)?;
    if command == "init" || command == "join" {
        crate::commands::upgrade::record::check_inventory(&ctx, command)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let started = std::time::Instant::now();
    let mut runner = runner;
    if command == "join" {
        let selected;
        (selected, runner) = scope_join(&mut ctx, runner)?;
        if selected.is_empty() {
            println!(
                "join: nothing to do: every host of {} is already part of the cluster",
                ctx.loaded.path.display()
            );
            return Ok(());
        }
        eprintln!("join: adding {}", selected.join(", "));
        // A member a stopped run added, whose host has left the inventory, goes before
        // anything else (the others are started and promoted by the etcd phase).
        for l in rt.block_on(crate::phases::etcd::members::settle_departed(
            &ctx, a.dry_run,
        ))? {
            eprintln!("join: {l}");
        }
    }
    let (report, recorded) = execute(&rt, &ctx, &runner, a.dry_run)?;
    if !a.dry_run && (command == "init" || command == "join") {
        crate::commands::upgrade::record::record_converged(&ctx)?;
    }
    let (files, bytes, restarts) = report.totals();
    match g.output {
        Output::Json | Output::Yaml => {
            let v = serde_json::json!({
                "command": command,
                "dryRun": a.dry_run,
                "wouldChange": would_change(&recorded),
                "seconds": started.elapsed().as_secs_f64(),
                "totals": {"filesWritten": files, "bytesSent": bytes, "restarts": restarts},
                "phases": report.phases,
                "addons": crate::phases::addons::summary_lines(&report),
                "logs": crate::ssh::run_logs_dir(&ctx.state.logs()),
            });
            crate::output::print(g.output, &v)?;
        }
        Output::Text => {
            for (host, what) in &recorded {
                println!("{host}: {what}");
            }
            println!(
                "{command}{}: done in {:.1}s: {files} file(s) written ({bytes} bytes), {restarts} service start(s)/restart(s)",
                if a.dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                },
                started.elapsed().as_secs_f64()
            );
            for l in report.phase_lines() {
                println!("{l}");
            }
            // Which add-ons run and which do not (and why): a cluster without DNS or a metrics
            // API must not end with a bare "done".
            for l in crate::phases::addons::summary_lines(&report) {
                println!("{l}");
            }
            let logs = crate::ssh::run_logs_dir(&ctx.state.logs());
            if logs.is_dir() {
                println!("logs: {}", logs.display());
            }
            if !a.dry_run && ctx.state.admin_kubeconfig().is_file() {
                println!(
                    "kubeconfig: export KUBECONFIG={}",
                    ctx.state.admin_kubeconfig().display()
                );
            }
        }
    }
    Ok(())
}

/// Plans and applies `runner` on the hosts of `ctx` (or records what it would change).
/// Connects to the selected hosts and to every other host a plan names (`reset` changes the
/// balancers that stay).
pub(crate) fn execute(
    rt: &tokio::runtime::Runtime,
    ctx: &Context,
    runner: &Runner,
    dry_run: bool,
) -> anyhow::Result<(crate::engine::runner::RunReport, Vec<(String, String)>)> {
    let plans = runner.plan(ctx)?;
    let blobs = Blobs::prepare(&plans, ctx.bundle.as_ref(), &ctx.state.item_cache())?;
    let planned: std::collections::BTreeSet<&str> = plans
        .iter()
        .flat_map(|p| p.hosts.iter().map(|h| h.host.as_str()))
        .chain(ctx.hosts_where(|_| true).iter().map(|h| h.name.as_str()))
        .collect();
    let hosts: Vec<&crate::inventory::Host> = ctx
        .inv()
        .spec
        .hosts
        .iter()
        .filter(|h| planned.contains(h.name.as_str()))
        .collect();
    rt.block_on(async {
        let pool = crate::engine::ssh_exec::connect(ctx, &hosts).await?;
        let ssh = SshExecutor::new(pool.clone(), ctx.inv());
        let r = apply_on(ctx, &ssh, runner, &blobs, dry_run).await;
        pool.close().await;
        r
    })
}

/// Applies `runner` on hosts already connected through `ssh`, as every command that changes
/// hosts does: a dry run records each change instead of making it (returned beside the
/// report), a real run keeps the journal a killed run resumes from.
pub(crate) async fn apply_on(
    ctx: &Context,
    ssh: &SshExecutor,
    runner: &Runner,
    blobs: &Blobs,
    dry_run: bool,
) -> anyhow::Result<(crate::engine::runner::RunReport, Vec<(String, String)>)> {
    let dry = DryRun::new(ssh);
    let exec: &dyn Executor = if dry_run { &dry } else { ssh };
    let journal = if dry_run {
        Journal::disabled()
    } else {
        Journal::at(ctx.state.journal())
    };
    let resolve = |s: &Source| blobs.resolve(s);
    let report = runner
        .apply(ctx, exec, &resolve, &ConsoleProgress, &journal)
        .await?;
    let recorded = std::mem::take(&mut *dry.recorded.lock().unwrap());
    Ok((report, recorded))
}

/// A dry run's recorded changes as every command's `-o json` report gives them
/// (`wouldChange`): `{"host": ..., "change": ...}` each.
pub(crate) fn would_change(recorded: &[(String, String)]) -> Vec<serde_json::Value> {
    recorded
        .iter()
        .map(|(h, w)| serde_json::json!({"host": h, "change": w}))
        .collect()
}

pub fn plan(g: &Global, a: &PlanArgs) -> anyhow::Result<()> {
    if a.diff {
        if a.command != "init" && a.command != "join" {
            return Err(UserError::bad_input(format!(
                "plan --diff covers init and join; for `{c}` run `clusterctl {c} --dry-run` (with its own arguments): the same dry run against the hosts",
                c = a.command.replace("backup-schedule", "backup --schedule CALENDAR")
            ))
            .into());
        }
        // The dry run walks the real code path against the hosts and records, not makes,
        // every change.
        return run(
            &a.command,
            g,
            &RunArgs {
                dry_run: true,
                scope: a.scope.clone(),
            },
        );
    }
    let (mut ctx, mut runner) = prepare(g, &a.command, &a.scope, Default::default())?;
    if a.command == "join" {
        // The same scope as the run: the joining hosts, and the existing hosts they concern.
        (_, runner) = scope_join(&mut ctx, runner)?;
    }
    let plans = runner.plan(&ctx)?;
    match g.output {
        Output::Json | Output::Yaml => {
            let v = serde_json::json!({
                "command": a.command,
                "cluster": ctx.inv().name(),
                "kubernetesVersion": ctx.inv().spec.kubernetes_version,
                "templateOverrides": ctx.render.overrides,
                "phases": plans,
            });
            crate::output::print(g.output, &v)?;
        }
        Output::Text => print!("{}", render_text(&ctx, &a.command, &plans, a.show_files)),
    }
    Ok(())
}

/// The human form of a plan: phases in order, and under each the hosts and their steps.
pub fn render_text(ctx: &Context, command: &str, plans: &[PhasePlan], show_files: bool) -> String {
    let inv = ctx.inv();
    let mut s = String::new();
    let (ep_host, ep_port) = inv.apiserver_endpoint_for_admin();
    let _ = writeln!(
        s,
        "clusterctl {command} for cluster {:?}: {} hosts, Kubernetes {}, HA {} ({}), state in {}",
        inv.name(),
        inv.spec.hosts.len(),
        inv.spec.kubernetes_version,
        serde_json::to_value(inv.spec.ha.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        crate::inventory::Inventory::url(&ep_host, ep_port),
        ctx.state.root.display()
    );
    for o in &ctx.render.overrides {
        let _ = writeln!(s, "template override: {}", o.display());
    }
    for (i, p) in plans.iter().enumerate() {
        let order = match p.order {
            Order::Parallel => "hosts in parallel".to_string(),
            Order::OneAtATime => "one host at a time".to_string(),
            Order::Rolling => "new hosts together, running ones one at a time".to_string(),
            Order::Batches(n) => format!("{n} hosts at a time"),
        };
        let _ = writeln!(
            s,
            "\nphase {}/{} {}: {} [{order}]",
            i + 1,
            plans.len(),
            p.phase,
            p.summary
        );
        for l in &p.local {
            let _ = writeln!(s, "  local: {l}");
        }
        for n in &p.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if p.hosts.is_empty() && p.local.is_empty() {
            let _ = writeln!(s, "  (no host has work in this phase)");
        }
        for hp in &p.hosts {
            let _ = writeln!(s, "  {} ({})", hp.host, hp.address);
            for a in &hp.actions {
                let _ = writeln!(s, "    {}", describe(a));
                if show_files
                    && let Action::File {
                        source: Source::Rendered { content, .. },
                        ..
                    } = a
                {
                    for line in String::from_utf8_lossy(content).lines() {
                        let _ = writeln!(s, "      | {line}");
                    }
                }
            }
        }
    }
    s
}

fn describe(a: &Action) -> String {
    match a {
        Action::Directory { path, mode } => format!("dir      {path} {mode}"),
        Action::File {
            path,
            mode,
            source,
            size,
            restarts,
            ..
        } => {
            let from = match source {
                Source::Rendered { template, .. } => format!("template {template}"),
                Source::Local { path } => format!("local {}", path.display()),
                Source::Bundle { item } => format!("bundle item {item}"),
            };
            let size = size.map(|n| format!(", {n} B")).unwrap_or_default();
            let restarts = if restarts.is_empty() {
                String::new()
            } else {
                format!("; a change restarts {}", restarts.join(", "))
            };
            format!("file     {path} {mode} ({from}{size}){restarts}")
        }
        Action::Service { unit, .. } => format!("service  {unit} enabled + running"),
        Action::Run { description, .. } => format!("run      {description}"),
        Action::Check {
            description,
            warn_only,
            ..
        } => {
            format!(
                "check    {description}{}",
                if *warn_only { " (warning only)" } else { "" }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cp1 (etcd + control plane) and w1 set up; cp2 and cp3 join; local-proxy mode.
    const INV: &str = "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: cp1, address: 10.77.0.11, roles: [etcd, control-plane]}
    - {name: w1, address: 10.77.0.31, roles: [worker]}
    - {name: cp2, address: 10.77.0.12, roles: [etcd, control-plane]}
    - {name: cp3, address: 10.77.0.13, roles: [etcd, control-plane]}
  ha: {mode: local-proxy}
";

    fn joining_ctx(dir: &std::path::Path, hosts: &[&str]) -> (Context, Runner) {
        let loaded = crate::inventory::load_str(INV, &dir.join("inventory.yaml")).unwrap();
        let state = crate::state::StateDir::new(dir, "t");
        std::fs::create_dir_all(&state.root).unwrap();
        let journal: String = ["cp1", "w1"]
            .iter()
            .map(|h| {
                format!(
                    "{{\"time\":\"\",\"command\":\"init\",\"phase\":\"kubelet\",\"host\":\"{h}\",\"inputs\":\"x\",\"ok\":true}}\n"
                )
            })
            .collect();
        std::fs::write(state.journal(), journal).unwrap();
        let mut ctx = Context {
            loaded,
            state,
            render: crate::render::Renderer::new(None).unwrap(),
            host_filter: hosts.iter().map(|h| h.to_string()).collect(),
            bundle: None,
            options: Default::default(),
            facts: Default::default(),
        };
        crate::phases::etcd::members::Membership {
            members: [(
                "cp1".to_string(),
                crate::render::EtcdStart {
                    initial_cluster: "cp1=https://10.77.0.11:2380".into(),
                    initial_state: "new".into(),
                },
            )]
            .into(),
        }
        .save(&ctx)
        .unwrap();
        let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
        let pb = playbook::load("join", None, &known).unwrap();
        let runner = pb.runner(&Selection::default()).unwrap();
        let (_, runner) = scope_join(&mut ctx, runner).unwrap();
        (ctx, runner)
    }

    fn hosts_of<'a>(plans: &'a [PhasePlan], phase: &str) -> Vec<&'a str> {
        plans
            .iter()
            .find(|p| p.phase == phase)
            .unwrap_or_else(|| panic!("no phase {phase}"))
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect()
    }

    #[test]
    fn join_plans_the_new_hosts_and_only_the_existing_ones_they_concern() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, runner) = joining_ctx(d.path(), &[]);
        assert_eq!(ctx.options.joining, ["cp2", "cp3"]);
        let plans = runner.plan(&ctx).unwrap();
        for phase in [
            "preflight",
            "prepare",
            "pki",
            "etcd",
            "control-plane",
            "kubelet",
        ] {
            assert_eq!(hosts_of(&plans, phase), ["cp2", "cp3"], "{phase}");
        }
        // The balancers and the routes concern every node, and the plan says why.
        let lb = plans.iter().find(|p| p.phase == "load-balancer").unwrap();
        assert_eq!(
            hosts_of(&plans, "load-balancer"),
            ["cp1", "w1", "cp2", "cp3"]
        );
        assert!(
            lb.notes.iter().any(|n| n.starts_with(
                "cp1 (in the cluster already): its haproxy takes the new apiserver(s) cp2, cp3"
            )),
            "{:?}",
            lb.notes
        );
        assert_eq!(hosts_of(&plans, "network"), ["cp1", "w1", "cp2", "cp3"]);
        // New apiservers pass their gate before any balancer takes them.
        let order: Vec<&str> = plans.iter().map(|p| p.phase.as_str()).collect();
        let at = |p: &str| order.iter().position(|q| *q == p).unwrap();
        assert!(at("control-plane") < at("load-balancer"), "{order:?}");
        // etcd: one member at a time, each with the members before it in --initial-cluster.
        let etcd = plans.iter().find(|p| p.phase == "etcd").unwrap();
        assert_eq!(etcd.order, Order::OneAtATime);
        let unit = |host: &str| -> String {
            let hp = etcd.hosts.iter().find(|h| h.host == host).unwrap();
            hp.actions
                .iter()
                .find_map(|a| match a {
                    Action::File {
                        path,
                        source: Source::Rendered { content, .. },
                        ..
                    } if path.ends_with("etcd.service") => {
                        Some(String::from_utf8_lossy(content).into_owned())
                    }
                    _ => None,
                })
                .unwrap()
        };
        assert!(
            unit("cp2").contains(
                "--initial-cluster=cp1=https://10.77.0.11:2380,cp2=https://10.77.0.12:2380 "
            ) || unit("cp2").contains(
                "--initial-cluster=cp1=https://10.77.0.11:2380,cp2=https://10.77.0.12:2380\n"
            ),
            "{}",
            unit("cp2")
        );
        assert!(
            unit("cp3").contains("cp1=https://10.77.0.11:2380,cp2=https://10.77.0.12:2380,cp3=https://10.77.0.13:2380"),
            "{}",
            unit("cp3")
        );
        assert!(unit("cp3").contains("--initial-cluster-state=existing"));
        // A member coming back asks before it calls an election (etcd 3.4's default is off).
        assert!(unit("cp3").contains("--pre-vote=true"));
        assert!(
            etcd.notes
                .iter()
                .any(|n| n.starts_with("cp2: joins the running etcd cluster: member add --learner")),
            "{:?}",
            etcd.notes
        );
    }

    #[test]
    fn join_of_one_host_with_one_phase_touches_no_other_host() {
        let d = tempfile::tempdir().unwrap();
        let (ctx, runner) = joining_ctx(d.path(), &["cp2"]);
        assert_eq!(ctx.options.joining, ["cp2"]);
        let plans = runner.plan(&ctx).unwrap();
        assert_eq!(hosts_of(&plans, "etcd"), ["cp2"]);
        assert_eq!(hosts_of(&plans, "pki"), ["cp2"]);
        // cp3 is not joining in this run: out of the inventory of the run altogether.
        assert!(ctx.inv().host("cp3").is_none());
    }
}
