//! `init`, `join`, `upgrade`, `renew-certs`, `plan`: the commands that run playbooks.
use std::fmt::Write as _;

use clap::Args;

use super::blobs::Blobs;
use super::executor::{DryRun, Executor};
use super::playbook;
use super::runner::{Journal, PlainProgress, Runner, Selection};
use super::ssh_exec::SshExecutor;
use super::{Action, Context, Order, PhasePlan, Source};
use crate::cli::{Global, Output, load_inventory, state_dir};
use crate::diag::UserError;

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
    options: super::RunOptions,
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
    let known: Vec<&str> = super::registry().iter().map(|p| p.name()).collect();
    let pb = playbook::load(command, Some(&state.root.join("playbooks")), &known)?;
    let bundle = match &loaded.inventory.spec.bundle {
        None => None,
        Some(p) => {
            let path = loaded.resolve(p);
            if !path.is_file() {
                let pos = loaded.source_map.value("spec.bundle");
                return Err(UserError::bad_input(format!(
                    "{}{}: spec.bundle: {} does not exist\n  fix: build it with `clusterctl bundle build` or correct the path (relative to the inventory file)",
                    loaded.path.display(),
                    pos.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default(),
                    path.display()
                ))
                .into());
            }
            let head = crate::bundle::read_head(&path)?;
            Some(super::BundleRef {
                path,
                manifest: head.manifest,
            })
        }
    };
    let runner = Runner::new(
        &pb,
        &Selection {
            skip: skip.to_vec(),
            only: only.to_vec(),
        },
    )?;
    Ok((
        Context {
            loaded,
            state,
            render,
            host_filter: hosts.to_vec(),
            bundle,
            options,
        },
        runner,
    ))
}

/// Hosts that a run of `init` or `join` already set up (an ok entry in the journal since the
/// host's last `reset`). An etcd host counts only once its member ran (an ok `etcd` entry), so
/// a `join` that stopped before it resumes it.
fn joined_hosts(ctx: &Context) -> std::collections::BTreeSet<String> {
    let journal = ctx.state.journal();
    let any = crate::ops::members::set_up_in_phase(&journal, "");
    let etcd = crate::ops::members::set_up_in_phase(&journal, "etcd");
    // (A journal where no host ran the etcd phase, e.g. one that only ran some phases, is
    // read as before: any ok entry.)
    any.into_iter()
        .filter(|n| {
            etcd.is_empty()
                || etcd.contains(n)
                || !ctx
                    .inv()
                    .host(n)
                    .is_some_and(|h| h.has(crate::inventory::Role::Etcd))
        })
        .collect()
}

/// `join`: the hosts that are new in the inventory (or those of `--hosts`, which must be new)
/// join the cluster. The run covers the cluster's hosts plus those: phases converge each host
/// to the inventory, so the existing ones change only where a new host concerns them (routes
/// to its pods, a load balancer backend, the apiserver certificate's SANs), one at a time
/// behind the health gates. New hosts the user did not select are left out entirely. New etcd
/// hosts are members to add (see [`grow_etcd`]).
fn scope_join(ctx: &mut Context) -> anyhow::Result<Vec<String>> {
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
        .filter(|h| !joined.contains(&h.name))
        .map(|h| h.name.clone())
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
        .retain(|h| joined.contains(&h.name) || selected.contains(&h.name));
    ctx.host_filter.clear();
    Ok(selected)
}

/// `renew-certs`: the renew-certs playbook with the chosen components.
pub fn renew_certs(g: &Global, a: &RenewArgs) -> anyhow::Result<()> {
    let inv_path = g.inventory.display().to_string();
    for c in &a.component {
        if !super::certs::COMPONENTS.iter().any(|(n, _)| n == c) {
            return Err(UserError::bad_input(format!(
                "--component: `{c}` is not a component (components: {}); {inv_path} was not read",
                super::certs::COMPONENTS.map(|(n, _)| n).join(", ")
            ))
            .into());
        }
    }
    run_with(
        "renew-certs",
        g,
        &a.run,
        super::RunOptions {
            dry_run: a.run.dry_run,
            renew_components: a.component.clone(),
            ..Default::default()
        },
    )
}

pub fn run(command: &str, g: &Global, a: &RunArgs) -> anyhow::Result<()> {
    if command != "init" && command != "join" {
        return Err(UserError::not_built(command, "its issue is open").into());
    }
    run_with(
        command,
        g,
        a,
        super::RunOptions {
            dry_run: a.dry_run,
            ..Default::default()
        },
    )
}

fn run_with(
    command: &str,
    g: &Global,
    a: &RunArgs,
    options: super::RunOptions,
) -> anyhow::Result<()> {
    // Everything is checked before a host is contacted.
    let (mut ctx, runner) = prepare(g, command, &a.scope, options)?;
    if command == "init" || command == "join" {
        crate::upgrade::record::check_inventory(&ctx, command)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let started = std::time::Instant::now();
    let mut grown = Vec::new();
    if command == "join" {
        let selected = scope_join(&mut ctx)?;
        if selected.is_empty() {
            println!(
                "join: nothing to do: every host of {} is already part of the cluster",
                ctx.loaded.path.display()
            );
            return Ok(());
        }
        eprintln!("join: adding {}", selected.join(", "));
        let new_etcd: Vec<String> = selected
            .iter()
            .filter(|n| {
                ctx.inv()
                    .host(n)
                    .is_some_and(|h| h.has(crate::inventory::Role::Etcd))
            })
            .cloned()
            .collect();
        if !new_etcd.is_empty() {
            if a.dry_run {
                return Err(UserError::bad_input(format!(
                    "join --dry-run: {} would become etcd member(s), which needs `member add` on the running cluster first; nothing was done. `clusterctl plan --command join` shows their steps",
                    new_etcd.join(", ")
                ))
                .into());
            }
            grown = grow_etcd(g, &rt, &ctx, &new_etcd)?;
        }
    }
    let (mut report, recorded) = execute(&rt, &ctx, &runner, a.dry_run)?;
    // The members' own runs come first in the report, their phases named `phase@host`.
    let mut joins = Vec::new();
    let mut first = Vec::new();
    for j in grown {
        joins.push(serde_json::json!({"host": j.host, "seconds": j.seconds, "etcd": j.lines}));
        first.extend(j.report.phases.into_iter().map(|mut p| {
            p.phase = format!("{}@{}", p.phase, j.host);
            p
        }));
    }
    report.phases.splice(0..0, first);
    if !a.dry_run && (command == "init" || command == "join") {
        crate::upgrade::record::record_converged(&ctx)?;
    }
    let (files, bytes, restarts) = report.totals();
    match g.output {
        Output::Json => {
            let v = serde_json::json!({
                "command": command,
                "dryRun": a.dry_run,
                "wouldChange": recorded
                    .iter()
                    .map(|(h, w)| serde_json::json!({"host": h, "change": w}))
                    .collect::<Vec<_>>(),
                "seconds": started.elapsed().as_secs_f64(),
                "etcdJoins": joins,
                "totals": {"filesWritten": files, "bytesSent": bytes, "restarts": restarts},
                "phases": report.phases,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
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
            for p in &report.phases {
                println!("  {:<14} {:>6.1}s", p.phase, p.seconds);
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
) -> anyhow::Result<(super::runner::RunReport, Vec<(String, String)>)> {
    let plans = runner.plan(ctx)?;
    let blobs = Blobs::prepare(&plans, ctx.bundle.as_ref(), &ctx.state.root.join("cache"))?;
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
        let pool = crate::ops::connect(ctx, &hosts).await?;
        let ssh = SshExecutor {
            pool: pool.clone(),
            timeout: std::time::Duration::from_secs(600),
        };
        let dry = DryRun::new(&ssh);
        let exec: &dyn Executor = if dry_run { &dry } else { &ssh };
        let journal = if dry_run {
            Journal::disabled()
        } else {
            Journal::at(ctx.state.journal())
        };
        let resolve = |s: &Source| blobs.resolve(s);
        let r = runner
            .apply(ctx, exec, &resolve, &PlainProgress, &journal)
            .await;
        pool.close().await;
        let recorded = std::mem::take(&mut *dry.recorded.lock().unwrap());
        r.map(|r| (r, recorded))
    })
}

/// One etcd member added by `join`: its host, how long it took, what etcd said, the run.
struct EtcdJoin {
    host: String,
    seconds: f64,
    lines: Vec<String>,
    report: super::runner::RunReport,
}

/// The phases that bring up a new etcd member (the rest of `join` runs once all are in).
const ETCD_JOIN_PHASES: [&str; 4] = ["preflight", "prepare", "pki", "etcd"];

/// Adds new etcd hosts one at a time: `member add` through etcd's API, then the host's
/// certificates and member (started with `--initial-cluster-state=existing` and the members
/// of that time plus itself; the existing members' flags do not change), then the gate: it
/// answers and every member started. Each step runs the cluster's hosts plus the new one, so
/// the next member is added to a cluster that includes the previous. Returns per member
/// (host, seconds, what etcd said, the run's report).
fn grow_etcd(
    g: &Global,
    rt: &tokio::runtime::Runtime,
    ctx: &Context,
    new_etcd: &[String],
) -> anyhow::Result<Vec<EtcdJoin>> {
    let mut done = Vec::new();
    let mut out = Vec::new();
    for name in new_etcd {
        let t = std::time::Instant::now();
        let (mut sub, _) = prepare(g, "join", &Scope::default(), Default::default())?;
        let keep: std::collections::BTreeSet<String> = ctx
            .inv()
            .spec
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .filter(|n| !new_etcd.contains(n) || n == name || done.contains(n))
            .collect();
        sub.loaded
            .inventory
            .spec
            .hosts
            .retain(|h| keep.contains(&h.name));
        // Only the etcd hosts take part: the others have nothing to do with a new member.
        sub.host_filter = sub.inv().etcd_hosts().map(|h| h.name.clone()).collect();
        let known: Vec<&str> = super::registry().iter().map(|p| p.name()).collect();
        let pb = playbook::load("join", Some(&sub.state.root.join("playbooks")), &known)?;
        if !pb.phases.iter().any(|p| p == "etcd") {
            return Err(UserError::bad_input(format!(
                "{}: has no etcd phase, so it cannot start the new etcd member(s) {}: add `- etcd` after `- pki`",
                pb.origin.display(),
                new_etcd.join(", ")
            ))
            .into());
        }
        let sel = Selection {
            skip: Vec::new(),
            only: ETCD_JOIN_PHASES
                .iter()
                .filter(|p| pb.phases.iter().any(|q| q == *p))
                .map(|p| p.to_string())
                .collect(),
        };
        let runner = Runner::new(&pb, &sel)?;
        let host = sub
            .inv()
            .host(name)
            .expect("selected hosts are in the inventory")
            .clone();
        let mut lines = vec![rt.block_on(crate::ops::members::add_member(&sub, &host))?];
        eprintln!("join: etcd: {}", lines[0]);
        let (r, _) = execute(rt, &sub, &runner, false)?;
        let gate = rt.block_on(crate::ops::members::wait_started(&sub, &host))?;
        eprintln!("join: {gate} [{:.1}s]", t.elapsed().as_secs_f64());
        lines.push(gate);
        done.push(name.clone());
        out.push(EtcdJoin {
            host: name.clone(),
            seconds: t.elapsed().as_secs_f64(),
            lines,
            report: r,
        });
    }
    Ok(out)
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
    let (ctx, runner) = prepare(g, &a.command, &a.scope, Default::default())?;
    let plans = runner.plan(&ctx)?;
    match g.output {
        Output::Json => {
            let v = serde_json::json!({
                "command": a.command,
                "cluster": ctx.inv().name(),
                "kubernetesVersion": ctx.inv().spec.kubernetes_version,
                "templateOverrides": ctx.render.overrides,
                "phases": plans,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
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
            Order::Parallel => "hosts in parallel",
            Order::OneAtATime => "one host at a time",
            Order::Rolling => "new hosts together, running ones one at a time",
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
