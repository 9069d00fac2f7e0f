//! `upgrade --rollback --hosts X`, the command layer: what goes back is read from each named
//! host (the copy the last upgrade kept, `/usr/local/lib/clusterctl/previous/<name>`), the
//! state after the rollback is checked against the version skew policy, then the
//! `upgrade-rollback` playbook (`phases::upgrade::rollback`) runs on the one runner: one host
//! at a time behind the upgrade's gates. etcd is never rolled back: a member that ran 3.5 has
//! moved the cluster's data to 3.5; restore a backup taken before the upgrade instead.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Observations, record};
use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::engine::blobs::Blobs;
use crate::engine::executor::Executor;
use crate::engine::runner::HostOutcome;
use crate::engine::ssh_exec::SshExecutor;
use crate::engine::{Context, Script};
use crate::inventory::{Host, Role};
use crate::phases::upgrade::binaries::{self, PREVIOUS_DIR};
use crate::phases::upgrade::rollback::{Back, RollbackInputs};
use crate::phases::upgrade::skew;

/// The components of `h` (no etcd) whose kept copy differs from what is installed.
async fn what_goes_back(ctx: &Context, exec: &dyn Executor, h: &Host) -> anyhow::Result<Vec<Back>> {
    let mut comps = Vec::new();
    if h.has(Role::ControlPlane) {
        comps.extend(binaries::CONTROL_PLANE);
    }
    if ctx.inv().runs_kubelet(h) {
        comps.extend(binaries::NODE);
    }
    let mut out = Vec::new();
    for c in comps {
        let install = binaries::target_item(ctx, h, &c)?
            .and_then(|i| i.install.as_ref().map(|x| x.path.clone()))
            .unwrap_or_else(|| format!("/usr/local/bin/{}", c.name));
        let link = format!("{PREVIOUS_DIR}/{}", c.name);
        let o = exec
            .query(
                h,
                // Arguments: the link to the kept copy, the install path, the version arguments
                // (split into words: clusterctl's own text).
                &Script::new(
                    r#"k=$(readlink -f "$1") && [ -f "$k" ] && echo "$k $(sha256sum <"$k" | cut -c1-64) $(sha256sum <"$2" | cut -c1-64) $("$k" $3 2>&1 | head -1)""#,
                )
                .arg(&link)
                .arg(&install)
                .arg(c.version_args)
                .into(),
            )
            .await?;
        if o.status != 0 {
            continue; // nothing kept for it
        }
        let mut w = o.stdout.split_whitespace();
        let (Some(kept), Some(sha), Some(now)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if sha == now {
            continue;
        }
        let rest: Vec<&str> = w.collect();
        let version = crate::version::KubeVersion::find_in(&rest.join(" "))
            .map(|(_, s)| s)
            .unwrap_or_else(|| "?".into());
        out.push(Back {
            comp: c,
            install,
            kept: kept.to_string(),
            sha: sha.to_string(),
            version,
        });
    }
    Ok(out)
}

/// The state after the rollback must itself be within the skew policy.
fn check_skew(obs: &Observations, backs: &BTreeMap<String, Vec<Back>>) -> Result<(), UserError> {
    let mut after: BTreeMap<String, skew::Observed> = BTreeMap::new();
    for (host, runs) in obs {
        let o = after.entry(host.clone()).or_insert_with(|| skew::Observed {
            host: host.clone(),
            ..Default::default()
        });
        for r in runs {
            if let Some(v) = r.version.as_deref().and_then(|s| s.parse().ok()) {
                o.versions.insert(r.component.clone(), v);
            }
        }
    }
    for (h, bs) in backs {
        for b in bs {
            if let (Some(o), Some(v)) = (after.get_mut(h), b.version.parse().ok()) {
                o.versions.insert(b.comp.name.to_string(), v);
            }
        }
    }
    let newest = after
        .values()
        .flat_map(|o| {
            o.versions
                .iter()
                .filter(|(c, _)| c.as_str() != "etcd")
                .map(|(_, v)| *v)
        })
        .max();
    if let Some(kube) = newest {
        let problems = skew::check(
            &after.into_values().collect::<Vec<_>>(),
            &skew::Targets { kube, etcd: None },
        );
        if !problems.is_empty() {
            return Err(UserError::bad_input(format!(
                "the rollback would leave the cluster outside the version skew policy; nothing was changed:\n  - {}",
                problems.join("\n  - ")
            )));
        }
    }
    Ok(())
}

/// `upgrade --rollback`: reads what goes back, checks it, runs the `upgrade-rollback`
/// playbook on the runner and records the hosts rolled back.
pub(super) fn run(mut ctx: Context, a: &super::UpgradeArgs, g: &Global) -> anyhow::Result<()> {
    let started = Instant::now();
    let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
    let pb = crate::phases::playbook::load(
        "upgrade-rollback",
        Some(&ctx.state.root.join("playbooks")),
        &known,
    )?;
    let runner = pb.runner(&Default::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    let pool = rt.block_on(super::connect(&ctx))?;
    let ssh = SshExecutor::new(pool.clone(), ctx.inv());
    let r = (|| {
        let backs = rt.block_on(async {
            let obs = super::observe(&ctx, &ssh).await?;
            let mut backs = BTreeMap::new();
            for h in ctx.hosts_where(|_| true) {
                if h.has(Role::Etcd) {
                    eprintln!(
                        "rollback {}: etcd stays as it is (a member is never downgraded: restore a backup instead)",
                        h.name
                    );
                }
                let b = what_goes_back(&ctx, &ssh, h).await?;
                if b.is_empty() {
                    eprintln!(
                        "rollback {}: nothing kept differs from what is installed",
                        h.name
                    );
                }
                backs.insert(h.name.to_string(), b);
            }
            check_skew(&obs, &backs)?;
            anyhow::Ok(backs)
        })?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        ctx.options.inputs.insert(RollbackInputs {
            backs: backs.clone(),
            stamp,
        });
        let plans = runner.plan(&ctx)?;
        let blobs = Blobs::prepare(&plans, ctx.bundle.as_ref(), &ctx.state.item_cache())?;
        let (report, recorded) = rt.block_on(crate::commands::cluster::apply_on(
            &ctx, &ssh, &runner, &blobs, a.dry_run,
        ))?;
        if !a.dry_run {
            let mut rec = record::load(&ctx)?.unwrap_or_default();
            for (h, bs) in &backs {
                let done = report
                    .phases
                    .iter()
                    .all(|p| !matches!(p.hosts.get(h), Some(HostOutcome::Failed(_))));
                if !bs.is_empty() && done {
                    rec.rolled_back.insert(
                        h.clone(),
                        bs.iter()
                            .map(|b| (b.comp.name.to_string(), b.version.clone()))
                            .collect(),
                    );
                }
            }
            record::save(&ctx, &rec)?;
        }
        let summary: Vec<String> = backs
            .iter()
            .filter(|(_, bs)| !bs.is_empty())
            .map(|(h, bs)| {
                format!(
                    "{h} ({})",
                    bs.iter()
                        .map(|b| format!("{} {}", b.comp.name, b.version))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        match g.output {
            Output::Json | Output::Yaml => crate::output::print(
                g.output,
                &serde_json::json!({
                    "command": "upgrade --rollback", "dryRun": a.dry_run,
                    "hosts": summary, "seconds": started.elapsed().as_secs_f64(),
                    "stages": super::stages_json(&report),
                    "wouldChange": crate::commands::cluster::would_change(&recorded),
                }),
            )?,
            Output::Text => {
                for (h, w) in &recorded {
                    println!("{h}: {w}");
                }
                println!(
                    "rollback{}: {} in {:.1}s",
                    if a.dry_run { " (dry run)" } else { "" },
                    if summary.is_empty() {
                        "nothing to return".to_string()
                    } else {
                        summary.join(", ")
                    },
                    started.elapsed().as_secs_f64()
                );
                for l in report.phase_lines() {
                    println!("{l}");
                }
            }
        }
        anyhow::Ok(())
    })();
    rt.block_on(pool.close());
    r
}
