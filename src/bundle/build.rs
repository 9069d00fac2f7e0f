//! `bundle build`: fetch every item (HTTP(S) with resume, or a local file), verify its sha256
//! while it streams, keep verified downloads in a content-addressed cache, and pack the bundle.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::archive;
use super::manifest::{Item, Kind, Manifest, Published, Stage};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub manifest: PathBuf,
    pub out: PathBuf,
    /// Verified downloads, as `<cache>/sha256/<hex>`; partial ones as `<hex>.partial`.
    pub cache: PathBuf,
    pub key: Option<PathBuf>,
    /// Attempts per item after a dropped connection (each resumes where the last stopped).
    pub attempts: u32,
    /// Print one plain line per item (when no progress bar can be drawn).
    pub quiet: bool,
    /// Build even with items that carry `hashMissing`: each is downloaded once, its sha256
    /// computed and written into the packed manifest with `hashSource: pinned on first
    /// download ...`. Trust-on-first-use, so it is never the default.
    pub pin_on_first_download: bool,
    /// Store .debs as published, with their xz members compressed. By default they are
    /// stored expanded (`bundle::deb`), which saves each host most of `dpkg -i`'s CPU.
    pub debs_as_published: bool,
}

impl BuildOptions {
    pub fn default_cache() -> PathBuf {
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("clusterctl/downloads");
        }
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache/clusterctl/downloads"),
            None => PathBuf::from("/var/cache/clusterctl/downloads"),
        }
    }
}

/// A downloaded or local file whose bytes are not the ones the manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashMismatch {
    pub item: String,
    pub url: String,
    pub expected: String,
    pub actual: String,
    pub size: u64,
}

impl fmt::Display for HashMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "item `{}` from {}: sha256 mismatch: expected {}, actual {} ({} bytes); the file was discarded and no bundle was written",
            self.item, self.url, self.expected, self.actual, self.size
        )
    }
}

impl std::error::Error for HashMismatch {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Cached,
    Downloaded,
    Local,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    pub item: String,
    pub sha256: String,
    pub size: u64,
    pub origin: Origin,
    /// HTTP requests made (more than 1 = resumed).
    pub requests: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    pub out: PathBuf,
    pub bytes: u64,
    pub manifest_sha256: String,
    pub signed: bool,
    pub items: Vec<Fetched>,
}

fn client() -> anyhow::Result<reqwest::Client> {
    // Crate notes #7: a ring-only rustls needs its provider installed before the first request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("clusterctl/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn bar(item: &Item, len: Option<u64>) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(item.label());
    pb
}

/// Builds the bundle. On any failure no bundle (and no temporary archive) is left at `out`.
pub async fn build(o: &BuildOptions) -> anyhow::Result<BuildReport> {
    let text = std::fs::read_to_string(&o.manifest)
        .with_context(|| format!("cannot read {}", o.manifest.display()))?;
    let mut m = Manifest::from_yaml(&text).with_context(|| format!("{}", o.manifest.display()))?;
    m.check(Stage::Input).map_err(|p| {
        anyhow::anyhow!("{}: the manifest has problems:\n{p}", o.manifest.display())
    })?;
    let refused: Vec<String> = m
        .items
        .iter()
        .filter_map(|it| {
            it.hash_missing
                .as_ref()
                .map(|why| format!("  - {}: {why}", it.label()))
        })
        .collect();
    if !refused.is_empty() && !o.pin_on_first_download {
        bail!(
            "{}: refusing to build: {} item(s) have no published sha256:\n{}\n  fix: find the published hash, or remove the item, or pass --pin-on-first-download to trust what is downloaded now (recorded in the bundle's manifest as pinned on first download)",
            o.manifest.display(),
            refused.len(),
            refused.join("\n")
        );
    }
    let key = o
        .key
        .as_deref()
        .map(super::keys::load_signing)
        .transpose()?;
    let blobs_dir = o.cache.join("sha256");
    std::fs::create_dir_all(&blobs_dir)
        .with_context(|| format!("cannot create cache {}", blobs_dir.display()))?;
    let http = client()?;

    let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut fetched = Vec::new();
    for it in &mut m.items {
        if let Some(why) = it.hash_missing.take() {
            // Only reached with --pin-on-first-download (refused above otherwise).
            let sha = pin(&http, it, &blobs_dir, o).await?;
            if !o.quiet {
                eprintln!(
                    "  !! {}: no published sha256; pinned the downloaded one: {sha}",
                    it.label()
                );
            }
            it.hash_source = format!(
                "pinned on first download ({}) from {}: no published sha256 was available ({why})",
                chrono_date(),
                it.url
            );
            it.sha256 = Some(sha);
        }
        let sha = it.sha256.clone().expect("checked");
        let f = fetch(&http, it, &blobs_dir, o).await?;
        if let Some(s) = it.size
            && s != f.1.size
        {
            bail!(
                "item `{}`: size {} differs from the manifest's {s}",
                it.label(),
                f.1.size
            );
        }
        it.size = Some(f.1.size);
        if !o.quiet {
            let how = match f.1.origin {
                Origin::Cached => "cached".to_string(),
                Origin::Local => "local file".to_string(),
                Origin::Downloaded if f.1.requests > 1 => {
                    format!("downloaded, resumed {}x", f.1.requests - 1)
                }
                Origin::Downloaded => "downloaded".to_string(),
            };
            eprintln!(
                "  ok {:32} {:>12} bytes  sha256 {}…  ({how})",
                it.label(),
                f.1.size,
                &sha[..16]
            );
        }
        // What the bundle stores: the verified download, or a .deb with its xz members expanded.
        let mut blob = (sha, f.0);
        if it.kind == Kind::Deb && !o.debs_as_published {
            let (src, dir) = (blob.1.clone(), blobs_dir.clone());
            let expanded =
                tokio::task::spawn_blocking(move || super::deb::expand_xz_members(&src, &dir))
                    .await?
                    .with_context(|| format!("item `{}`", it.label()))?;
            if let Some(e) = expanded {
                if !o.quiet {
                    eprintln!(
                        "     {:32} {:>12} bytes  sha256 {}…  (stored with {} expanded)",
                        "",
                        e.size,
                        &e.sha256[..16],
                        e.members.join(", ")
                    );
                }
                it.published = Some(Published {
                    sha256: blob.0,
                    size: f.1.size,
                    expanded: e.members,
                });
                it.sha256 = Some(e.sha256.clone());
                it.size = Some(e.size);
                blob = (e.sha256, e.path);
            }
        }
        sources.insert(blob.0, blob.1);
        fetched.push(f.1);
    }
    let yaml = m.to_yaml()?;
    let sig = key.as_ref().map(|k| super::keys::sign(k, yaml.as_bytes()));
    let order: Vec<String> = m
        .items
        .iter()
        .map(|i| i.sha256.clone().expect("checked"))
        .collect();
    let out = o.out.clone();
    let yaml2 = yaml.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        archive::pack(&out, yaml2.as_bytes(), sig.as_deref(), &sources, &order)
    })
    .await??;
    Ok(BuildReport {
        out: o.out.clone(),
        bytes,
        manifest_sha256: hex::encode(Sha256::digest(yaml.as_bytes())),
        signed: key.is_some(),
        items: fetched,
    })
}

/// Today's UTC date (YYYY-MM-DD), for the record of a pinned hash.
fn chrono_date() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Downloads an item that has no published hash (or hashes its local file) and returns the
/// sha256 of what arrived; the bytes land in the cache under that hash, so the normal fetch
/// that follows finds them there.
async fn pin(
    http: &reqwest::Client,
    it: &Item,
    blobs: &Path,
    o: &BuildOptions,
) -> anyhow::Result<String> {
    if let Some(rest) = it.url.strip_prefix("file://") {
        return Ok(hash_blocking(Path::new(rest)).await?.0);
    }
    // Named by the URL's hash: a re-run resumes the same partial file.
    let partial = blobs.join(format!(
        "pin-{}.partial",
        hex::encode(Sha256::digest(it.url.as_bytes()))
    ));
    let mut last_err: Option<anyhow::Error> = None;
    for attempt in 1..=o.attempts.max(1) {
        match download_once(http, it, &partial).await {
            Ok(Step::Complete) => {
                let (sha, _) = hash_blocking(&partial).await?;
                std::fs::rename(&partial, blobs.join(&sha))?;
                return Ok(sha);
            }
            Ok(Step::Fatal(e)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            Err(e) => {
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
        .with_context(|| format!("item `{}`: download from {} failed", it.label(), it.url))
}

/// sha256 and size of `path`, computed off the async threads.
async fn hash_blocking(path: &Path) -> anyhow::Result<(String, u64)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || archive::hash_file(&p)).await?
}

/// Ok(size) when `path` holds the item's bytes; else the mismatch, naming both hashes.
async fn hash_matching(path: &Path, it: &Item, sha: &str) -> anyhow::Result<u64> {
    let (got, size) = hash_blocking(path).await?;
    if got != sha {
        return Err(HashMismatch {
            item: it.label(),
            url: it.url.clone(),
            expected: sha.to_string(),
            actual: got,
            size,
        }
        .into());
    }
    Ok(size)
}

/// Returns the path holding the verified bytes.
async fn fetch(
    http: &reqwest::Client,
    it: &Item,
    blobs: &Path,
    o: &BuildOptions,
) -> anyhow::Result<(PathBuf, Fetched)> {
    let sha = it.sha256.clone().expect("checked");
    let done = |path: PathBuf, size: u64, origin: Origin, requests: u32| {
        (
            path,
            Fetched {
                item: it.label(),
                sha256: sha.clone(),
                size,
                origin,
                requests,
            },
        )
    };
    if let Some(rest) = it.url.strip_prefix("file://") {
        let path = PathBuf::from(rest);
        let size = hash_matching(&path, it, &sha).await?;
        return Ok(done(path, size, Origin::Local, 0));
    }
    let final_path = blobs.join(&sha);
    if final_path.exists() {
        // A cache entry is trusted only after re-hashing it; a damaged one is replaced.
        let (got, size) = hash_blocking(&final_path).await?;
        if got == sha && it.size.is_none_or(|s| s == size) {
            return Ok(done(final_path, size, Origin::Cached, 0));
        }
        if !o.quiet {
            eprintln!(
                "  .. {}: cached copy is damaged (sha256 {got}); downloading again",
                it.label()
            );
        }
        std::fs::remove_file(&final_path)?;
    }
    let partial = blobs.join(format!("{sha}.partial"));
    let mut requests = 0u32;
    let mut last_err: Option<anyhow::Error> = None;
    for attempt in 1..=o.attempts.max(1) {
        requests += 1;
        match download_once(http, it, &partial).await {
            Ok(Step::Complete) => {
                let size = match hash_matching(&partial, it, &sha).await {
                    Ok(size) => size,
                    Err(e) => {
                        let _ = std::fs::remove_file(&partial);
                        return Err(e);
                    }
                };
                std::fs::rename(&partial, &final_path)?;
                return Ok(done(final_path, size, Origin::Downloaded, requests));
            }
            Ok(Step::Fatal(e)) => {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            Err(e) => {
                if !o.quiet {
                    eprintln!(
                        "  .. {}: attempt {attempt} interrupted: {e:#}; resuming",
                        it.label()
                    );
                }
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
        .with_context(|| format!("item `{}`: download from {} failed after {} attempts (the partial file is kept for the next run)", it.label(), it.url, o.attempts.max(1)))
}

enum Step {
    Complete,
    Fatal(anyhow::Error),
}

/// One request: resumes from the partial file's length with a Range header. Err = retryable.
async fn download_once(http: &reqwest::Client, it: &Item, partial: &Path) -> anyhow::Result<Step> {
    let have = tokio::fs::metadata(partial)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if let Some(size) = it.size {
        if have == size {
            return Ok(Step::Complete);
        }
        if have > size {
            tokio::fs::remove_file(partial).await?;
            return Err(anyhow::anyhow!(
                "partial file larger than the item; starting over"
            ));
        }
    }
    let mut req = http.get(&it.url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Err(anyhow::Error::new(e).context("request failed")),
    };
    let status = resp.status();
    let append = match status.as_u16() {
        206 => {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                tokio::fs::remove_file(partial).await.ok();
                return Err(anyhow::anyhow!(
                    "server answered an unexpected range; starting over"
                ));
            }
            true
        }
        200 => false,
        416 if have > 0 => {
            // Nothing left to send: the partial file may already be complete.
            return Ok(Step::Complete);
        }
        s if (500..600).contains(&s) || s == 429 || s == 408 => {
            return Err(anyhow::anyhow!("HTTP {status} from {}", it.url));
        }
        _ => {
            return Ok(Step::Fatal(anyhow::anyhow!(
                "item `{}`: HTTP {status} from {}",
                it.label(),
                it.url
            )));
        }
    };
    let total = if append {
        it.size
    } else {
        it.size.or(resp.content_length())
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .await?;
    let mut written = if append { have } else { 0 };
    let pb = bar(it, total);
    pb.set_position(written);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                file.flush().await?;
                pb.abandon();
                return Err(anyhow::Error::new(e)
                    .context(format!("connection dropped after {written} bytes")));
            }
        };
        written += chunk.len() as u64;
        if let Some(size) = it.size
            && written > size
        {
            drop(file);
            pb.abandon();
            return Ok(Step::Fatal(anyhow::anyhow!(
                "item `{}` from {}: more than the manifest's {size} bytes; the file was discarded and no bundle was written",
                it.label(),
                it.url
            )));
        }
        file.write_all(&chunk).await?;
        pb.set_position(written);
    }
    file.flush().await?;
    file.sync_all().await?;
    pb.finish_and_clear();
    if let Some(size) = it.size
        && written < size
    {
        return Err(anyhow::anyhow!(
            "transfer ended after {written} of {size} bytes"
        ));
    }
    Ok(Step::Complete)
}

/// Prints a build report as plain text.
pub fn print_report(r: &BuildReport, w: &mut impl Write) -> std::io::Result<()> {
    let dl = r
        .items
        .iter()
        .filter(|f| f.origin == Origin::Downloaded)
        .count();
    let cached = r
        .items
        .iter()
        .filter(|f| f.origin == Origin::Cached)
        .count();
    let local = r.items.iter().filter(|f| f.origin == Origin::Local).count();
    writeln!(
        w,
        "{}: {} items ({dl} downloaded, {cached} from cache, {local} local), {} bytes, manifest sha256 {}{}",
        r.out.display(),
        r.items.len(),
        r.bytes,
        r.manifest_sha256,
        if r.signed { ", signed" } else { "" }
    )
}
