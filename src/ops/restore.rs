//! `clusterctl restore ARCHIVE`: every etcd member rebuilt from the archive's snapshot.
//!
//! Before any host is touched: the archive's checksum and manifest are verified, it must
//! belong to this inventory's cluster (name and etcd members), and the user confirms (or
//! `--yes`). Then: the snapshot goes to every etcd host; every apiserver (with the
//! controller-manager and scheduler) stops, so nothing writes; every member stops; each
//! member's data directory is moved aside to `<data-dir>.before-restore-<time>` (never
//! deleted) and rebuilt with `snapshot restore` (its name, peer URL, the initial cluster and a
//! NEW cluster token, so the restored members can never join the old cluster's members); the
//! members start together behind a health gate; the control plane starts behind /readyz.
//! A failed rebuild puts every old data directory back and starts what was stopped.
//! systemd mode stops units; static-pods mode moves the manifests out of the kubelet's
//! directory (and back).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::archive::{self, Manifest, SNAPSHOT};
use super::{RestoreArgs, SNAPSHOT_TOOL, etcdctl, human, stamp};
use crate::cli::{Global, Output};
use crate::diag::UserError;
use crate::inventory::{Host, Inventory};
use crate::phases::Context;
use crate::phases::components::{start_command, stop_command};
use crate::phases::control_plane::COMPONENTS;
use crate::ssh::shell::quote;
use crate::ssh::{ExecOpts, Pool, UploadSource};

const REMOTE_DIR: &str = "/var/lib/clusterctl/restore";

/// Why an archive is not this cluster's, or None when it is.
pub fn mismatch(m: &Manifest, inv: &Inventory) -> Option<String> {
    if m.cluster != inv.name() {
        return Some(format!(
            "the archive is a backup of cluster {:?}, the inventory's cluster is {:?}",
            m.cluster,
            inv.name()
        ));
    }
    let mut theirs = m.etcd.members.clone();
    theirs.sort();
    let mut ours: Vec<archive::Member> = inv
        .etcd_hosts()
        .map(|h| archive::Member {
            name: h.name.clone(),
            address: h.address.clone(),
        })
        .collect();
    ours.sort();
    if theirs != ours {
        let show = |v: &[archive::Member]| {
            v.iter()
                .map(|m| format!("{}={}", m.name, m.address))
                .collect::<Vec<_>>()
                .join(",")
        };
        return Some(format!(
            "the archive's etcd members ({}) differ from the inventory's ({}): restore rebuilds the members the backup was taken with",
            show(&theirs),
            show(&ours)
        ));
    }
    None
}

/// The command that moves `host`'s data directory aside and rebuilds it from `snapshot`;
/// the new directory gets the old one's owner and mode 0700.
pub fn rebuild_command(
    inv: &Inventory,
    host: &Host,
    snapshot: &str,
    token: &str,
    aside: &str,
) -> String {
    let data = quote(&inv.spec.etcd.data_dir);
    let initial: Vec<String> = inv
        .etcd_hosts()
        .map(|h| format!("{}=https://{}:2380", h.name, h.address))
        .collect();
    format!(
        "set -e; owner=0:0; if [ -e {data} ]; then owner=$(stat -c %u:%g {data}); mv {data} {aside}; fi; \
         {SNAPSHOT_TOOL}$u snapshot restore {snap} --name {name} --initial-cluster {ic} \
         --initial-cluster-token {token} --initial-advertise-peer-urls https://{addr}:2380 --data-dir {data}; \
         chown -R \"$owner\" {data}; chmod 0700 {data}",
        aside = quote(aside),
        snap = quote(snapshot),
        name = quote(&host.name),
        ic = quote(&initial.join(",")),
        token = quote(token),
        addr = host.address,
    )
}

/// Undoes [`rebuild_command`]: the rebuilt directory (ours) goes, the old one comes back.
fn put_back_command(inv: &Inventory, aside: &str) -> String {
    let data = quote(&inv.spec.etcd.data_dir);
    format!(
        "if [ -e {a} ]; then rm -rf {data} && mv {a} {data}; fi",
        a = quote(aside)
    )
}

/// Runs `cmd(host)` on every host at once; every failure is reported, by host.
async fn on_all(
    pool: &Pool,
    hosts: &[&Host],
    what: &str,
    timeout: Duration,
    cmd: impl Fn(&Host) -> String,
) -> anyhow::Result<()> {
    let futs = hosts.iter().map(|h| {
        let c = cmd(h);
        async move {
            pool.run(&h.name, &c, ExecOpts::root().timeout(timeout))
                .await
                .map(|_| ())
        }
    });
    let errors: Vec<String> = futures::future::join_all(futs)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{what}:\n  {}", errors.join("\n  "))
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub archive: String,
    pub cluster: String,
    pub snapshot_taken: String,
    pub revision: i64,
    pub token: String,
    /// Per etcd host, where its old data directory is now.
    pub old_data_dirs: Vec<(String, String)>,
    pub steps: Vec<(String, f64)>,
    pub seconds: f64,
    pub health: Vec<String>,
}

/// `clusterctl restore ARCHIVE`.
pub fn run(g: &Global, a: &RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let ctx = super::context(g)?;
    let nothing = "nothing was touched";
    if !a.archive.is_file() {
        return Err(UserError::bad_input(format!(
            "{}: no such file; {nothing}",
            a.archive.display()
        ))
        .into());
    }
    let tmp = tempfile::tempdir()?;
    let v = archive::verify(&a.archive, tmp.path())
        .map_err(|e| UserError::bad_input(format!("{e:#}\n  {nothing}")))?;
    if let Some(why) = mismatch(&v.manifest, ctx.inv()) {
        return Err(UserError::bad_input(format!(
            "{}: {why} ({}); {nothing}",
            a.archive.display(),
            ctx.loaded.path.display()
        ))
        .into());
    }
    if !v.checksum_file {
        eprintln!(
            "note: no {} beside the archive: checked against its own manifest only",
            archive::checksum_path(&a.archive).display()
        );
    }
    let m = &v.manifest;
    let inv = ctx.inv();
    let etcd: Vec<&Host> = inv.etcd_hosts().collect();
    let cps: Vec<&Host> = inv.control_plane_hosts().collect();
    eprintln!(
        "restore {}: etcd snapshot of {} taken {} from {} (revision {}, {} keys).\n\
         This stops every apiserver ({}) and every etcd member ({}), moves each member's {} aside to {}.before-restore-<time>, \
         and rebuilds the members from the snapshot: everything written to the cluster since {} is lost.",
        a.archive.display(),
        m.cluster,
        m.created,
        m.etcd.snapshot_from,
        m.etcd.status.revision,
        m.etcd.status.total_key,
        names(&cps),
        names(&etcd),
        inv.spec.etcd.data_dir,
        inv.spec.etcd.data_dir,
        m.created
    );
    if !g.yes {
        if !std::io::stdin().is_terminal() {
            return Err(UserError::bad_input(format!(
                "restore asks for confirmation and standard input is not a terminal: run again with --yes; {nothing}"
            ))
            .into());
        }
        eprint!("Type the cluster name ({}) to go on: ", inv.name());
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != inv.name() {
            return Err(UserError::failed(format!("not confirmed; {nothing}")).into());
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    let snapshot = v.dir.join(SNAPSHOT);
    let mut report = rt.block_on(restore(&ctx, m, &snapshot))?;
    report.archive = a.archive.display().to_string();
    report.seconds = started.elapsed().as_secs_f64();
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            println!(
                "restore of {}: done in {:.1}s from {} (taken {}, revision {}, {}); new etcd cluster token {}",
                report.cluster,
                report.seconds,
                report.archive,
                report.snapshot_taken,
                report.revision,
                human(
                    m.files
                        .iter()
                        .find(|f| f.path == SNAPSHOT)
                        .map_or(0, |f| f.size)
                ),
                report.token
            );
            for (s, t) in &report.steps {
                println!("  {s:<44} {t:>6.1}s");
            }
            for (h, d) in &report.old_data_dirs {
                println!("  {h}: the old data directory is kept at {d}");
            }
            for l in &report.health {
                println!("  ok {l}");
            }
        }
    }
    Ok(())
}

fn names(hosts: &[&Host]) -> String {
    hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The restore itself, on hosts, once everything was checked and confirmed.
async fn restore(ctx: &Context, m: &Manifest, snapshot: &Path) -> anyhow::Result<Report> {
    let inv = ctx.inv();
    let sp = inv.static_pods();
    let etcd: Vec<&Host> = inv.etcd_hosts().collect();
    let cps: Vec<&Host> = inv.control_plane_hosts().collect();
    let mut all = etcd.clone();
    all.extend(
        cps.iter()
            .filter(|c| !etcd.iter().any(|e| e.name == c.name)),
    );
    let pool = super::connect(ctx, &all).await?;
    let r = restore_on(ctx, &pool, m, snapshot, sp, &etcd, &cps).await;
    pool.close().await;
    r
}

async fn restore_on(
    ctx: &Context,
    pool: &Pool,
    m: &Manifest,
    snapshot: &Path,
    sp: bool,
    etcd: &[&Host],
    cps: &[&Host],
) -> anyhow::Result<Report> {
    let inv = ctx.inv();
    let when = stamp(time::OffsetDateTime::now_utc());
    let token = format!("etcd-{}-restore-{when}", inv.name());
    let data = inv.spec.etcd.data_dir.clone();
    let aside = format!("{data}.before-restore-{when}");
    let remote = format!("{REMOTE_DIR}/{}-{when}.db", inv.name());
    let hold = format!("/etc/kubernetes/manifests.restore-{when}");
    let mut steps: Vec<(String, f64)> = Vec::new();
    let mut t = Instant::now();
    let mut lap = |s: &str, t: &mut Instant| {
        steps.push((s.to_string(), t.elapsed().as_secs_f64()));
        *t = Instant::now();
    };
    let long = Duration::from_secs(300);

    // Read-only checks, then the snapshot onto every member's host: nothing stops before both.
    on_all(pool, etcd, "checks before restoring (nothing was changed)", long, |_| {
        format!(
            "[ -x /usr/local/bin/etcdctl ] || {{ echo 'no /usr/local/bin/etcdctl' >&2; exit 1; }}; \
             [ ! -e {a} ] || {{ echo '{aside} exists already' >&2; exit 1; }}",
            a = quote(&aside)
        )
    })
    .await
    .map_err(|e| UserError::failed(format!("{e:#}")))?;
    let src = UploadSource::Path(snapshot.to_path_buf());
    let up = futures::future::join_all(etcd.iter().map(|h| {
        let (src, remote) = (&src, &remote);
        async move { pool.upload(&h.name, src, remote, 0o600, None).await }
    }))
    .await;
    let errors: Vec<String> = up
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    if !errors.is_empty() {
        return Err(UserError::failed(format!(
            "copying the snapshot to the etcd hosts (nothing was stopped):\n  {}",
            errors.join("\n  ")
        ))
        .into());
    }
    lap("snapshot copied to every etcd host", &mut t);

    // Nothing may write while the members are rebuilt: the control plane stops first.
    on_all(pool, cps, "stopping the control plane", long, |_| {
        stop_command(sp, &COMPONENTS, &hold)
    })
    .await?;
    lap("control plane stopped", &mut t);
    on_all(pool, etcd, "stopping etcd", long, |_| {
        stop_command(sp, &["etcd"], &hold)
    })
    .await?;
    lap("etcd members stopped", &mut t);

    let rebuilt = on_all(
        pool,
        etcd,
        "rebuilding the members from the snapshot",
        long,
        |h| rebuild_command(inv, h, &remote, &token, &aside),
    )
    .await;
    if let Err(e) = rebuilt {
        // Back to how it was: the old data directories, etcd, then the control plane.
        let back = async {
            on_all(pool, etcd, "putting the old data back", long, |_| {
                put_back_command(inv, &aside)
            })
            .await?;
            on_all(pool, etcd, "starting etcd", long, |_| {
                start_command(sp, &["etcd"], &hold)
            })
            .await?;
            on_all(pool, cps, "starting the control plane", long, |_| {
                start_command(sp, &COMPONENTS, &hold)
            })
            .await
        }
        .await;
        return Err(match back {
            Ok(()) => e.context("the old data directories were put back and etcd and the control plane started again"),
            Err(b) => e.context(format!(
                "putting things back failed too ({b:#}); on each etcd host the old data is at {aside}"
            )),
        });
    }
    lap("members rebuilt (old data moved aside)", &mut t);

    on_all(pool, etcd, "starting etcd", long, |_| {
        start_command(sp, &["etcd"], &hold)
    })
    .await?;
    let gates = futures::future::join_all(etcd.iter().map(|h| async move {
        let cmd = crate::phases::etcd::health_command(h);
        let mut last = String::new();
        for _ in 0..120 {
            match pool.exec(&h.name, &cmd, ExecOpts::root()).await {
                Ok(o) if o.success() => return Ok(()),
                Ok(o) => last = format!("{}{}", o.stdout.trim(), o.stderr.trim()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!("{}: not healthy after 120 s: {last}", h.name))
    }))
    .await;
    let unhealthy: Vec<String> = gates.into_iter().filter_map(Result::err).collect();
    if !unhealthy.is_empty() {
        anyhow::bail!(
            "the restored etcd members did not all become healthy (the control plane stays stopped; the old data is at {aside} on each etcd host):\n  {}",
            unhealthy.join("\n  ")
        );
    }
    // One cluster of exactly the inventory's members.
    let list = pool
        .run(
            &etcd[0].name,
            &etcdctl(etcd[0], "--command-timeout=10s member list -w json"),
            ExecOpts::root(),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_str(list.stdout.trim())
        .with_context(|| format!("etcdctl member list: {}", list.stdout.trim()))?;
    let n = v["members"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        n == etcd.len(),
        "the restored cluster has {n} member(s), the inventory {}",
        etcd.len()
    );
    lap("etcd members started and healthy", &mut t);

    on_all(pool, cps, "starting the control plane", long, |_| {
        start_command(sp, &COMPONENTS, &hold)
    })
    .await?;
    let client = crate::phases::control_plane::admin_client(ctx)?;
    for h in cps {
        crate::phases::health::wait_ok(
            &client,
            &crate::phases::control_plane::readyz_url(inv, h),
            Duration::from_secs(180),
        )
        .await
        .with_context(|| format!("apiserver on {} after the restore", h.name))?;
    }
    let (ep_host, ep_port) = inv.apiserver_endpoint_for_admin();
    crate::phases::health::wait_ok(
        &client,
        &format!("{}/readyz", Inventory::url(&ep_host, ep_port)),
        Duration::from_secs(60),
    )
    .await
    .context("the cluster endpoint after the restore")?;
    lap("control plane started, /readyz ok", &mut t);

    // The copies of the snapshot on the hosts hold every secret: they go.
    let _ = on_all(pool, etcd, "removing the snapshot copies", long, |_| {
        format!("rm -f {}", quote(&remote))
    })
    .await;
    let h = crate::phases::verify::health(ctx, 60).await?;
    if !h.problems.is_empty() {
        anyhow::bail!(
            "restored, but the cluster is not healthy yet:\n  {}\n(old data directories kept at {aside})",
            h.problems.join("\n  ")
        );
    }
    lap("cluster health", &mut t);
    Ok(Report {
        archive: String::new(),
        cluster: inv.name().to_string(),
        snapshot_taken: m.created.clone(),
        revision: m.etcd.status.revision,
        token,
        old_data_dirs: etcd
            .iter()
            .map(|h| (h.name.clone(), aside.clone()))
            .collect(),
        steps,
        seconds: 0.0,
        health: h.healthy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        let yaml = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: c1}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: h1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: h2, address: 10.0.0.2, roles: [etcd, control-plane]}
    - {name: h3, address: 10.0.0.3, roles: [etcd]}
    - {name: w1, address: 10.0.0.4, roles: [worker]}
"#;
        crate::inventory::load_str(yaml, Path::new("inventory.yaml"))
            .unwrap()
            .inventory
    }

    fn manifest(inv: &Inventory) -> Manifest {
        Manifest {
            format: archive::FORMAT.into(),
            cluster: "c1".into(),
            created: "t".into(),
            clusterctl_version: "0".into(),
            inventory_file: "inventory.yaml".into(),
            etcd: archive::EtcdInfo {
                members: inv
                    .etcd_hosts()
                    .map(|h| archive::Member {
                        name: h.name.clone(),
                        address: h.address.clone(),
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
                snapshot_from: "h1".into(),
                version: None,
                data_dir: "/var/lib/etcd".into(),
                status: archive::SnapshotStatus {
                    hash: 0,
                    revision: 1,
                    total_key: 1,
                    total_size: 1,
                },
            },
            files: vec![],
        }
    }

    #[test]
    fn an_archive_belongs_by_cluster_name_and_members() {
        let inv = inv();
        let mut m = manifest(&inv);
        assert_eq!(mismatch(&m, &inv), None, "member order does not matter");
        m.cluster = "other".into();
        assert!(mismatch(&m, &inv).unwrap().contains("\"other\""));
        let mut m = manifest(&inv);
        m.etcd.members[0].address = "10.0.0.9".into();
        let e = mismatch(&m, &inv).unwrap();
        assert!(
            e.contains("h3=10.0.0.9") && e.contains("h3=10.0.0.3"),
            "{e}"
        );
        let mut m = manifest(&inv);
        m.etcd.members.pop();
        assert!(mismatch(&m, &inv).is_some());
    }

    #[test]
    fn each_member_is_rebuilt_with_its_own_name_and_url_and_the_new_token() {
        let inv = inv();
        let h2 = inv.host("h2").unwrap();
        let c = rebuild_command(
            &inv,
            h2,
            "/x/s.db",
            "tok-1",
            "/var/lib/etcd.before-restore-T",
        );
        assert!(
            c.contains("mv /var/lib/etcd /var/lib/etcd.before-restore-T"),
            "{c}"
        );
        assert!(c.contains("snapshot restore /x/s.db --name h2"), "{c}");
        assert!(c.contains("--initial-cluster h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380,h3=https://10.0.0.3:2380"), "{c}");
        assert!(c.contains("--initial-cluster-token tok-1"), "{c}");
        assert!(
            c.contains("--initial-advertise-peer-urls https://10.0.0.2:2380"),
            "{c}"
        );
        assert!(c.contains("--data-dir /var/lib/etcd;"), "{c}");
        assert!(c.contains("chmod 0700 /var/lib/etcd"), "{c}");
        assert!(
            !c.contains("rm "),
            "the old data is moved, never removed: {c}"
        );
        let back = put_back_command(&inv, "/var/lib/etcd.before-restore-T");
        assert!(back.contains("mv /var/lib/etcd.before-restore-T /var/lib/etcd"));
    }
}
