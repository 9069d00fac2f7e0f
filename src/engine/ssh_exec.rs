//! The executor of a real run: every query, change and file goes over the SSH engine's one
//! session per host.

use super::Context;
use crate::diag::UserError;
use std::time::Duration;

use futures::future::BoxFuture;

use super::Shell;
use super::executor::{Blob, CmdOutput, Executor, PutFile, Sent};
use super::peers::{self, Peers, Turn};
use crate::inventory::Host;
use crate::ssh::{ExecOpts, Pool, UploadItem, UploadSource};

pub struct SshExecutor {
    pub pool: Pool,
    /// Limit for one command (health gates poll with their own deadlines).
    pub timeout: Duration,
    /// Bundle items copied host to host (`spec.ssh.peerCopy`), or every copy from here.
    pub peers: Option<Peers>,
}

impl SshExecutor {
    /// The executor of a run over `pool`, with peer copy as the inventory sets it.
    pub fn new(pool: Pool, inv: &crate::inventory::Inventory) -> SshExecutor {
        let pc = inv.spec.ssh.peer_copy;
        SshExecutor {
            pool,
            timeout: Duration::from_secs(600),
            peers: (!pc.is_off()).then(|| Peers::new(pc.seeds, pc.port)),
        }
    }

    async fn upload(&self, host: &Host, files: &[&PutFile]) -> anyhow::Result<u64> {
        if files.is_empty() {
            return Ok(0);
        }
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
    }

    /// One bundle item to `host` by peer copy, as `turn` says: fetched from a seed (from
    /// here should that fail), or sent from here, after which this host serves it.
    async fn copy_item(
        &self,
        peers: &Peers,
        host: &Host,
        f: &PutFile,
        turn: Turn,
    ) -> anyhow::Result<Sent> {
        match turn {
            Turn::Fetch(seed, addr) => {
                let size = blob_size(&f.blob)?;
                let cmd = peers::fetch(
                    addr,
                    peers.port,
                    &f.path,
                    &f.sha256,
                    size,
                    f.mode,
                    Some("root:root"),
                );
                crate::console::host_step(&host.name, &format!("fetch {} from {seed}", f.path));
                let o = self.exec(host, &cmd).await?;
                if o.status == 0 {
                    tracing::debug!(host = %host.name, dest = %f.path, seed, bytes = size, "fetched from a seed");
                    return Ok(Sent {
                        from_here: 0,
                        from_peers: size,
                    });
                }
                // The seed could not give it (a firewall, a seed gone): from here, as
                // without peer copy.
                eprintln!(
                    "warning: {}: fetching {} from {seed} failed ({}); sending it from here",
                    host.name,
                    f.path,
                    o.stderr.trim()
                );
                Ok(Sent::here(self.upload(host, &[f]).await?))
            }
            Turn::Seed => {
                // The slot is given back however this ends (a dropped future included), so
                // no host waits on a seed that will never be ready.
                let slot = SeedSlot {
                    peers,
                    sha256: &f.sha256,
                    pending: true,
                };
                let (from_here, serves) = self.seed(peers, host, f).await?;
                if serves {
                    slot.ready(&host.name, host.address);
                }
                Ok(Sent::here(from_here))
            }
            Turn::Wait => unreachable!("a waiting item is not copied"),
        }
    }

    /// Sends `f` from here; then the host serves it (its server started with its first item)
    /// unless that fails, which costs only the peer copy: the host has its file. Returns the
    /// bytes sent and whether the host serves it.
    async fn seed(&self, peers: &Peers, host: &Host, f: &PutFile) -> anyhow::Result<(u64, bool)> {
        let sent = self.upload(host, &[f]).await?;
        let serve = async {
            {
                let mut serving = peers.serving.lock().await;
                if !serving.contains(host.name.as_str()) {
                    self.pool
                        .run(
                            &host.name,
                            peers::start_server(host.address, peers.port),
                            ExecOpts::root(),
                        )
                        .await?;
                    serving.insert(host.name.to_string());
                }
            }
            self.pool
                .run(
                    &host.name,
                    peers::serve(&f.sha256, &f.path),
                    ExecOpts::root(),
                )
                .await
        };
        match serve.await {
            Ok(_) => Ok((sent, true)),
            Err(e) => {
                eprintln!(
                    "warning: {}: cannot serve {} to its peers ({e}); they get it from here",
                    host.name, f.path
                );
                Ok((sent, false))
            }
        }
    }

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
    ) -> BoxFuture<'a, anyhow::Result<Sent>> {
        Box::pin(async move {
            let Some(peers) = &self.peers else {
                return Ok(Sent::here(
                    self.upload(host, &files.iter().collect::<Vec<_>>()).await?,
                ));
            };
            let (shared, direct): (Vec<&PutFile>, Vec<&PutFile>) = files
                .iter()
                .partition(|f| host.address.is_ipv4() && peer_item(f));
            let mut sent = Sent::here(self.upload(host, &direct).await?);
            // The runner puts only files whose far content differs. An item whose seeds are
            // all still receiving it waits while this host takes the next one.
            let mut todo: Vec<&PutFile> = shared;
            while !todo.is_empty() {
                let changed = peers.changed.notified();
                let mut waiting = Vec::new();
                for f in todo {
                    match peers.turn(&f.sha256) {
                        Turn::Wait => waiting.push(f),
                        turn => {
                            sent += self
                                .copy_item(peers, host, f, turn)
                                .await
                                .map_err(|e| e.context(format!("writing {}", f.path)))?;
                        }
                    }
                }
                if !waiting.is_empty() {
                    changed.await;
                }
                todo = waiting;
            }
            Ok(sent)
        })
    }
    fn phase_done<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(peers) = &self.peers else { return };
            let serving = std::mem::take(&mut *peers.serving.lock().await);
            for name in serving {
                if let Err(e) = self
                    .pool
                    .run(&name, peers::stop_server(), ExecOpts::root())
                    .await
                {
                    eprintln!(
                        "warning: {name}: stopping the peer-copy server ({}): {e}",
                        peers::UNIT
                    );
                }
            }
            peers.forget();
        })
    }
}

/// A seed slot [`Peers::turn`] reserved: ready, or given back when dropped before that.
struct SeedSlot<'a> {
    peers: &'a Peers,
    sha256: &'a str,
    pending: bool,
}

impl SeedSlot<'_> {
    fn ready(mut self, host: &str, addr: std::net::IpAddr) {
        self.pending = false;
        self.peers.seeded(self.sha256, host, addr);
    }
}

impl Drop for SeedSlot<'_> {
    fn drop(&mut self) {
        if self.pending {
            self.peers.seed_failed(self.sha256);
        }
    }
}

/// A content-addressed bundle item worth a peer copy: its cached file is named by its sha256
/// (the operator's item cache, `<cache>/<sha256>`), never a secret of the PKI.
fn peer_item(f: &PutFile) -> bool {
    let path = match &f.blob {
        Blob::Path(p) | Blob::Packed { path: p, .. } => p,
        Blob::Bytes(_) => return false,
    };
    path.file_name().and_then(|n| n.to_str()) == Some(f.sha256.as_str())
        && blob_size(&f.blob).is_ok_and(|n| n >= peers::MIN_SIZE)
}

fn blob_size(blob: &Blob) -> anyhow::Result<u64> {
    Ok(match blob {
        Blob::Bytes(b) => b.len() as u64,
        Blob::Path(p) | Blob::Packed { path: p, .. } => std::fs::metadata(p)?.len(),
    })
}

fn source(blob: &Blob) -> UploadSource {
    match blob {
        Blob::Bytes(b) => UploadSource::Bytes(b.clone()),
        Blob::Path(p) => UploadSource::Path(p.clone()),
        Blob::Packed { path, gz, zst } => UploadSource::Packed {
            path: path.clone(),
            gz: gz.clone(),
            zst: zst.clone(),
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
