//! `Pool`: one SSH session per host for a whole run, many channels on it. Exec, upload with a
//! far-side sha256 check, and fan-out with a concurrency limit.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use russh::ChannelMsg;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Semaphore};

use super::error::{ErrorKind, HostError, HostResult};
use super::progress::{Progress, ProgressMode};
use super::session::{self, KeyStore, Session, SessionSettings};
use super::shell;
use super::shell::{Cmd, Shell};
use super::target::Target;

/// How a run connects and reports.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Trust unknown host keys on first use and pin them, whatever the inventory says (a flag).
    pub accept_new: bool,
    /// Extra attempts after a connection error (never after auth or host key errors).
    pub retries: u32,
    /// How many hosts connect at once.
    pub concurrency: usize,
    pub keepalive: Duration,
    pub progress: ProgressMode,
    /// Per-host logs (`StateDir::logs()`); None: no log files.
    pub logs_dir: Option<PathBuf>,
    /// Channels open at once per session; sshd refuses more than its `MaxSessions` (10 by
    /// default), so keep this below it.
    pub max_channels: usize,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            accept_new: false,
            retries: 1,
            concurrency: 64,
            keepalive: Duration::from_secs(15),
            progress: ProgressMode::Auto,
            logs_dir: None,
            max_channels: 8,
        }
    }
}

/// How to run one command.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    /// None: no limit.
    pub timeout: Option<Duration>,
    /// Run as root (`sudo -n` for a non-root user).
    pub sudo: bool,
    /// Attempts after a connection error before the command started (never after it ran).
    pub retries: u32,
}

impl ExecOpts {
    pub fn root() -> Self {
        ExecOpts {
            sudo: true,
            ..Default::default()
        }
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    /// Exit status; 255 with `signal` set when the command was killed.
    pub status: u32,
    pub signal: Option<String>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0 && self.signal.is_none()
    }
}

/// What to upload.
#[derive(Debug, Clone)]
pub enum UploadSource {
    Bytes(Vec<u8>),
    Path(PathBuf),
    /// The bytes of `path`, sent as `zst` (their zstd stream) to a host that has `zstd`, else
    /// as `gz` (their gzip stream), and expanded on the host: the far check is on the
    /// expanded bytes, against `path`'s sha256.
    Packed {
        path: PathBuf,
        gz: PathBuf,
        zst: PathBuf,
    },
}

/// What a command's stdin gets: bytes, or a file's contents.
#[derive(Clone, Copy)]
enum Input<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}

impl UploadSource {
    fn describe(&self) -> String {
        match self {
            UploadSource::Bytes(b) => format!("{} bytes", b.len()),
            UploadSource::Path(p) | UploadSource::Packed { path: p, .. } => p.display().to_string(),
        }
    }
}

/// One file to put on a host.
#[derive(Debug, Clone)]
pub struct UploadItem {
    pub source: UploadSource,
    pub dest: String,
    pub mode: u32,
    /// `user` or `user:group`; None: left as the uploading user (root) made it.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadOutcome {
    pub bytes_sent: u64,
    pub bytes_skipped: u64,
    /// The far file already had this content (mode/owner may still have been fixed).
    pub skipped: bool,
}

struct HostConn {
    target: Target,
    session: Mutex<Arc<Session>>,
    bastion: Option<Arc<Session>>,
    channels: Semaphore,
    /// Whether the host has `zstd`, asked at its first packed upload.
    has_zstd: tokio::sync::OnceCell<bool>,
}

struct Inner {
    hosts: HashMap<String, HostConn>,
    failed: HashMap<String, HostError>,
    order: Vec<String>,
    keys: KeyStore,
    settings: SessionSettings,
    progress: Progress,
    retries: u32,
    hashes: std::sync::Mutex<HashMap<PathBuf, Arc<LocalHashCell>>>,
}

/// The sessions of a run. Cheap to clone (shared).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// A local file's size, mtime and sha256, computed once per run.
type LocalHashCell = Mutex<Option<(u64, Option<SystemTime>, String)>>;

enum ChanError {
    /// The channel could not be opened or the command not started: nothing ran.
    NotStarted(String),
    /// The command started and the connection broke.
    Broken(String),
}

impl Pool {
    /// Connects to every target in parallel (bastions first, each once). Returns the pool of the
    /// hosts that answered and the errors of those that did not.
    pub async fn connect(targets: &[Target], opts: &ConnectOpts) -> (Pool, Vec<HostError>) {
        let names: Vec<String> = targets.iter().map(|t| t.name.to_string()).collect();
        let progress = Progress::new(&names, opts.progress, opts.logs_dir.clone());
        let keys = KeyStore::load(targets);
        let settings = SessionSettings {
            accept_new: opts.accept_new,
            keepalive: opts.keepalive,
        };
        progress.step("connect", targets.len());

        // Bastions: each distinct one once.
        let mut bastions: HashMap<String, Result<Arc<Session>, HostError>> = HashMap::new();
        for t in targets {
            if let Some(b) = &t.bastion
                && !bastions.contains_key(&b.name)
            {
                let r = connect_retrying(b, &keys, &settings, None, opts.retries)
                    .await
                    .map(|c| Arc::new(c.session))
                    .map_err(|e| e.with_step(&format!("connect to bastion {}", b.name)));
                bastions.insert(b.name.clone(), r);
            }
        }

        let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let futs = targets.iter().map(|t| {
            let sem = sem.clone();
            let (keys, settings, progress) = (&keys, &settings, &progress);
            let bastion = t.bastion.as_ref().map(|b| bastions[&b.name].clone());
            async move {
                let _permit = sem.acquire().await;
                progress.host(&t.name, &format!("connecting to {}", t.describe()));
                let b = match bastion {
                    None => None,
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        let mut e = e.clone();
                        e.message =
                            format!("bastion {} ({}) failed: {}", e.host, e.endpoint, e.message);
                        e.host = t.name.to_string();
                        e.endpoint = t.describe();
                        return (t, None, Err(e));
                    }
                };
                let r = connect_retrying(t, keys, settings, b.as_deref(), opts.retries).await;
                (t, b, r)
            }
        });
        let results = futures::future::join_all(futs).await;

        let mut hosts = HashMap::new();
        let mut failed = HashMap::new();
        let mut errors = Vec::new();
        for (t, b, r) in results {
            match r {
                Ok(c) => {
                    let msg = match c.pinned {
                        Some(fp) => format!(
                            "connected; new host key {fp} pinned into {}",
                            t.pin_file.display()
                        ),
                        None => "connected".to_string(),
                    };
                    progress.done(&t.name, &msg);
                    hosts.insert(
                        t.name.to_string(),
                        HostConn {
                            target: t.clone(),
                            session: Mutex::new(Arc::new(c.session)),
                            bastion: b,
                            channels: Semaphore::new(opts.max_channels.max(1)),
                            has_zstd: tokio::sync::OnceCell::new(),
                        },
                    );
                }
                Err(e) => {
                    progress.done(&t.name, &format!("FAILED: {e}"));
                    failed.insert(t.name.to_string(), e.clone());
                    errors.push(e);
                }
            }
        }
        let inner = Inner {
            hosts,
            failed,
            order: names,
            keys,
            settings,
            progress,
            retries: opts.retries,
            hashes: Default::default(),
        };
        (
            Pool {
                inner: Arc::new(inner),
            },
            errors,
        )
    }

    /// Hosts with a session, in target order.
    pub fn hosts(&self) -> Vec<String> {
        self.inner
            .order
            .iter()
            .filter(|h| self.inner.hosts.contains_key(*h))
            .cloned()
            .collect()
    }

    pub fn target(&self, host: &str) -> Option<&Target> {
        self.inner.hosts.get(host).map(|h| &h.target)
    }

    pub fn progress(&self) -> &Progress {
        &self.inner.progress
    }

    fn conn(&self, host: &str, step: &str) -> Result<&HostConn, HostError> {
        self.inner
            .hosts
            .get(host)
            .ok_or_else(|| match self.inner.failed.get(host) {
                Some(e) => e
                    .clone()
                    .with_step(&format!("{step} (not connected: {})", e.step)),
                None => HostError::new(
                    host,
                    "?",
                    step,
                    ErrorKind::Local,
                    "no such host in this run",
                ),
            })
    }

    fn err(&self, c: &HostConn, step: &str, kind: ErrorKind, msg: impl Into<String>) -> HostError {
        HostError::new(&c.target.name, &c.target.describe(), step, kind, msg)
    }

    /// Reconnects a host whose session died (only after a connection error).
    async fn reconnect(&self, c: &HostConn, dead: &Arc<Session>) -> Result<(), HostError> {
        let mut slot = c.session.lock().await;
        if !Arc::ptr_eq(&slot, dead) && !slot.is_closed() {
            return Ok(()); // someone else already did
        }
        let s = session::connect(
            &c.target,
            &self.inner.keys,
            &self.inner.settings,
            c.bastion.as_deref(),
        )
        .await?;
        *slot = Arc::new(s.session);
        Ok(())
    }

    /// Runs `cmd` and returns its output, whatever its exit status. Errors: connection, timeout,
    /// and `sudo -n` wanting a password.
    pub async fn exec(
        &self,
        host: &str,
        cmd: impl Into<Shell>,
        opts: ExecOpts,
    ) -> Result<ExecOutput, HostError> {
        self.exec_with_input(host, &cmd.into(), &opts, None).await
    }

    /// Like `exec`, and a non-zero exit is an error naming the host with the command's stderr.
    pub async fn run(
        &self,
        host: &str,
        cmd: impl Into<Shell>,
        opts: ExecOpts,
    ) -> Result<ExecOutput, HostError> {
        let cmd = cmd.into();
        let out = self.exec(host, &cmd, opts).await?;
        if out.success() {
            return Ok(out);
        }
        let c = self.conn(host, "exec")?;
        Err(self
            .err(c, &short(cmd.as_str()), ErrorKind::Command, exit_text(&out))
            .with_stderr(out.stderr.clone()))
    }

    async fn exec_with_input(
        &self,
        host: &str,
        cmd: &Shell,
        opts: &ExecOpts,
        input: Option<Input<'_>>,
    ) -> Result<ExecOutput, HostError> {
        let c = self.conn(host, "exec")?;
        let full = if opts.sudo {
            shell::as_root(cmd, &c.target.user)
        } else {
            cmd.clone()
        };
        let step = short(cmd.as_str());
        if input.is_none() {
            // The live line shows the command; an upload's line already says what it sends.
            crate::console::host_detail(host, &step);
        }
        let progress = &self.inner.progress;
        progress.log(host, &format!("$ {full}"));
        tracing::debug!(host, command = %full, "run");
        let started = Instant::now();
        let mut attempt = 0;
        let _channel = c.channels.acquire().await;
        let out = loop {
            let session = c.session.lock().await.clone();
            let fut = run_channel(&session, full.as_str(), input);
            let r = match opts.timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        progress.log(host, &format!("timed out after {}s", t.as_secs_f64()));
                        return Err(self
                            .err(c, &step, ErrorKind::Timeout, format!("no exit after {}s", t.as_secs_f64()))
                            .with_fix("the command may still be running on the host; raise the timeout or look at the host"));
                    }
                },
                None => fut.await,
            };
            match r {
                Ok(out) => break out,
                Err(ChanError::NotStarted(m))
                    if attempt < opts.retries.max(self.inner.retries) && session.is_closed() =>
                {
                    attempt += 1;
                    progress.log(
                        host,
                        &format!("connection lost before the command started ({m}); reconnecting"),
                    );
                    self.reconnect(c, &session)
                        .await
                        .map_err(|e| e.with_step(&step))?;
                }
                Err(ChanError::NotStarted(m)) => {
                    return Err(self.err(
                        c,
                        &step,
                        ErrorKind::Connect,
                        format!("cannot start the command: {m}"),
                    ));
                }
                Err(ChanError::Broken(m)) => {
                    return Err(self
                        .err(c, &step, ErrorKind::Connect, format!("connection lost while the command ran: {m}"))
                        .with_fix("the command was not retried (it may have run); check the host and run again"));
                }
            }
        };
        let mut log = String::new();
        if !out.stdout.is_empty() {
            log.push_str(&out.stdout);
            if !log.ends_with('\n') {
                log.push('\n');
            }
        }
        for l in out.stderr.lines() {
            log.push_str(&format!("stderr: {l}\n"));
        }
        log.push_str(&format!(
            "-> {} ({:.3}s)",
            exit_text(&out),
            started.elapsed().as_secs_f64()
        ));
        progress.log(host, &log);
        tracing::debug!(
            host,
            status = out.status,
            stdout_bytes = out.stdout.len(),
            stderr_bytes = out.stderr.len(),
            seconds = started.elapsed().as_secs_f64(),
            "ran {step}"
        );
        if opts.sudo
            && c.target.user != "root"
            && out.status == 1
            && shell::sudo_wants_password(&out.stderr)
        {
            return Err(self
                .err(c, &step, ErrorKind::SudoPassword, format!("sudo wants a password for user {}", c.target.user))
                .with_stderr(out.stderr)
                .with_fix(format!(
                    "allow passwordless sudo for {} (e.g. `{} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/), or connect as root",
                    c.target.user, c.target.user
                )));
        }
        Ok(out)
    }

    /// Local sha256 and size of a source. A file is hashed once per run (keyed by size and
    /// mtime), off the async threads; hosts asking at the same time wait for that one hash.
    async fn local_hash(&self, src: &UploadSource) -> std::io::Result<(u64, String)> {
        match src {
            UploadSource::Bytes(b) => Ok((b.len() as u64, hex::encode(Sha256::digest(b)))),
            UploadSource::Path(p) | UploadSource::Packed { path: p, .. } => {
                let meta = tokio::fs::metadata(p).await?;
                let key = (meta.len(), meta.modified().ok());
                let cell = {
                    let mut map = self.inner.hashes.lock().unwrap();
                    let cell = map
                        .entry(p.clone())
                        .or_insert_with(|| Arc::new(LocalHashCell::default()));
                    cell.clone()
                };
                let mut slot = cell.lock().await;
                if let Some((len, mtime, h)) = slot.as_ref()
                    && (*len, *mtime) == key
                {
                    return Ok((*len, h.clone()));
                }
                let path = p.clone();
                let h = tokio::task::spawn_blocking(move || crate::hashing::hash_file(&path))
                    .await
                    .map_err(std::io::Error::other)?
                    .map_err(std::io::Error::other)?
                    .0;
                *slot = Some((key.0, key.1, h.clone()));
                Ok((key.0, h))
            }
        }
    }

    /// Puts one file on `host`: skipped when the far file has the same sha256 (mode/owner fixed
    /// if needed), else streamed into a temp file, checked and renamed.
    pub async fn upload(
        &self,
        host: &str,
        source: &UploadSource,
        dest: &str,
        mode: u32,
        owner: Option<&str>,
    ) -> Result<UploadOutcome, HostError> {
        let item = UploadItem {
            source: source.clone(),
            dest: dest.to_string(),
            mode,
            owner: owner.map(String::from),
        };
        Ok(self.upload_many(host, std::slice::from_ref(&item)).await?[0])
    }

    /// Several files to one host: one round trip reads every far hash, then one channel per
    /// changed file streams it.
    pub async fn upload_many(
        &self,
        host: &str,
        items: &[UploadItem],
    ) -> Result<Vec<UploadOutcome>, HostError> {
        let c = self.conn(host, "upload")?;
        let mut local = Vec::with_capacity(items.len());
        for it in items {
            let h = self.local_hash(&it.source).await.map_err(|e| {
                self.err(
                    c,
                    &format!("upload {}", it.dest),
                    ErrorKind::Local,
                    format!("cannot read {}: {e}", it.source.describe()),
                )
            })?;
            local.push(h);
        }
        let dests: Vec<&str> = items.iter().map(|i| i.dest.as_str()).collect();
        let stat = self
            .run(
                host,
                &shell::stat_script(&dests, shell::HASH_CACHE_DIR),
                ExecOpts {
                    sudo: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| {
                e.with_step(&format!("upload: read far hashes of {}", dests.join(", ")))
            })?;
        let far: Vec<&str> = stat.stdout.lines().collect();
        let mut outcomes = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let (size, sha) = &local[i];
            let step = format!("upload {}", it.dest);
            let far = far.get(i).copied().unwrap_or("-");
            let mut parts = far.split(' ');
            let (far_sha, far_mode, far_owner) = (parts.next(), parts.next(), parts.next());
            if far_sha == Some(sha.as_str()) {
                let mode_ok = far_mode == Some(format!("{:o}", it.mode & 0o7777).as_str());
                let owner_ok = match (&it.owner, far_owner) {
                    (None, _) => true,
                    (Some(o), Some(f)) if o.contains(':') => o == f,
                    (Some(o), Some(f)) => f.split(':').next() == Some(o.as_str()),
                    (Some(_), None) => false,
                };
                if !(mode_ok && owner_ok) {
                    self.run(
                        host,
                        &shell::fix_attrs_script(&it.dest, it.mode, it.owner.as_deref()),
                        ExecOpts::root(),
                    )
                    .await
                    .map_err(|e| e.with_step(&step))?;
                }
                self.inner.progress.log(
                    host,
                    &format!("{step}: same sha256 on the host, {size} bytes skipped"),
                );
                tracing::debug!(host, dest = %it.dest, bytes_skipped = size, "upload skipped: same sha256");
                outcomes.push(UploadOutcome {
                    bytes_sent: 0,
                    bytes_skipped: *size,
                    skipped: true,
                });
                continue;
            }
            // What travels: the file, or its zstd or gzip stream (expanded and checked on
            // the host).
            let plain = || {
                shell::upload_script(
                    &it.dest,
                    sha,
                    *size,
                    it.mode,
                    it.owner.as_deref(),
                    shell::HASH_CACHE_DIR,
                )
            };
            let (script, stream, packing) = match &it.source {
                UploadSource::Packed { gz, zst, .. } => {
                    let packing = if self.has_zstd(host).await? {
                        shell::Packing::Zstd
                    } else {
                        shell::Packing::Gzip
                    };
                    let script = shell::upload_packed_script(
                        &it.dest,
                        sha,
                        *size,
                        it.mode,
                        it.owner.as_deref(),
                        shell::HASH_CACHE_DIR,
                        packing,
                    );
                    let stream = match packing {
                        shell::Packing::Zstd => zst,
                        shell::Packing::Gzip => gz,
                    };
                    (script, Input::File(stream), Some(packing))
                }
                UploadSource::Bytes(b) => (plain(), Input::Bytes(b), None),
                UploadSource::Path(p) => (plain(), Input::File(p), None),
            };
            let sent = match stream {
                Input::Bytes(b) => b.len() as u64,
                Input::File(p) => tokio::fs::metadata(p).await.map(|m| m.len()).map_err(|e| {
                    self.err(
                        c,
                        &step,
                        ErrorKind::Local,
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?,
            };
            self.inner.progress.host(
                host,
                &match packing {
                    None => format!("{step} ({size} bytes)"),
                    Some(p) => format!("{step} ({size} bytes as {sent} {})", p.program()),
                },
            );
            let out = self
                .exec_with_input(host, &script, &ExecOpts::root(), Some(stream))
                .await
                .map_err(|e| e.with_step(&step))?;
            if !out.success() {
                let kind = if out.status == 3 {
                    ErrorKind::Upload
                } else {
                    ErrorKind::Command
                };
                return Err(self
                    .err(c, &step, kind, exit_text(&out))
                    .with_stderr(out.stderr));
            }
            tracing::debug!(host, dest = %it.dest, bytes = size, bytes_sent = sent, "uploaded");
            crate::console::host_sent(host, sent);
            outcomes.push(UploadOutcome {
                bytes_sent: sent,
                bytes_skipped: 0,
                skipped: false,
            });
        }
        Ok(outcomes)
    }

    /// Whether `host` has `zstd` to expand a packed upload with: asked once per run.
    async fn has_zstd(&self, host: &str) -> Result<bool, HostError> {
        let c = self.conn(host, "upload")?;
        c.has_zstd
            .get_or_try_init(|| async {
                let o = self
                    .exec(host, "command -v zstd >/dev/null 2>&1", ExecOpts::default())
                    .await
                    .map_err(|e| e.with_step("upload: is zstd there to expand streams"))?;
                Ok(o.success())
            })
            .await
            .copied()
    }

    /// Copies the far file `remote` (read as root) to `local`, byte for byte: streamed into
    /// `local` (created 0600, replaced), then its sha256 compared with the far one. Returns
    /// (bytes, sha256).
    pub async fn download(
        &self,
        host: &str,
        remote: &str,
        local: &std::path::Path,
    ) -> Result<(u64, String), HostError> {
        let step = format!("download {remote}");
        let c = self.conn(host, &step)?;
        let far = self
            .run(
                host,
                // From stdin: the output names no file, so no name can change its format.
                shell::Script::new(concat!(crate::sha256_fn!(), r#"sha256 "$1""#)).arg(remote),
                ExecOpts::root(),
            )
            .await
            .map_err(|e| e.with_step(&step))?;
        let far_sha = far
            .stdout
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let local_err = |e: std::io::Error| {
            self.err(
                c,
                &step,
                ErrorKind::Local,
                format!("{}: {e}", local.display()),
            )
        };
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(local)
                .map_err(local_err)?;
            tokio::fs::File::from_std(f)
        };
        let cmd = shell::as_root(
            &Cmd::new("cat").arg("--").arg(remote).into(),
            &c.target.user,
        );
        let _channel = c.channels.acquire().await;
        let session = c.session.lock().await.clone();
        let ch = session
            .channel_open_session()
            .await
            .map_err(|e| self.err(c, &step, ErrorKind::Connect, e.to_string()))?;
        ch.exec(true, cmd.as_str())
            .await
            .map_err(|e| self.err(c, &step, ErrorKind::Connect, e.to_string()))?;
        let (mut rd, _wr) = ch.split();
        let (mut hasher, mut n, mut stderr, mut status) = (Sha256::new(), 0u64, Vec::new(), None);
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    use tokio::io::AsyncWriteExt;
                    hasher.update(&data);
                    n += data.len() as u64;
                    file.write_all(&data).await.map_err(local_err)?;
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        file.sync_all().await.map_err(local_err)?;
        let sha = hex::encode(hasher.finalize());
        if status != Some(0) {
            return Err(self
                .err(
                    c,
                    &step,
                    ErrorKind::Command,
                    format!("cat exited {status:?}"),
                )
                .with_stderr(String::from_utf8_lossy(&stderr).into_owned()));
        }
        if sha != far_sha {
            return Err(self.err(
                c,
                &step,
                ErrorKind::Upload,
                format!("{n} bytes received with sha256 {sha}, the host has {far_sha}"),
            ));
        }
        self.inner
            .progress
            .log(host, &format!("{step}: {n} bytes, sha256 {sha}"));
        Ok((n, sha))
    }

    /// Runs `f` on each host with at most `concurrency` at once and returns one result per host,
    /// in the order given. A failing host does not stop the others: they finish the step.
    /// Hosts that did not connect get their connection error.
    pub async fn fan_out<T, F, Fut>(
        &self,
        step: &str,
        hosts: &[String],
        concurrency: usize,
        f: F,
    ) -> Vec<HostResult<T>>
    where
        T: Send + 'static,
        F: Fn(String, Pool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, HostError>> + Send + 'static,
    {
        let progress = &self.inner.progress;
        progress.step(step, hosts.len());
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let f = Arc::new(f);
        let mut handles = Vec::with_capacity(hosts.len());
        for h in hosts {
            if let Err(e) = self.conn(h, step) {
                handles.push((h.clone(), Err(e)));
                continue;
            }
            let (sem, f, pool, host, step) = (
                sem.clone(),
                f.clone(),
                self.clone(),
                h.clone(),
                step.to_string(),
            );
            handles.push((
                h.clone(),
                Ok(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    pool.inner.progress.host(&host, &format!("{step}…"));
                    let t0 = Instant::now();
                    let r = f(host.clone(), pool.clone()).await;
                    let r = r.map_err(|mut e| {
                        if e.step.is_empty() {
                            e.step = step.clone();
                        } else if !e.step.starts_with(&step) {
                            e.step = format!("{step}: {}", e.step);
                        }
                        e
                    });
                    match &r {
                        Ok(_) => pool.inner.progress.done(
                            &host,
                            &format!("{step}: ok ({:.1}s)", t0.elapsed().as_secs_f64()),
                        ),
                        Err(e) => pool.inner.progress.done(&host, &format!("FAILED: {e}")),
                    }
                    r
                })),
            ));
        }
        let mut out = Vec::with_capacity(handles.len());
        for (host, h) in handles {
            let result = match h {
                Err(e) => Err(e),
                Ok(j) => match j.await {
                    Ok(r) => r,
                    Err(e) => {
                        let endpoint = self.target(&host).map(|t| t.describe()).unwrap_or_default();
                        Err(HostError::new(
                            &host,
                            &endpoint,
                            step,
                            ErrorKind::Local,
                            format!("the step panicked: {e}"),
                        ))
                    }
                },
            };
            out.push(HostResult { host, result });
        }
        out
    }

    /// Closes every session (bastions last) and clears the progress bars.
    pub async fn close(&self) {
        for c in self.inner.hosts.values() {
            let s = c.session.lock().await.clone();
            let _ = s
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
        self.inner.progress.finish();
    }
}

async fn connect_retrying(
    t: &Target,
    keys: &KeyStore,
    settings: &SessionSettings,
    bastion: Option<&Session>,
    retries: u32,
) -> Result<session::Connected, HostError> {
    let mut attempt = 0;
    loop {
        match session::connect(t, keys, settings, bastion).await {
            Err(e) if e.kind == ErrorKind::Connect && attempt < retries => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300 * attempt as u64)).await;
            }
            r => return r,
        }
    }
}

fn exit_text(out: &ExecOutput) -> String {
    match &out.signal {
        Some(s) => format!("killed by signal {s}"),
        None => format!("exit status {}", out.status),
    }
}

/// A command shortened for messages (first line, at most 80 chars).
fn short(cmd: &str) -> String {
    let first = cmd.lines().next().unwrap_or_default();
    let mut s: String = first.chars().take(80).collect();
    if s.len() < cmd.len() {
        s.push('…');
    }
    s
}

/// Upload read size: one `data_bytes` call per chunk.
const CHUNK: usize = 1 << 20;

/// Opens a channel, runs `cmd`, streams `input` to its stdin (then EOF) and collects output.
async fn run_channel(
    s: &Session,
    cmd: &str,
    input: Option<Input<'_>>,
) -> Result<ExecOutput, ChanError> {
    let ch = s
        .channel_open_session()
        .await
        .map_err(|e| ChanError::NotStarted(e.to_string()))?;
    ch.exec(true, cmd)
        .await
        .map_err(|e| ChanError::NotStarted(e.to_string()))?;
    let (mut rd, wr) = ch.split();
    let writer = async {
        let r: Result<(), String> = match input {
            None => Ok(()),
            // Whole chunks through `data_bytes`: russh cuts them into packets without copying.
            // (`data(reader)` goes through tokio::io::copy's 8 KiB buffer: 4x the packets of
            // OpenSSH's 32 KiB, half the throughput.)
            Some(Input::Bytes(b)) => wr.data_bytes(b.to_vec()).await.map_err(|e| e.to_string()),
            Some(Input::File(p)) => match tokio::fs::File::open(p).await {
                Ok(mut f) => {
                    use tokio::io::AsyncReadExt;
                    let mut r = Ok(());
                    loop {
                        let mut buf = Vec::with_capacity(CHUNK);
                        match (&mut f).take(CHUNK as u64).read_to_end(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {
                                if let Err(e) = wr.data_bytes(buf).await {
                                    r = Err(e.to_string());
                                    break;
                                }
                            }
                            Err(e) => {
                                r = Err(format!("cannot read {}: {e}", p.display()));
                                break;
                            }
                        }
                    }
                    r
                }
                Err(e) => Err(format!("cannot read {}: {e}", p.display())),
            },
        };
        let _ = wr.eof().await;
        r
    };
    let reader = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (mut status, mut signal) = (None, None);
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    signal = Some(format!("{signal_name:?}"))
                }
                _ => {}
            }
        }
        (stdout, stderr, status, signal)
    };
    // The far side may exit without reading all its input (e.g. it failed early): once the
    // channel closes, stop waiting for window space that will never come.
    tokio::pin!(writer);
    tokio::pin!(reader);
    let (w, (stdout, stderr, status, signal)) = tokio::select! {
        w = &mut writer => (w, reader.await),
        r = &mut reader => {
            let w = tokio::time::timeout(Duration::from_millis(200), &mut writer)
                .await
                .unwrap_or_else(|_| Err("the far side closed before reading all its input".into()));
            (w, r)
        }
    };
    let (stdout, mut stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    match (status, signal) {
        (Some(st), sig) => {
            if let Err(e) = w
                && st == 0
            {
                stderr.push_str(&format!("\nclusterctl: writing stdin failed: {e}"));
            }
            Ok(ExecOutput {
                stdout,
                stderr,
                status: st,
                signal: sig,
            })
        }
        (None, Some(sig)) => Ok(ExecOutput {
            stdout,
            stderr,
            status: 255,
            signal: Some(sig),
        }),
        (None, None) => Err(ChanError::Broken(match w {
            Err(e) => e,
            Ok(()) => "the channel closed without an exit status".into(),
        })),
    }
}
