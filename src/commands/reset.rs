//! `clusterctl reset [--hosts …] [--dry-run]`: the command layer of the reset playbook
//! (`playbooks/reset.yaml`, phases in `phases::reset`): arguments, the confirmation before
//! data is deleted, the run on the one runner, the report.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::commands::cluster::{Scope, execute, prepare};
use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::engine::runner::HostOutcome;
use crate::inventory::Role;
use crate::phases::reset::host::BACKUP_DIR;

#[derive(Args, Debug, Clone, Default)]
pub struct ResetArgs {
    /// Hosts to reset (comma separated); default: every host of the inventory.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// How long draining a node may take before the reset stops (e.g. 90s, 5m).
    #[arg(long, default_value = "2m", value_parser = crate::duration::parse)]
    pub drain_timeout: Duration,
    /// Only print what would be done (reads the hosts, the API and etcd; changes nothing).
    #[arg(long)]
    pub dry_run: bool,
}

fn confirm(g: &Global, hosts: &[&str], data: &[String]) -> anyhow::Result<()> {
    if g.yes {
        return Ok(());
    }
    let what = format!(
        "reset stops clusterctl's services on {} and deletes their files and data ({}); etcd data and /etc/kubernetes are backed up on each host under {BACKUP_DIR} first",
        hosts.join(", "),
        data.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        return Err(UserError::bad_input(format!(
            "{what}.\n  Not a terminal, so no confirmation can be asked: pass --yes (or --dry-run to see the steps). Nothing was done."
        ))
        .into());
    }
    eprint!("{what}.\nType `yes` to go on: ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != "yes" {
        return Err(UserError::bad_input("reset not confirmed; nothing was done").into());
    }
    Ok(())
}

pub fn run(g: &Global, a: &ResetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let scope = Scope {
        hosts: a.hosts.clone(),
        ..Default::default()
    };
    let options = crate::engine::RunOptions {
        dry_run: a.dry_run,
        drain_timeout: Some(a.drain_timeout),
        ..Default::default()
    };
    let (ctx, runner) = prepare(g, "reset", &scope, options)?;
    // Bad input (a reset that would leave no cluster) is said before anything is asked.
    runner.plan(&ctx)?;
    let inv = ctx.inv();
    let (selected, whole) = crate::phases::reset::scope(&ctx);
    let names: Vec<&str> = selected.iter().map(|h| h.name.as_str()).collect();
    if !a.dry_run {
        let mut data = vec![];
        if selected.iter().any(|h| h.has(Role::Etcd)) {
            data.push(format!("etcd data {}", inv.spec.etcd.data_dir));
        }
        if selected.iter().any(|h| inv.runs_kubelet(h)) {
            data.push("/var/lib/kubelet".into());
            data.push("/var/lib/cni".into());
        }
        data.push("/etc/kubernetes".into());
        confirm(g, &names, &data)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (report, recorded) = execute(&rt, &ctx, &runner, a.dry_run)?;
    let mut notes = Vec::new();
    if !whole && !a.dry_run {
        let mut drops = Vec::new();
        if selected.iter().any(|h| inv.runs_kubelet(h)) {
            drops.push("the routes to its pods");
        }
        if selected.iter().any(|h| h.has(Role::Etcd)) {
            drops.push("the removed etcd member(s) from the apiservers' --etcd-servers");
        }
        notes.push(format!(
            "remove {} from {}{}",
            names.join(", "),
            ctx.loaded.path.display(),
            if drops.is_empty() {
                String::new()
            } else {
                format!(
                    ", then run `clusterctl init`: the other hosts then drop {}",
                    drops.join(", ")
                )
            }
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(
            g.output,
            &json!({
                "command": "reset",
                "dryRun": a.dry_run,
                "seconds": secs,
                "wouldChange": crate::commands::cluster::would_change(&recorded),
                "phases": report.phases,
                "notes": notes,
            }),
        )?,
        Output::Text => {
            for (host, what) in &recorded {
                println!("{host}: {what}");
            }
            for p in &report.phases {
                for l in &p.cluster {
                    println!("{}: {l}", p.phase);
                }
                for (h, o) in &p.hosts {
                    if let HostOutcome::Done(c) = o {
                        for l in &c.report {
                            println!("{h}: {l}");
                        }
                    }
                }
            }
            for n in &notes {
                println!("next: {n}");
            }
            println!(
                "reset{}: {} done in {secs:.1}s",
                if a.dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                },
                names.join(", ")
            );
        }
    }
    Ok(())
}
