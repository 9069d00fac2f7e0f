//! `clusterctl backup`: an etcd snapshot taken over TLS from a healthy member, checked with
//! `snapshot status` on that host, fetched over SSH (sha256 compared), and written with the
//! local PKI and the inventory into one archive with a checksum (see [`super::archive`]).
//! `--schedule` installs a systemd timer on every etcd host instead (see [`schedule`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use super::archive::{self, EtcdInfo, INVENTORY, Manifest, Member, SNAPSHOT, SnapshotStatus};
use super::{BackupArgs, etcdctl, human, snapshot_status_command, stamp};
use crate::cli::{Global, Output};
use crate::diag::UserError;
use crate::inventory::{Host, Role};
use crate::phases::Context;
use crate::ssh::shell::quote;
use crate::ssh::{ExecOpts, Pool};

/// Where the snapshot waits on the member's host before it is fetched (then removed).
const REMOTE_DIR: &str = "/var/lib/clusterctl/backup";

/// What a backup wrote.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub path: PathBuf,
    pub checksum_file: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub snapshot_from: String,
    pub snapshot_bytes: u64,
    pub status: SnapshotStatus,
    pub seconds: f64,
}

/// The library entry point: a verified backup of the cluster into `out` (None: the default
/// name under `clusters/<name>/backups/`), through `pool`, which must be connected to the
/// etcd hosts. Returns the archive's path. `upgrade` calls this before it changes etcd.
pub async fn take_backup(
    ctx: &Context,
    pool: &Pool,
    out: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    Ok(backup(ctx, pool, out).await?.path)
}

/// The etcd members of the inventory, as a backup records them.
pub fn members(ctx: &Context) -> Vec<Member> {
    ctx.inv()
        .etcd_hosts()
        .map(|h| Member {
            name: h.name.clone(),
            address: h.address.clone(),
        })
        .collect()
}

/// Where the archive goes: `out` (a directory: the default name in it) or the default. An
/// existing file is refused (a backup never replaces anything).
fn target(ctx: &Context, out: Option<&Path>, when: &str) -> anyhow::Result<PathBuf> {
    let name = format!("{}-{when}.tar.gz", ctx.inv().name());
    let path = match out {
        Some(p) if p.is_dir() => p.join(name),
        Some(p) => p.to_path_buf(),
        None => ctx.state.root.join("backups").join(name),
    };
    if path.exists() {
        return Err(UserError::bad_input(format!(
            "--out: {} exists; a backup never replaces a file: choose another name or move it away",
            path.display()
        ))
        .into());
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(path)
}

/// The first etcd member (inventory order) whose health check answers.
async fn healthy_member<'a>(ctx: &'a Context, pool: &Pool) -> anyhow::Result<&'a Host> {
    let mut tried = Vec::new();
    for h in ctx.inv().etcd_hosts() {
        let cmd = crate::phases::etcd::health_command(h);
        match pool.exec(&h.name, &cmd, ExecOpts::root()).await {
            Ok(o) if o.success() => return Ok(h),
            Ok(o) => tried.push(format!(
                "{}: {}{}",
                h.name,
                o.stdout.trim(),
                o.stderr.trim()
            )),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(UserError::failed(format!(
        "no healthy etcd member to take a snapshot from:\n  {}",
        tried.join("\n  ")
    ))
    .into())
}

/// [`take_backup`] with the details.
pub async fn backup(ctx: &Context, pool: &Pool, out: Option<&Path>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let now = time::OffsetDateTime::now_utc();
    let when = stamp(now);
    let path = target(ctx, out, &when)?;
    let inv = ctx.inv();
    let host = healthy_member(ctx, pool).await?;
    let remote = format!("{REMOTE_DIR}/{}-{when}.db", inv.name());
    let step = |what: &str| format!("backup on {}: {what}", host.name);

    // Snapshot over TLS (etcdctl checks the sha256 etcd appends), then read it back offline.
    let save = format!(
        "install -d -m 0700 {REMOTE_DIR} && {}",
        etcdctl(
            host,
            &format!("--command-timeout=300s snapshot save {}", quote(&remote))
        )
    );
    let cleanup = format!("rm -f {} {}.part", quote(&remote), quote(&remote));
    let result = async {
        pool.run(&host.name, &save, ExecOpts::root())
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", step("etcdctl snapshot save")))?;
        let st = pool
            .run(
                &host.name,
                &snapshot_status_command(&remote),
                ExecOpts::root(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", step("snapshot status")))?;
        let status = SnapshotStatus::parse(&st.stdout).with_context(|| step("snapshot status"))?;
        if status.total_key == 0 {
            anyhow::bail!("{}: the snapshot holds no key", step("snapshot status"));
        }
        let version = pool
            .exec(
                &host.name,
                "/usr/local/bin/etcd --version 2>/dev/null | head -1",
                ExecOpts::root(),
            )
            .await
            .ok()
            .map(|o| {
                o.stdout
                    .trim()
                    .trim_start_matches("etcd Version:")
                    .trim()
                    .to_string()
            })
            .filter(|v| !v.is_empty());
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".backup-")
            .tempdir_in(dir)
            .with_context(|| format!("creating a directory in {}", dir.display()))?;
        let snap = tmp.path().join("snapshot.db");
        let (bytes, _) = pool
            .download(&host.name, &remote, &snap)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", step("fetching the snapshot")))?;
        Ok((status, version, tmp, snap, bytes))
    }
    .await;
    // The copy on the host is ours and holds every secret: it goes whatever happened.
    let _ = pool.exec(&host.name, &cleanup, ExecOpts::root()).await;
    let (status, version, tmp, snap, bytes) = result?;

    let mut files = vec![
        (SNAPSHOT.to_string(), snap),
        (INVENTORY.to_string(), ctx.loaded.path.clone()),
    ];
    let pki = ctx.state.pki();
    if pki.is_dir() {
        files.extend(archive::tree(&pki, "pki")?);
    }
    let mut manifest = Manifest {
        format: archive::FORMAT.into(),
        cluster: inv.name().to_string(),
        created: now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("formats"),
        clusterctl_version: env!("CARGO_PKG_VERSION").into(),
        inventory_file: ctx.loaded.path.display().to_string(),
        etcd: EtcdInfo {
            members: members(ctx),
            snapshot_from: host.name.clone(),
            version,
            data_dir: inv.spec.etcd.data_dir.clone(),
            status,
        },
        files: vec![],
    };
    let (size, sha256) = archive::write(&path, &mut manifest, &files)?;
    // Read back what is on disk before calling it a backup.
    let check = tempfile::tempdir_in(tmp.path())?;
    archive::verify(&path, check.path()).context("reading the new archive back")?;
    Ok(Report {
        checksum_file: archive::checksum_path(&path),
        path,
        size,
        sha256,
        snapshot_from: host.name.clone(),
        snapshot_bytes: bytes,
        status,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `clusterctl backup`.
pub fn run(g: &Global, a: &BackupArgs) -> anyhow::Result<()> {
    let ctx = super::context(g)?;
    if let Some(cal) = &a.schedule {
        return schedule(g, &ctx, cal, a.keep, a.dry_run);
    }
    if a.dry_run {
        return Err(UserError::bad_input(
            "--dry-run goes with --schedule; a backup changes nothing on the hosts (run it without --dry-run)",
        )
        .into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(async {
        let hosts: Vec<&Host> = ctx.inv().etcd_hosts().collect();
        let pool = super::connect(&ctx, &hosts).await?;
        let r = backup(&ctx, &pool, a.out.as_deref()).await;
        pool.close().await;
        r
    })?;
    match g.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Text => {
            println!(
                "backup of {}: {} ({}), sha256 {} in {}",
                ctx.inv().name(),
                r.path.display(),
                human(r.size),
                r.sha256,
                r.checksum_file.display()
            );
            println!(
                "  etcd snapshot from {}: {} ({} keys, revision {}), checked with `snapshot status`; with the local PKI and the inventory; {:.1}s",
                r.snapshot_from,
                human(r.snapshot_bytes),
                r.status.total_key,
                r.status.revision,
                r.seconds
            );
        }
    }
    Ok(())
}

/// The files and timer of a scheduled backup on `host`.
pub fn schedule_actions(
    ctx: &Context,
    host: &Host,
    calendar: &str,
    keep: u32,
) -> anyhow::Result<Vec<crate::phases::Action>> {
    use crate::phases::Action;
    let mut vars = crate::render::host_vars(ctx.inv(), host);
    vars.insert(
        "backup",
        &serde_json::json!({
            "dir": super::SCHEDULED_DIR,
            "keep": keep,
            "schedule": calendar,
            "pki": super::ETCD_PKI,
        }),
    );
    let r = |t: &str| ctx.render.render(t, &vars);
    Ok(vec![
        Action::check(
            &format!(
                "systemd reads --schedule {calendar:?} as a calendar (see `man systemd.time`)"
            ),
            &format!("systemd-analyze calendar {} >/dev/null", quote(calendar)),
        ),
        Action::check(
            "etcdctl is installed (/usr/local/bin/etcdctl)",
            "[ -x /usr/local/bin/etcdctl ]",
        ),
        Action::dir("/usr/local/lib/clusterctl", 0o755),
        Action::dir(super::SCHEDULED_DIR, 0o700),
        Action::rendered(
            "/usr/local/lib/clusterctl/etcd-backup.sh",
            0o755,
            "etcd/etcd-backup.sh",
            r("etcd/etcd-backup.sh")?,
            &[],
        ),
        Action::rendered(
            "/etc/systemd/system/etcd-backup.service",
            0o644,
            "etcd/etcd-backup.service",
            r("etcd/etcd-backup.service")?,
            &[],
        ),
        Action::rendered(
            "/etc/systemd/system/etcd-backup.timer",
            0o644,
            "etcd/etcd-backup.timer",
            r("etcd/etcd-backup.timer")?,
            &["etcd-backup.timer"],
        ),
        Action::service("etcd-backup.timer"),
    ])
}

/// Succeeds when a scheduled backup is installed on the host.
const INSTALLED: &str = "[ -e /etc/systemd/system/etcd-backup.timer ] || [ -e /etc/systemd/system/etcd-backup.service ] || [ -e /usr/local/lib/clusterctl/etcd-backup.sh ]";
/// Removes the timer, its service and script (the snapshots stay).
const UNSCHEDULE: &str = "systemctl disable --now etcd-backup.timer 2>/dev/null || true; \
     rm -f /etc/systemd/system/etcd-backup.timer /etc/systemd/system/etcd-backup.service /usr/local/lib/clusterctl/etcd-backup.sh && systemctl daemon-reload";

/// `backup --schedule CALENDAR --keep N` (or `off`) on every etcd host, through the converge
/// loop: idempotent, and `--dry-run` shows what would change.
fn schedule(
    g: &Global,
    ctx: &Context,
    calendar: &str,
    keep: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    use crate::phases::executor::{Blob, DryRun, Executor, converge};
    use crate::phases::ssh_exec::SshExecutor;
    use crate::phases::{HostPlan, Source};
    let off = calendar == "off";
    if calendar.trim().is_empty() || calendar.contains('\n') {
        return Err(UserError::bad_input(
            "--schedule: an empty calendar; use e.g. `daily` or `*-*-* 02:30:00`, or `off`",
        )
        .into());
    }
    let hosts: Vec<&Host> = ctx.inv().hosts_with(Role::Etcd).collect();
    let mut plans = Vec::new();
    for h in &hosts {
        let actions = if off {
            vec![]
        } else {
            schedule_actions(ctx, h, calendar, keep)?
        };
        plans.push(HostPlan {
            host: h.name.clone(),
            address: h.address.clone(),
            actions,
        });
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (lines, recorded) = rt.block_on(async {
        let pool = super::connect(ctx, &hosts).await?;
        let ssh = SshExecutor {
            pool: pool.clone(),
            timeout: std::time::Duration::from_secs(120),
        };
        let dry = DryRun::new(&ssh);
        let exec: &dyn Executor = if dry_run { &dry } else { &ssh };
        let resolve = |s: &Source| -> anyhow::Result<Blob> {
            match s {
                Source::Rendered { content, .. } => Ok(Blob::Bytes(content.clone())),
                other => anyhow::bail!("unexpected source {other:?}"),
            }
        };
        // A calendar systemd cannot read is bad input: said before any host changes.
        if !off && let Some(h) = hosts.first() {
            let o = exec
                .query(h, &format!("systemd-analyze calendar {} 2>&1", quote(calendar)))
                .await?;
            if o.status != 0 {
                pool.close().await;
                return Err(UserError::bad_input(format!(
                    "--schedule {calendar:?} is not a systemd calendar ({} on {}); e.g. `daily`, `hourly`, `*-*-* 02:30:00` (see `man systemd.time`); nothing was changed",
                    o.stdout.trim(),
                    h.name
                ))
                .into());
            }
        }
        let futs = hosts.iter().zip(&plans).map(|(h, p)| async move {
            if off {
                if exec.query(h, INSTALLED).await?.status == 0 {
                    let o = exec.change(h, UNSCHEDULE).await?;
                    anyhow::ensure!(
                        o.status == 0,
                        "{}: removing the timer: {}",
                        h.name,
                        o.stderr.trim()
                    );
                }
                return Ok(format!(
                    "{}: no scheduled backup (snapshots kept in {})",
                    h.name,
                    super::SCHEDULED_DIR
                ));
            }
            let ch = converge(exec, h, p, &resolve)
                .await
                .with_context(|| format!("host {}", h.name))?;
            Ok::<_, anyhow::Error>(format!(
                "{}: timer etcd-backup.timer on {calendar:?}, keeps {keep} in {}{}",
                h.name,
                super::SCHEDULED_DIR,
                if ch.is_noop() { " (unchanged)" } else { "" }
            ))
        });
        let r: Vec<anyhow::Result<String>> = futures::future::join_all(futs).await;
        pool.close().await;
        let recorded = std::mem::take(&mut *dry.recorded.lock().unwrap());
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for x in r {
            match x {
                Ok(l) => lines.push(l),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            return Err(
                UserError::failed(format!("backup --schedule: {}", errors.join("\n  "))).into(),
            );
        }
        Ok::<_, anyhow::Error>((lines, recorded))
    })?;
    match g.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "schedule": calendar, "keep": keep, "dryRun": dry_run, "hosts": lines,
                "wouldChange": recorded.iter().map(|(h, w)| serde_json::json!({"host": h, "change": w})).collect::<Vec<_>>(),
            }))?
        ),
        Output::Text => {
            for (h, w) in &recorded {
                println!("{h}: {w}");
            }
            for l in &lines {
                println!(
                    "{l}{}",
                    if dry_run {
                        " (dry run: nothing was changed)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}
