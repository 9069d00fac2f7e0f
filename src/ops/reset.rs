//! `clusterctl reset [--hosts …]`: take hosts out of the cluster and remove what clusterctl
//! installed on them.
//!
//! When the rest of the cluster stays, first through its APIs: each node is cordoned, drained
//! (evictions, so PodDisruptionBudgets hold; DaemonSet and mirror pods stay) and deleted, and
//! each etcd member removed (refused when the members left could not keep a quorum, or when it
//! would remove the last one). A failed drain uncordons the node and stops with the host
//! untouched. Then on each host, over SSH: the kubelet stops and the pods' containers are
//! killed, every unit clusterctl runs there is stopped and disabled, the etcd data and
//! /etc/kubernetes are backed up into /var/backups/clusterctl/ on the host, the iptables rules
//! and chains of kube-proxy (KUBE-*) and clusterctl's pod masquerade rules are dropped (the
//! whole iptables-save is backed up first), pod routes and the CNI bridge go, and the files
//! clusterctl wrote (the same init plans name them), /etc/kubernetes, the etcd data,
//! /var/lib/kubelet and CNI state are deleted. What is left is printed: packages from the
//! bundle, the backups. The journal records the reset, so a later `join` treats the host as
//! new.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::members::{Etcd, Member, Membership, quorum};
use crate::cli::{Global, Output};
use crate::diag::UserError;
use crate::inventory::{Host, Role};
use crate::phases::cmd::{Scope, prepare};
use crate::phases::executor::q;
use crate::phases::runner::JournalEntry;
use crate::phases::{Action, Context, PhasePlan};

#[derive(Args, Debug, Clone, Default)]
pub struct ResetArgs {
    /// Hosts to reset (comma separated); default: every host of the inventory.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// How long draining a node may take before the reset stops (seconds).
    #[arg(long, default_value_t = 120)]
    pub drain_timeout: u64,
}

/// Where a reset keeps, on the host, what it removes and cannot be re-created.
pub const BACKUP_DIR: &str = "/var/backups/clusterctl";

/// What clusterctl put on one host, from the init playbook's plans.
#[derive(Debug, Default)]
pub struct Installed {
    pub units: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub dirs: BTreeSet<String>,
    /// Archives clusterctl unpacked: (the archive on the host, where it was unpacked, the
    /// item's name for its marker file).
    pub archives: Vec<(String, String, String)>,
}

/// Per host, the units, files and directories the plans manage.
pub fn installed(plans: &[PhasePlan]) -> BTreeMap<String, Installed> {
    let mut m: BTreeMap<String, Installed> = BTreeMap::new();
    for p in plans {
        for hp in &p.hosts {
            let e = m.entry(hp.host.clone()).or_default();
            for a in &hp.actions {
                match a {
                    Action::Service { unit, .. } => {
                        e.units.insert(unit.clone());
                    }
                    Action::File { path, restarts, .. } => {
                        e.files.insert(path.clone());
                        e.units.extend(restarts.iter().cloned());
                    }
                    Action::Directory { path, .. } => {
                        e.dirs.insert(path.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    m
}

/// Directories never removed even when empty.
const KEEP_DIRS: &[&str] = &[
    "/",
    "/etc",
    "/etc/systemd",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/opt",
    "/usr",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/cache",
    "/var/backups",
];

/// The shell script that resets one host. `data_dirs` are deleted (etcd's after a backup).
pub fn script(host: &str, inst: &Installed, etcd_data: Option<&str>, pod_cidr: &str) -> String {
    // The kubelet first (it would restart pods), containerd last (the pods' tasks are killed
    // through it).
    let mut units: Vec<&str> = inst.units.iter().map(String::as_str).collect();
    units.sort_by_key(|u| match *u {
        "kubelet.service" => 0,
        "containerd.service" => 2,
        _ => 1,
    });
    let units: Vec<String> = units.iter().map(|u| q(u)).collect();
    let files: Vec<String> = inst.files.iter().map(|f| q(f)).collect();
    let mut dirs: Vec<&String> = inst
        .dirs
        .iter()
        .filter(|d| !KEEP_DIRS.contains(&d.as_str()))
        .collect();
    // Deepest first, so a parent is empty when its turn comes.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    let dirs: Vec<String> = dirs.iter().map(|d| q(d)).collect();
    let etcd = etcd_data.map(q).unwrap_or_default();
    let archives: String = inst
        .archives
        .iter()
        .map(|(file, dir, name)| {
            format!(
                "if [ -f {f} ]; then tar -tf {f} | grep -v '/$' | while read -r x; do rm -f {d}/\"$x\"; done; rm -f {d}/.clusterctl-{n}-*; echo \"removed what {f} unpacked into {d}\"; fi\n",
                f = q(file),
                d = q(dir),
                n = q(name)
            )
        })
        .collect();
    format!(
        r#"set -u
B={backup}; TS=$(date -u +%Y%m%dT%H%M%SZ); H={host}
mkdir -p "$B" && chmod 700 "$B"
# 1. The kubelet, then the pods' containers, then every unit clusterctl runs here.
systemctl stop kubelet.service 2>/dev/null
if command -v ctr >/dev/null && systemctl is-active -q containerd.service; then
  for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -z "$(ctr -n k8s.io tasks ls -q 2>/dev/null)" ] && break; sleep 0.5; done
  for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $(ctr -n k8s.io containers ls -q 2>/dev/null); do ctr -n k8s.io containers delete "$c" >/dev/null 2>&1; done
  echo "removed the pods' containers"
fi
for u in {units}; do
  if systemctl is-enabled -q "$u" 2>/dev/null || systemctl is-active -q "$u" 2>/dev/null; then
    systemctl disable --now "$u" >/dev/null 2>&1; echo "stopped and disabled $u"
  fi
done
# 2. Backups of what cannot be re-created.
if [ -n {etcd} ] && [ -d {etcd} ] && [ -n "$(ls -A {etcd} 2>/dev/null)" ]; then
  tar -C {etcd} -czf "$B/etcd-data-$H-$TS.tar.gz" . && echo "backed up the etcd data to $B/etcd-data-$H-$TS.tar.gz"
fi
if [ -d /etc/kubernetes ]; then
  tar -C /etc -czf "$B/etc-kubernetes-$H-$TS.tar.gz" kubernetes && echo "backed up /etc/kubernetes to $B/etc-kubernetes-$H-$TS.tar.gz"
fi
# 3. iptables: kube-proxy's KUBE-* chains and the rules that jump to them, clusterctl's pod
#    masquerade rules; the whole dump is kept first.
for ipt in iptables ip6tables; do
  command -v $ipt-save >/dev/null || continue
  if $ipt-save 2>/dev/null | grep -q -e 'KUBE-' -e 'clusterctl-pod-masq'; then
    $ipt-save > "$B/$ipt-$H-$TS.rules"
    grep -v -e 'KUBE-' -e 'clusterctl-pod-masq' "$B/$ipt-$H-$TS.rules" | $ipt-restore && echo "removed the KUBE-* and clusterctl rules from $ipt (was: $B/$ipt-$H-$TS.rules)"
  fi
done
if command -v ipset >/dev/null; then for s in $(ipset list -n 2>/dev/null | grep '^KUBE-'); do ipset destroy "$s" 2>/dev/null; done; fi
ip link del kube-ipvs0 2>/dev/null && echo "removed kube-ipvs0"
# 4. Pod network: routes into the pod CIDR, the CNI bridge.
ip route show root {pod_cidr} 2>/dev/null | while read -r r; do ip route del $r 2>/dev/null; done
ip link del cni0 2>/dev/null && echo "removed the cni0 bridge"
# 5. What archives unpacked, files, then data (mounts under the kubelet's directory first).
{archives}for f in {files}; do [ -e "$f" ] && rm -f "$f" && echo "removed $f"; done
for m in $(awk '$2 ~ "^/var/lib/kubelet/" {{print $2}}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
for d in /etc/kubernetes /var/lib/kubelet /var/lib/kube-proxy /var/lib/cni /var/cache/clusterctl /var/lib/clusterctl {etcd}; do
  [ -n "$d" ] && [ -d "$d" ] || continue
  find "$d" -mindepth 1 -delete 2>/dev/null; rmdir "$d" 2>/dev/null
  echo "removed $d"
done
for d in {dirs}; do [ -d "$d" ] && rmdir "$d" 2>/dev/null && echo "removed $d"; done
systemctl daemon-reload; systemctl reset-failed 2>/dev/null
# 6. What remains.
echo "--- remains"
left=""; for f in {files}; do [ -e "$f" ] && left="$left $f"; done
[ -n "$left" ] && echo "files clusterctl wrote:$left"
running=""; for u in {units}; do systemctl is-active -q "$u" && running="$running $u"; done
[ -n "$running" ] && echo "running units:$running"
for d in /etc/kubernetes /var/lib/kubelet {etcd}; do [ -n "$d" ] && [ -e "$d" ] && echo "$d (a mount point; emptied)"; done
echo "backups: $(ls "$B" 2>/dev/null | tr '\n' ' ')in $B"
true
"#,
        backup = BACKUP_DIR,
        host = q(host),
        units = units.join(" "),
        files = files.join(" "),
        dirs = dirs.join(" "),
        etcd = if etcd.is_empty() { "''".into() } else { etcd },
        pod_cidr = q(pod_cidr),
        archives = archives,
    )
}

fn confirm(g: &Global, hosts: &[&Host], data: &[String]) -> anyhow::Result<()> {
    if g.yes {
        return Ok(());
    }
    let what = format!(
        "reset stops clusterctl's services on {} and deletes their files and data ({}); etcd data and /etc/kubernetes are backed up on each host under {BACKUP_DIR} first",
        hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        data.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        return Err(UserError::bad_input(format!(
            "{what}.\n  Not a terminal, so no confirmation can be asked: pass --yes. Nothing was done."
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

/// Cordons and drains the node as `upgrade` does (`upgrade::drain`: the Eviction API, so
/// PodDisruptionBudgets hold; DaemonSet and mirror pods stay; a pod no controller would
/// recreate stops it), then deletes it; a failed drain uncordons the node.
async fn drain(
    api: &crate::kube::Client,
    node: &str,
    timeout: Duration,
    minor: u32,
) -> anyhow::Result<String> {
    let path = format!("/api/v1/nodes/{node}");
    if api.get_opt(&path).await?.is_none() {
        return Ok(format!("{node}: no such node"));
    }
    api.merge_patch(&path, &json!({"spec": {"unschedulable": true}}))
        .await?;
    let d = match crate::upgrade::drain::drain(api, node, timeout, minor).await {
        Ok(d) => d,
        Err(e) => {
            let _ = api
                .merge_patch(&path, &json!({"spec": {"unschedulable": null}}))
                .await;
            return Err(e.context(format!(
                "draining {node} (uncordoned again; nothing on the host was changed)"
            )));
        }
    };
    api.delete(&path).await?;
    Ok(format!(
        "{node}: drained ({} pod(s) evicted) and deleted",
        d.evicted.len()
    ))
}

fn record_reset(ctx: &Context, hosts: &[&Host]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = ctx.state.journal();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    for h in hosts {
        let e = JournalEntry {
            time: now.clone(),
            command: "reset".into(),
            phase: "reset".into(),
            host: h.name.clone(),
            inputs: String::new(),
            ok: true,
            noop: false,
        };
        writeln!(f, "{}", serde_json::to_string(&e)?)?;
    }
    Ok(())
}

pub fn run(g: &Global, a: &ResetArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let scope = Scope {
        hosts: a.hosts.clone(),
        ..Default::default()
    };
    let (ctx, runner) = prepare(g, "init", &scope, Default::default())?;
    let inv = ctx.inv();
    let selected: Vec<&Host> = ctx.hosts_where(|_| true);
    let names: BTreeSet<&str> = selected.iter().map(|h| h.name.as_str()).collect();
    let whole = names.len() == inv.spec.hosts.len();
    let inv_path = ctx.loaded.path.display().to_string();
    if !whole {
        if !inv
            .control_plane_hosts()
            .any(|h| !names.contains(h.name.as_str()))
        {
            return Err(UserError::bad_input(format!(
                "{inv_path}: resetting every control-plane host would leave the other hosts without a cluster: reset every host (no --hosts) or keep a control-plane host. Nothing was done."
            ))
            .into());
        }
        if inv.etcd_hosts().next().is_some()
            && !inv.etcd_hosts().any(|h| !names.contains(h.name.as_str()))
        {
            return Err(UserError::bad_input(format!(
                "{inv_path}: resetting every etcd host would remove the last etcd member while the control plane stays: reset every host (no --hosts) or keep an etcd host. Nothing was done."
            ))
            .into());
        }
    }
    let plans = runner.plan(&ctx)?;
    let mut installed = installed(&plans);
    for h in &selected {
        let Some(inst) = installed.get_mut(&h.name) else {
            continue;
        };
        for it in crate::phases::prepare::items_for(&ctx, h)? {
            let (crate::bundle::manifest::Kind::Archive, Some(install)) = (it.kind, &it.install)
            else {
                continue;
            };
            let prefix = format!("{}/{}_", crate::phases::prepare::ARCHIVE_DIR, it.name);
            if let Some(f) = inst.files.iter().find(|f| f.starts_with(&prefix)) {
                inst.archives
                    .push((f.clone(), install.path.clone(), it.name.clone()));
            }
        }
    }
    let data_dir = inv.spec.etcd.data_dir.clone();
    let mut data = vec![];
    if selected.iter().any(|h| h.has(Role::Etcd)) {
        data.push(format!("etcd data {data_dir}"));
    }
    if selected.iter().any(|h| inv.runs_kubelet(h)) {
        data.push("/var/lib/kubelet".into());
        data.push("/var/lib/cni".into());
    }
    data.push("/etc/kubernetes".into());
    confirm(g, &selected, &data)?;

    let rt = tokio::runtime::Runtime::new()?;
    let mut report: Vec<String> = Vec::new();
    let outputs = rt.block_on(async {
        if !whole {
            // The etcd check comes before anything changes.
            let etcd = Etcd::new(&ctx)?;
            let members = etcd.members().await.map_err(|e| {
                UserError::failed(format!("cannot read etcd's member list: {e:#}; nothing was done"))
            })?;
            let peers: BTreeSet<String> = selected
                .iter()
                .filter(|h| h.has(Role::Etcd))
                .map(|h| crate::render::peer_url(h))
                .collect();
            let (removing, staying): (Vec<_>, Vec<_>) = members
                .iter()
                .cloned()
                .partition(|m| m.peer_urls.iter().any(|u| peers.contains(u)));
            if !removing.is_empty() {
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
            }
            let api = crate::kube::Client::admin(&ctx)?;
            let minor = inv.kube_version().minor;
            for h in selected.iter().filter(|h| inv.runs_kubelet(h)) {
                let t = Instant::now();
                let l = drain(&api, &h.name, Duration::from_secs(a.drain_timeout), minor)
                    .await
                    .map_err(|e| UserError::failed(format!("{e:#}")))?;
                let l = format!("{l} [{:.1}s]", t.elapsed().as_secs_f64());
                eprintln!("reset: {l}");
                report.push(l);
            }
            for l in leave_cluster(&ctx, &selected, &etcd, &removing).await? {
                eprintln!("reset: {l}");
                report.push(l);
            }
        } else {
            let p = Membership::path(&ctx);
            if p.is_file() {
                std::fs::remove_file(&p)?;
            }
        }
        // Then the hosts, in parallel.
        let targets: Vec<crate::ssh::Target> =
            crate::ssh::Target::from_inventory(&ctx.loaded, &ctx.state)
                .into_iter()
                .filter(|t| names.contains(t.name.as_str()))
                .collect();
        let opts = crate::ssh::ConnectOpts {
            concurrency: inv.spec.ssh.concurrency,
            progress: crate::ssh::ProgressMode::Quiet,
            logs_dir: Some(ctx.state.logs()),
            ..Default::default()
        };
        let (pool, errors) = crate::ssh::Pool::connect(&targets, &opts).await;
        let empty = Installed::default();
        let outs = futures::future::join_all(selected.iter().map(|h| {
            let pool = &pool;
            let s = script(
                &h.name,
                installed.get(&h.name).unwrap_or(&empty),
                h.has(Role::Etcd).then_some(data_dir.as_str()),
                &inv.spec.network.pod_cidr,
            );
            async move {
                let o = pool
                    .exec(
                        &h.name,
                        &s,
                        crate::ssh::ExecOpts::root().timeout(Duration::from_secs(600)),
                    )
                    .await;
                (h.name.clone(), o.map_err(|e| e.to_string()))
            }
        }))
        .await;
        pool.close().await;
        let mut outs: BTreeMap<String, Result<crate::ssh::ExecOutput, String>> =
            outs.into_iter().collect();
        for e in errors {
            outs.entry(e.host.clone()).or_insert(Err(e.to_string()));
        }
        anyhow::Ok(outs)
    })?;
    let ok: Vec<&Host> = selected
        .iter()
        .filter(|h| matches!(outputs.get(&h.name), Some(Ok(o)) if o.success()))
        .copied()
        .collect();
    record_reset(&ctx, &ok)?;
    let mut failed = Vec::new();
    let mut hosts_json = serde_json::Map::new();
    for h in &selected {
        match outputs.get(&h.name) {
            Some(Ok(o)) if o.success() => {
                let (done, remains) = o
                    .stdout
                    .split_once("--- remains")
                    .unwrap_or((&o.stdout, ""));
                let mut remains: Vec<String> = remains
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                let debs: Vec<String> = crate::phases::prepare::items_for(&ctx, h)
                    .unwrap_or_default()
                    .iter()
                    .filter(|i| i.kind == crate::bundle::manifest::Kind::Deb)
                    .map(|i| format!("{} {}", i.name, i.version))
                    .collect();
                if !debs.is_empty() {
                    remains.push(format!(
                        "packages installed from the bundle (not removed; their units are stopped and disabled): {}",
                        debs.join(", ")
                    ));
                }
                remains.push(
                    "kernel settings applied at runtime (sysctls, modules) until the next reboot"
                        .into(),
                );
                hosts_json.insert(
                    h.name.clone(),
                    json!({"done": done.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>(), "remains": remains}),
                );
                if g.output == Output::Text {
                    println!("{}:", h.name);
                    for l in done.lines().filter(|l| !l.trim().is_empty()) {
                        println!("  {l}");
                    }
                    println!("  what remains on {}:", h.name);
                    for l in &remains {
                        println!("    {l}");
                    }
                }
            }
            Some(Ok(o)) => failed.push(format!(
                "{}: exit {}: {}{}",
                h.name,
                o.status,
                o.stdout.trim(),
                o.stderr.trim()
            )),
            Some(Err(e)) => failed.push(format!("{}: {e}", h.name)),
            None => failed.push(format!("{}: not reached", h.name)),
        }
    }
    let mut notes = Vec::new();
    if !whole {
        let mut drops = Vec::new();
        if selected.iter().any(|h| inv.runs_kubelet(h)) {
            drops.push("the routes to its pods");
        }
        if selected.iter().any(|h| h.has(Role::ControlPlane)) {
            drops.push("its load balancer backend");
        }
        if selected.iter().any(|h| h.has(Role::Etcd)) {
            drops.push("the removed etcd member(s) from the apiservers' --etcd-servers");
        }
        notes.push(format!(
            "remove {} from {inv_path}{}",
            names.iter().copied().collect::<Vec<_>>().join(", "),
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
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "command": "reset", "seconds": secs, "cluster": report,
                "hosts": hosts_json, "failed": failed, "notes": notes,
            }))?
        ),
        Output::Text => {
            for n in &notes {
                println!("next: {n}");
            }
            println!("reset: done in {secs:.1}s");
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(UserError::failed(format!(
            "reset failed on {} host(s) (run it again: every step is safe to repeat):\n  {}",
            failed.len(),
            failed.join("\n  ")
        ))
        .into())
    }
}

/// The selected hosts leave the running cluster, keeping the API and etcd's quorum: each
/// control-plane host's apiserver leaves every balancer and its control plane stops (so no
/// client meets an apiserver whose etcd member goes); then each of `removing`, one at a time:
/// the leadership moves away when it leads, the member stops first when the others keep a
/// quorum without it (a graceful stop ends its clients' requests cleanly), and `member
/// remove` (refused when the quorum would break). The host's own reset comes after.
async fn leave_cluster(
    ctx: &Context,
    selected: &[&Host],
    etcd: &Etcd,
    removing: &[Member],
) -> anyhow::Result<Vec<String>> {
    let inv = ctx.inv();
    let mut lines = Vec::new();
    let cps: Vec<&Host> = selected
        .iter()
        .filter(|h| h.has(Role::ControlPlane))
        .copied()
        .collect();
    let by_peer = |m: &Member| {
        selected
            .iter()
            .find(|h| m.peer_urls.contains(&crate::render::peer_url(h)))
            .copied()
    };
    if cps.is_empty() && removing.is_empty() {
        return Ok(lines);
    }
    // Balancers that cannot be reached are reported, not fatal: their health check drops a
    // stopped apiserver within ~2 s.
    let mut reach: Vec<&Host> = crate::phases::load_balancer::balancers(inv);
    reach.extend(selected.iter().copied());
    let targets: Vec<crate::ssh::Target> =
        crate::ssh::Target::from_inventory(&ctx.loaded, &ctx.state)
            .into_iter()
            .filter(|t| reach.iter().any(|h| h.name == t.name))
            .collect();
    let opts = crate::ssh::ConnectOpts {
        concurrency: inv.spec.ssh.concurrency,
        progress: crate::ssh::ProgressMode::Quiet,
        logs_dir: Some(ctx.state.logs()),
        ..Default::default()
    };
    let (pool, errors) = crate::ssh::Pool::connect(&targets, &opts).await;
    for e in errors {
        lines.push(format!("warning: {e}"));
    }
    let exec = crate::phases::ssh_exec::SshExecutor {
        pool: pool.clone(),
        timeout: Duration::from_secs(120),
    };
    let r = async {
        let run = |h: &Host, cmd: String| {
            let exec = &exec;
            let h = h.clone();
            async move {
                use crate::phases::Executor as _;
                let o = exec.change(&h, &cmd).await?;
                anyhow::ensure!(
                    o.status == 0,
                    "{}: `{cmd}` exited {}: {}{}",
                    h.name,
                    o.status,
                    o.stdout.trim(),
                    o.stderr.trim()
                );
                anyhow::Ok(())
            }
        };
        let static_pods = inv.static_pods();
        for h in &cps {
            lines.extend(crate::phases::load_balancer::leave_balancers(ctx, &exec, h).await);
            lines.push(format!("{}: its apiserver left every balancer", h.name));
            run(
                h,
                stop_command(static_pods, &crate::phases::control_plane::COMPONENTS),
            )
            .await?;
            lines.push(format!("{}: control plane stopped", h.name));
        }
        for m in removing {
            lines.extend(super::members::move_leader_away(etcd, m).await?);
            let members = etcd.members().await?;
            let voters: Vec<Member> = members.iter().filter(|x| x.is_voter()).cloned().collect();
            let healthy = voters.len() - etcd.unhealthy(&voters).await.len();
            let host = by_peer(m);
            if let Some(h) = host
                && m.is_voter()
                && super::members::may_stop_before_removal(voters.len(), healthy)
            {
                run(h, stop_command(static_pods, &["etcd"])).await?;
                lines.push(format!("{}: etcd member stopped", h.name));
            }
            lines.extend(super::members::remove_member(ctx, etcd, m).await?);
        }
        anyhow::Ok(())
    }
    .await;
    pool.close().await;
    r.map(|()| lines)
}

/// Stops `components` on a host that leaves: their units, or (static-pods mode) their
/// manifests moved aside (kept under /etc/kubernetes, which the reset backs up), waiting
/// until their processes are gone (matched on the command line: a process name is cut at 15
/// characters).
fn stop_command(static_pods: bool, components: &[&str]) -> String {
    if static_pods {
        let names: Vec<String> = components.iter().map(|c| q(c)).collect();
        format!(
            "mkdir -p /etc/kubernetes/left-cluster; for c in {n}; do \
               [ -e /etc/kubernetes/manifests/$c.yaml ] && mv /etc/kubernetes/manifests/$c.yaml /etc/kubernetes/left-cluster/; done; \
             for i in $(seq 1 120); do busy=; for c in {n}; do pgrep -f \"(^|/)$c( |$)\" >/dev/null && busy=1; done; [ -z \"$busy\" ] && exit 0; sleep 0.5; done; \
             echo 'still running after 60 s'; exit 1",
            n = names.join(" ")
        )
    } else {
        let units: Vec<String> = components
            .iter()
            .map(|c| q(&format!("{c}.service")))
            .collect();
        format!("systemctl stop {}", units.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelet_stops_first_and_containerd_last_and_system_dirs_stay() {
        let inst = Installed {
            units: [
                "containerd.service",
                "kube-proxy.service",
                "kubelet.service",
            ]
            .map(String::from)
            .into(),
            files: ["/etc/kubernetes/kubelet.conf".to_string()].into(),
            dirs: ["/usr/local/bin", "/etc/kubernetes/pki", "/etc/kubernetes"]
                .map(String::from)
                .into(),
            archives: vec![(
                "/var/cache/clusterctl/archives/cni-plugins_1.1.1.tar.gz".into(),
                "/opt/cni/bin".into(),
                "cni-plugins".into(),
            )],
        };
        let s = script("w1", &inst, None, "10.244.0.0/16");
        let units = s.lines().find(|l| l.starts_with("for u in")).unwrap();
        assert_eq!(
            units,
            "for u in kubelet.service kube-proxy.service containerd.service; do"
        );
        let dirs = s
            .lines()
            .find(|l| l.starts_with("for d in /etc/kubernetes/pki"))
            .unwrap();
        assert!(!dirs.contains("/usr/local/bin"), "{dirs}");
        assert!(
            dirs.starts_with("for d in /etc/kubernetes/pki /etc/kubernetes;"),
            "{dirs}"
        );
        assert!(s.contains("ip route show root 10.244.0.0/16"));
        // The archive's files go before the archive itself.
        let unpack = s
            .find("tar -tf /var/cache/clusterctl/archives/cni-plugins_1.1.1.tar.gz")
            .unwrap();
        let files = s.find("for f in /etc/kubernetes/kubelet.conf").unwrap();
        assert!(unpack < files);
    }

    #[test]
    fn daemonset_and_mirror_pods_are_not_evicted() {
        use crate::upgrade::drain::{PodFate, fate};
        let evictable = |p: &serde_json::Value| fate(p) == PodFate::Evict;
        let ds =
            json!({"metadata": {"ownerReferences": [{"kind": "DaemonSet", "controller": true}]}});
        let mirror = json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}});
        let rs =
            json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": true}]}});
        assert!(!evictable(&ds));
        assert!(!evictable(&mirror));
        assert!(evictable(&rs));
    }
}
