//! `clusterctl backup`: an etcd snapshot taken over TLS from a healthy member, checked with
//! `snapshot status` on that host, fetched over SSH (sha256 compared), and written with the
//! local PKI and the inventory into one archive (see [`super::backup_archive`]), read back, then
//! sealed: encrypted to `spec.backup.recipients` and signed with the cluster's
//! backup-signing key (see [`super::seal`]), and checked again as `restore` will check it.
//! `--schedule` runs the backup-schedule playbook instead (see [`schedule`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use super::backup_archive::{
    self as archive, EtcdInfo, INVENTORY, Manifest, Member, SNAPSHOT, SnapshotStatus,
};
use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::engine::Context;
use crate::inventory::Host;
use crate::phases::etcd::{etcdctl, snapshot_status_command};
use crate::ssh::shell::{Cmd, Shell};
use crate::ssh::{ExecOpts, Pool};
use clap::Args;

/// Where the snapshot waits on the member's host before it is fetched (then removed).
const REMOTE_DIR: &str = "/var/lib/clusterctl/backup";

/// What a backup wrote.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub path: PathBuf,
    pub checksum_file: PathBuf,
    /// False only with `spec.backup.unencrypted: true`.
    pub encrypted: bool,
    /// The age recipients it is encrypted to.
    pub recipients: Vec<String>,
    /// The backup-signing public key (hex) and where its PEM is.
    pub signer: String,
    pub signer_file: PathBuf,
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
            name: h.name.to_string(),
            address: h.address.to_string(),
        })
        .collect()
}

/// Where the archive goes: `out` (a directory: the default name in it) or the default. An
/// existing file is refused (a backup never replaces anything).
fn target(ctx: &Context, out: Option<&Path>, when: &str) -> anyhow::Result<PathBuf> {
    let name = format!("{}-{when}.backup", ctx.inv().name());
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

/// Whom the archive is encrypted to: `spec.backup.recipients`, or None (clear) only with
/// `spec.backup.unencrypted: true`. Neither is bad input, found before any host is touched.
pub fn recipients(ctx: &Context) -> Result<Option<&[crate::inventory::AgeRecipient]>, UserError> {
    let b = &ctx.inv().spec.backup;
    match (b.recipients.is_empty(), b.unencrypted) {
        (false, false) => Ok(Some(&b.recipients)),
        (true, true) => Ok(None),
        (false, true) => Err(UserError::bad_input(format!(
            "{}: spec.backup has both recipients and `unencrypted: true`: remove one \
             (a backup holds the CA keys: keep the recipients)",
            ctx.loaded.path.display()
        ))),
        (true, false) => Err(UserError::bad_input(format!(
            "{}: spec.backup.recipients is empty: a backup holds every CA key and is written \
             encrypted only. Add an age public key (`age-keygen -o backup.key` prints one), e.g.\n  \
             spec:\n    backup:\n      recipients: [age1...]\n  \
             and keep backup.key off this machine; or, knowingly, `spec.backup.unencrypted: true`; \
             nothing was touched",
            ctx.loaded.path.display()
        ))),
    }
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
    // Who may read it and who signs it: settled before any host is touched.
    let recipients = recipients(ctx)?;
    let signing = super::seal::signing_key(&ctx.state)?;
    let path = target(ctx, out, &when)?;
    let inv = ctx.inv();
    let host = healthy_member(ctx, pool).await?;
    let remote = format!("{REMOTE_DIR}/{}-{when}.db", inv.name());
    let step = |what: &str| format!("backup on {}: {what}", host.name);

    // Snapshot over TLS (etcdctl checks the sha256 etcd appends), then read it back offline.
    let save = Cmd::new("install")
        .args(["-d", "-m", "0700", REMOTE_DIR])
        .and(etcdctl(host).args(["--command-timeout=300s", "snapshot", "save", &remote]));
    let cleanup = Cmd::new("rm")
        .arg("-f")
        .arg(&remote)
        .arg(format!("{remote}.part"));
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
                Shell::from("/usr/local/bin/etcd --version 2>/dev/null | head -1"),
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
            snapshot_from: host.name.to_string(),
            version,
            data_dir: inv.spec.etcd.data_dir.to_string(),
            status,
        },
        files: vec![],
    };
    // The clear archive lives only in the 0700 temp dir, read back there before it is sealed.
    let plain = tmp.path().join("archive.tar.gz");
    archive::write(&plain, &mut manifest, &files)?;
    let check = tempfile::tempdir_in(tmp.path())?;
    archive::verify(&plain, check.path()).context("reading the new archive back")?;
    drop(check);
    let sealed = super::seal::seal(&plain, &path, inv.name(), recipients, &signing)?;
    // Read the sealed file back from disk the way `restore` will: signature and payload.
    let trusted = signing.verifying_key();
    super::seal::open(&path, &trusted).context("reading the sealed backup back")?;
    let (sha256, size) = crate::hashing::hash_file(&path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let checksum_file = archive::checksum_path(&path);
    archive::write_private(&checksum_file, format!("{sha256}  {name}\n").as_bytes())
        .with_context(|| format!("writing {}", checksum_file.display()))?;
    Ok(Report {
        checksum_file,
        path,
        size,
        sha256,
        encrypted: sealed.encrypted,
        recipients: recipients
            .unwrap_or_default()
            .iter()
            .map(|r| r.0.to_string())
            .collect(),
        signer: sealed.signer,
        signer_file: super::seal::signing_pub_path(&ctx.state),
        snapshot_from: host.name.to_string(),
        snapshot_bytes: bytes,
        status,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `clusterctl backup`.
pub fn run(g: &Global, a: &BackupArgs) -> anyhow::Result<()> {
    if let Some(cal) = &a.schedule {
        return schedule(g, cal, a.keep, a.dry_run);
    }
    let ctx = super::context(g)?;
    if a.dry_run {
        return Err(UserError::bad_input(
            "--dry-run goes with --schedule; a backup changes nothing on the hosts (run it without --dry-run)",
        )
        .into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(async {
        let hosts: Vec<&Host> = ctx.inv().etcd_hosts().collect();
        let pool = crate::engine::ssh_exec::connect(&ctx, &hosts).await?;
        let r = backup(&ctx, &pool, a.out.as_deref()).await;
        pool.close().await;
        r
    })?;
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(g.output, &r)?,
        Output::Text => {
            println!(
                "backup of {}: {} ({}), sha256 {} in {}",
                ctx.inv().name(),
                r.path.display(),
                human(r.size),
                r.sha256,
                r.checksum_file.display()
            );
            if r.encrypted {
                println!(
                    "  encrypted (age) to {}; signed with the backup-signing key {} ({}: copy it off-site too, `restore --signer` takes it)",
                    r.recipients.join(", "),
                    r.signer,
                    r.signer_file.display()
                );
            } else {
                println!(
                    "  NOT ENCRYPTED (spec.backup.unencrypted: true): the file holds every CA key in the clear; signed with the backup-signing key {} ({})",
                    r.signer,
                    r.signer_file.display()
                );
            }
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

/// `backup --schedule CALENDAR --keep N` (or `off`): the backup-schedule playbook on the one
/// runner (`phases::backup_schedule`): idempotent, and `--dry-run` shows what would change.
fn schedule(g: &Global, calendar: &str, keep: u32, dry_run: bool) -> anyhow::Result<()> {
    use crate::engine::Schedule;
    use crate::phases::backup_schedule::CALENDAR_CHECK;
    if calendar.trim().is_empty() || calendar.contains('\n') {
        return Err(UserError::bad_input(
            "--schedule: an empty calendar; use e.g. `daily` or `*-*-* 02:30:00`, or `off`",
        )
        .into());
    }
    let s = Schedule {
        calendar: calendar.to_string(),
        keep,
    };
    let options = crate::engine::RunOptions {
        dry_run,
        schedule: Some(s.clone()),
        ..Default::default()
    };
    let (ctx, runner) =
        crate::commands::cluster::prepare(g, "backup-schedule", &Default::default(), options)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (report, recorded) = match crate::commands::cluster::execute(&rt, &ctx, &runner, dry_run) {
        Ok(r) => r,
        // The calendar guard runs before anything changes on a host: its failure is bad
        // input, and nothing was changed.
        Err(e) if format!("{e:#}").contains(CALENDAR_CHECK) => {
            return Err(UserError::bad_input(format!(
                "--schedule {calendar:?} is not a systemd calendar: {e:#}\n  e.g. `daily`, `hourly`, `*-*-* 02:30:00` (see `man systemd.time`); nothing was changed"
            ))
            .into());
        }
        Err(e) => return Err(e),
    };
    let mut lines = Vec::new();
    for p in &report.phases {
        for (h, o) in &p.hosts {
            let unchanged = matches!(o, crate::engine::runner::HostOutcome::Done(c) if c.is_noop());
            lines.push(if s.is_off() {
                format!(
                    "{h}: no scheduled backup (snapshots kept in {})",
                    crate::phases::etcd::SCHEDULED_DIR
                )
            } else {
                format!(
                    "{h}: timer etcd-backup.timer on {calendar:?}, keeps {keep} in {}{}",
                    crate::phases::etcd::SCHEDULED_DIR,
                    if unchanged { " (unchanged)" } else { "" }
                )
            });
        }
    }
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(
            g.output,
            &serde_json::json!({
                "schedule": calendar, "keep": keep, "dryRun": dry_run, "hosts": lines,
                "wouldChange": crate::commands::cluster::would_change(&recorded),
                "phases": report.phases,
            }),
        )?,
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

#[derive(Args, Debug, Clone, Default)]
pub struct BackupArgs {
    /// Archive to write (a directory: the default name in it). Default:
    /// clusters/<name>/backups/<name>-<UTC time>.backup. An existing file is never replaced.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead of a backup now: install a systemd timer on every etcd host that snapshots the
    /// local member on this systemd calendar (e.g. `daily`, `*-*-* 02:30:00`, `hourly`) into
    /// /var/backups/etcd; `off` removes the timer (the snapshots stay).
    #[arg(long, value_name = "CALENDAR")]
    pub schedule: Option<String>,
    /// With --schedule: how many snapshots each host keeps (the newest).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: u32,
    /// With --schedule: only print what would change on each host.
    #[arg(long)]
    pub dry_run: bool,
}

/// `20261124T221000Z`: the UTC time in names (sortable, no `:`).
pub fn stamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(time::macros::format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .expect("formats")
}

/// Human size: `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_and_sizes() {
        let t = time::macros::datetime!(2026-11-24 22:10:05 UTC);
        assert_eq!(stamp(t), "20261124T221005Z");
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
