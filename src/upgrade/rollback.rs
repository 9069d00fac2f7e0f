//! `upgrade --rollback --hosts X`: each named host gets back the binaries the last upgrade kept
//! on it (`/usr/local/lib/clusterctl/previous/<name>`), one host at a time, behind the same
//! gates as the upgrade (out of the balancers, cordoned and drained when its kubelet changes,
//! uncordoned after whatever happened). etcd is never rolled back: a member that ran 3.5 has
//! moved the cluster's data to 3.5; restore a backup taken before the upgrade instead.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::binaries::{self, Component, PREVIOUS_DIR};
use super::{Observations, drain, record, skew};
use crate::diag::UserError;
use crate::inventory::{Host, Role};
use crate::phases::executor::q;
use crate::phases::{Context, Executor, Phase};

/// A component to return on one host: its kept copy, that copy's sha256 and version.
#[derive(Debug, Clone)]
struct Back {
    comp: Component,
    install: String,
    kept: String,
    sha: String,
    version: String,
}

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
                &format!(
                    "k=$(readlink -f {l}) && [ -f \"$k\" ] && echo \"$k $(sha256sum <\"$k\" | cut -c1-64) $(sha256sum <{i} | cut -c1-64) $(\"$k\" {a} 2>&1 | head -1)\"",
                    l = q(&link),
                    i = q(&install),
                    a = c.version_args
                ),
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
        let version = skew::Ver::find_in(&rest.join(" "))
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

pub(super) async fn rollback(
    ctx: &Context,
    exec: &dyn Executor,
    obs: &Observations,
    a: &super::UpgradeArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let hosts: Vec<&Host> = ctx.hosts_where(|_| true);
    let mut plan: Vec<(&Host, Vec<Back>)> = Vec::new();
    for h in &hosts {
        plan.push((h, what_goes_back(ctx, exec, h).await?));
    }
    // The state after the rollback must itself be within the skew policy.
    let mut after: BTreeMap<String, skew::Observed> = BTreeMap::new();
    for (host, runs) in obs {
        let o = after.entry(host.clone()).or_insert_with(|| skew::Observed {
            host: host.clone(),
            ..Default::default()
        });
        for r in runs {
            if let Some(v) = r.version.as_deref().and_then(skew::Ver::parse) {
                o.versions.insert(r.component.clone(), v);
            }
        }
    }
    for (h, backs) in &plan {
        for b in backs {
            if let (Some(o), Some(v)) = (after.get_mut(&h.name), skew::Ver::parse(&b.version)) {
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
            ))
            .into());
        }
    }
    let api = crate::kube::Client::admin(ctx)?;
    let cordoned = drain::Cordoned::at(ctx.state.root.join("upgrade-cordoned.json"));
    let rotation = crate::phases::load_balancer::Rotation::new(ctx, exec);
    let mut rec = record::load(ctx)?.unwrap_or_default();
    for (h, backs) in &plan {
        if h.has(Role::Etcd) {
            eprintln!(
                "rollback {}: etcd stays as it is (a member is never downgraded: restore a backup instead)",
                h.name
            );
        }
        if backs.is_empty() {
            eprintln!(
                "rollback {}: nothing kept differs from what is installed",
                h.name
            );
            continue;
        }
        let t = Instant::now();
        let node = backs.iter().any(|b| binaries::NODE.contains(&b.comp));
        let api_restart = backs.iter().any(|b| b.comp.name == "kube-apiserver");
        if node && !a.dry_run {
            drain::cordon(&api, &h.name, &cordoned).await?;
            if let Err(e) = drain::drain(
                &api,
                &h.name,
                a.drain_timeout,
                ctx.inv().kube_version().minor,
            )
            .await
            {
                let _ = drain::uncordon(&api, &h.name, &cordoned).await;
                return Err(UserError::failed(format!("rollback {}: {e:#}", h.name)).into());
            }
        }
        let mut script = String::from("set -e; ");
        for b in backs {
            let dir = std::path::Path::new(&b.install)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/usr/local/bin".into());
            script += &format!(
                "install -m 0755 {k} {tmp} && mv -f {tmp} {i}; ",
                k = q(&b.kept),
                tmp = q(&format!("{dir}/.{}.rollback", b.comp.name)),
                i = q(&b.install)
            );
        }
        let units: Vec<&str> = backs.iter().filter_map(|b| b.comp.unit).collect();
        script += &crate::ssh::shell::systemctl(&["restart"], &units).to_string();
        let r = async {
            if a.dry_run {
                eprintln!("rollback {}: would run: {script}", h.name);
                return anyhow::Ok(());
            }
            if api_restart {
                for w in rotation.take_out(h).await {
                    eprintln!("rollback {}: warning: {w}", h.name);
                }
            }
            let o = exec.change(h, &script).await?;
            if o.status != 0 {
                anyhow::bail!("`{script}` exited {}: {}", o.status, o.stderr.trim());
            }
            let want: Vec<(String, String)> = backs
                .iter()
                .filter_map(|b| b.comp.unit.map(|u| (u.to_string(), b.sha.clone())))
                .collect();
            binaries::wait_running(exec, h, &want, Duration::from_secs(60)).await?;
            if backs
                .iter()
                .any(|b| binaries::CONTROL_PLANE.contains(&b.comp))
            {
                crate::phases::control_plane::ControlPlane
                    .verify(ctx, h, exec)
                    .await
                    .context("control-plane gate")?;
            }
            if node {
                let kubelet = backs.iter().find(|b| b.comp.name == "kubelet");
                let path = format!("/api/v1/nodes/{}", h.name);
                crate::kube::wait_until(
                    &format!("node {} Ready", h.name),
                    Duration::from_secs(180),
                    Duration::from_millis(500),
                    || async {
                        let n = crate::kube::nodes::Node::from_json(&api.get(&path).await?)?;
                        Ok(match (kubelet, n.not_ready_because) {
                            (Some(k), _) if !record::same(&n.kubelet_version, &k.version) => {
                                crate::kube::Wait::Pending(format!(
                                    "kubelet reports {}",
                                    n.kubelet_version
                                ))
                            }
                            (_, Some(why)) => {
                                crate::kube::Wait::Pending(format!("not Ready ({why})"))
                            }
                            _ => crate::kube::Wait::Done(()),
                        })
                    },
                )
                .await?;
                crate::phases::kube_proxy::KubeProxy
                    .verify(ctx, h, exec)
                    .await?;
            }
            Ok(())
        }
        .await;
        for w in rotation.put_back(h).await {
            eprintln!("rollback {}: warning: {w}", h.name);
        }
        if node && !a.dry_run {
            drain::uncordon(&api, &h.name, &cordoned).await?;
        }
        r.map_err(|e| UserError::failed(format!("rollback of {} failed: {e:#}", h.name)))?;
        eprintln!(
            "rollback {}: {} [{:.1}s]",
            h.name,
            backs
                .iter()
                .map(|b| format!("{} {}", b.comp.name, b.version))
                .collect::<Vec<_>>()
                .join(", "),
            t.elapsed().as_secs_f64()
        );
        if !a.dry_run {
            rec.rolled_back.insert(
                h.name.clone(),
                backs
                    .iter()
                    .map(|b| (b.comp.name.to_string(), b.version.clone()))
                    .collect(),
            );
            record::save(ctx, &rec)?;
        }
    }
    println!(
        "rollback{}: {} in {:.1}s",
        if a.dry_run { " (dry run)" } else { "" },
        hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
