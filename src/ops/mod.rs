//! Day-2 commands: `status`, growing and shrinking etcd (`members`, used by `join` and the
//! reset playbook), `backup` (a snapshot over TLS plus the local PKI and inventory in one
//! checksummed archive; `--schedule` installs a systemd timer on the etcd hosts), and the
//! command layers of the `reset` and `restore` playbooks (their phases are in
//! `phases::reset` and `phases::restore`). `backup::take_backup` is the library entry point
//! other commands (`upgrade`) call with their already-connected SSH pool.

pub mod archive;
pub mod backup;
pub mod members;
pub mod reset;
pub mod restore;
pub mod seal;
pub mod status;

use std::path::PathBuf;

use clap::Args;

use crate::cli::{Global, load_inventory, state_dir};
use crate::diag::UserError;
use crate::inventory::Host;
use crate::phases::Context;
use crate::ssh::shell::quote;

/// Where the etcd client certificates are on the hosts (kubeadm's layout).
pub const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// Where scheduled snapshots go on the etcd hosts.
pub const SCHEDULED_DIR: &str = "/var/backups/etcd";

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

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// A backup written by `clusterctl backup` (`<cluster>-<time>.backup`): its signature is
    /// checked before anything is decrypted or unpacked.
    pub archive: PathBuf,
    /// The age identity file (`age-keygen -o FILE`) of one of the archive's recipients
    /// (`spec.backup.recipients`): needed to decrypt it.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The public key the archive must be signed with (`clusters/<name>/backup-signing.pub`
    /// of the machine that took it). Default: this machine's key for the cluster.
    #[arg(long, value_name = "FILE")]
    pub signer: Option<PathBuf>,
    /// Verify the archive and print what would be done on each host; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The context of a command that runs no playbook: inventory, state dir, templates.
pub fn context(g: &Global) -> anyhow::Result<Context> {
    let loaded = load_inventory(g)?;
    let state = state_dir(g, &loaded);
    let render = crate::render::Renderer::new(Some(&state.root.join("templates")))?;
    Ok(Context {
        loaded,
        state,
        render,
        host_filter: vec![],
        bundle: None,
        options: Default::default(),
    })
}

/// Connects to `hosts`; every one must answer, else nothing is done.
pub async fn connect(ctx: &Context, hosts: &[&Host]) -> anyhow::Result<crate::ssh::Pool> {
    connect_hosts(&ctx.loaded, &ctx.state, hosts).await
}

/// [`connect`] for a command that has no [`Context`] (`certs check-expiration`).
pub async fn connect_hosts(
    loaded: &crate::inventory::Loaded,
    state: &crate::state::StateDir,
    hosts: &[&Host],
) -> anyhow::Result<crate::ssh::Pool> {
    let targets: Vec<crate::ssh::Target> = crate::ssh::Target::from_inventory(loaded, state)
        .into_iter()
        .filter(|t| hosts.iter().any(|h| h.name == t.name))
        .collect();
    let opts = crate::ssh::ConnectOpts {
        concurrency: loaded.inventory.spec.ssh.concurrency,
        progress: crate::ssh::ProgressMode::Quiet,
        logs_dir: Some(state.logs()),
        ..Default::default()
    };
    let (pool, errors) = crate::ssh::Pool::connect(&targets, &opts).await;
    if !errors.is_empty() {
        pool.close().await;
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(UserError::failed(format!(
            "cannot reach {} host(s); nothing was changed:\n  {}",
            errors.len(),
            list.join("\n  ")
        ))
        .into());
    }
    Ok(pool)
}

/// `etcdctl ARGS` against the member on `host` over TLS, as the health check does.
pub fn etcdctl(host: &Host, args: &str) -> String {
    format!(
        "ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints=https://{}:2379 --cacert={ETCD_PKI}/ca.crt \
         --cert={ETCD_PKI}/healthcheck-client.crt --key={ETCD_PKI}/healthcheck-client.key {args}",
        host.address
    )
}

/// A shell prefix that sets `$u` to the offline snapshot tool: `etcdutl` (etcd ≥ 3.5) when the
/// host has it, else `etcdctl` (3.4, and 3.5 where it still has `snapshot status|restore`).
pub const SNAPSHOT_TOOL: &str = "if command -v etcdutl >/dev/null 2>&1; then u=etcdutl; \
     elif [ -x /usr/local/bin/etcdutl ]; then u=/usr/local/bin/etcdutl; \
     else u='env ETCDCTL_API=3 /usr/local/bin/etcdctl'; fi; ";

/// `snapshot status FILE -w json` with the offline tool.
pub fn snapshot_status_command(file: &str) -> String {
    format!("{SNAPSHOT_TOOL}$u snapshot status {} -w json", quote(file))
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
