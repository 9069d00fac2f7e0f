//! The executor of a real run: every query, change and file goes over the SSH engine's one
//! session per host.

use super::Context;
use crate::diag::UserError;
use std::time::Duration;

use futures::future::BoxFuture;

use super::Shell;
use super::executor::{Blob, CmdOutput, Executor, PutFile};
use crate::inventory::Host;
use crate::ssh::{ExecOpts, Pool, UploadItem, UploadSource};

pub struct SshExecutor {
    pub pool: Pool,
    /// Limit for one command (health gates poll with their own deadlines).
    pub timeout: Duration,
}

impl SshExecutor {
    async fn exec(&self, host: &Host, cmd: &Shell) -> anyhow::Result<CmdOutput> {
        let o = self
            .pool
            .exec(&host.name, cmd, ExecOpts::root().timeout(self.timeout))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(CmdOutput {
            status: if o.signal.is_some() {
                255
            } else {
                o.status as i32
            },
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }
}

impl Executor for SshExecutor {
    fn query<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        Box::pin(self.exec(host, cmd))
    }
    fn change<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        Box::pin(self.exec(host, cmd))
    }
    fn put<'a>(
        &'a self,
        host: &'a Host,
        path: &'a str,
        blob: &'a Blob,
        _sha256: &'a str,
        mode: u32,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let o = self
                .pool
                .upload(&host.name, &source(blob), path, mode, Some("root:root"))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(o.bytes_sent)
        })
    }
    fn put_many<'a>(
        &'a self,
        host: &'a Host,
        files: &'a [PutFile],
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let items: Vec<UploadItem> = files
                .iter()
                .map(|f| UploadItem {
                    source: source(&f.blob),
                    dest: f.path.clone(),
                    mode: f.mode,
                    owner: Some("root:root".into()),
                })
                .collect();
            let out = self
                .pool
                .upload_many(&host.name, &items)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(out.iter().map(|o| o.bytes_sent).sum())
        })
    }
}

fn source(blob: &Blob) -> UploadSource {
    match blob {
        Blob::Bytes(b) => UploadSource::Bytes(b.clone()),
        Blob::Path(p) => UploadSource::Path(p.clone()),
        Blob::Packed { path, gz } => UploadSource::Gzip {
            path: path.clone(),
            gz: gz.clone(),
        },
    }
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
        progress: crate::ssh::ProgressMode::live_or_quiet(),
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
