//! The bundle file: a zstd-compressed tar whose first entry is `manifest.yaml`, then optionally
//! `manifest.yaml.sig` (ed25519 over the exact manifest bytes), then one entry per distinct blob
//! at `blobs/sha256/<hex>`. Everything here streams: no temporary extraction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use super::manifest::{Item, Manifest, Stage, blob_path};

pub const MANIFEST: &str = "manifest.yaml";
pub const SIGNATURE: &str = "manifest.yaml.sig";
const ZSTD_LEVEL: i32 = 3;
const BUF: usize = 1 << 20;

pub use crate::hashing::{HashingReader, hash_file};

fn header(path: &str, size: u64, mode: u32) -> anyhow::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes a bundle to `out` atomically: a temporary file in the same directory, renamed at the
/// end. `blobs` maps sha256 -> file holding those bytes; each blob is re-hashed as it is packed
/// and a mismatch aborts (nothing is left behind).
pub fn pack(
    out: &Path,
    manifest_yaml: &[u8],
    signature: Option<&[u8]>,
    blobs: &BTreeMap<String, PathBuf>,
    order: &[String],
) -> anyhow::Result<u64> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let fname = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{fname}."))
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    {
        let enc = zstd::Encoder::new(BufWriter::with_capacity(BUF, tmp.as_file()), ZSTD_LEVEL)?;
        let mut tw = tar::Builder::new(enc);
        tw.append(
            &header(MANIFEST, manifest_yaml.len() as u64, 0o644)?,
            manifest_yaml,
        )?;
        if let Some(sig) = signature {
            tw.append(&header(SIGNATURE, sig.len() as u64, 0o644)?, sig)?;
        }
        let mut done = BTreeSet::new();
        for sha in order {
            if !done.insert(sha.clone()) {
                continue;
            }
            let src = blobs
                .get(sha)
                .with_context(|| format!("no source for blob {sha}"))?;
            let size = std::fs::metadata(src)
                .with_context(|| format!("cannot stat {}", src.display()))?
                .len();
            let mut r = HashingReader::new(BufReader::with_capacity(BUF, File::open(src)?));
            tw.append(&header(&blob_path(sha), size, 0o644)?, &mut r)
                .with_context(|| format!("cannot pack {}", src.display()))?;
            let (got, n) = r.finish();
            if got != *sha || n != size {
                bail!(
                    "{} changed while packing: sha256 {got} ({n} bytes), expected {sha}",
                    src.display()
                );
            }
        }
        let enc = tw.into_inner()?;
        let mut w = enc.finish()?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    let len = tmp.as_file().metadata()?.len();
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(len)
}

fn open_tar(path: &Path) -> anyhow::Result<tar::Archive<zstd::Decoder<'static, BufReader<File>>>> {
    let f = File::open(path).with_context(|| format!("cannot open bundle {}", path.display()))?;
    let dec =
        zstd::Decoder::new(f).with_context(|| format!("{}: not a zstd stream", path.display()))?;
    Ok(tar::Archive::new(dec))
}

/// The bytes of the archive's first entry, which must be the manifest.
fn manifest_entry(
    entries: &mut tar::Entries<'_, impl Read>,
    path: &Path,
) -> anyhow::Result<Vec<u8>> {
    let mut first = entries
        .next()
        .with_context(|| format!("{}: empty archive", path.display()))??;
    if entry_path(&first)? != MANIFEST {
        bail!(
            "{}: the first entry is `{}`, expected {MANIFEST}: not a clusterctl bundle",
            path.display(),
            entry_path(&first)?
        );
    }
    read_all(&mut first, MANIFEST, 64 << 20)
}

fn entry_path(e: &tar::Entry<'_, impl Read>) -> anyhow::Result<String> {
    Ok(e.path()?.to_string_lossy().into_owned())
}

/// The head of a bundle: its manifest (exact bytes and parsed) and signature, if any.
#[derive(Debug, Clone)]
pub struct Head {
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub signature: Option<Vec<u8>>,
}

impl Head {
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.manifest_bytes))
    }
}

fn read_all(e: &mut impl Read, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    e.take(limit + 1).read_to_end(&mut v)?;
    if v.len() as u64 > limit {
        bail!("{what} is larger than {limit} bytes");
    }
    Ok(v)
}

fn parse_manifest(bytes: &[u8], path: &Path) -> anyhow::Result<Manifest> {
    let text = std::str::from_utf8(bytes)
        .with_context(|| format!("{}: manifest.yaml is not UTF-8", path.display()))?;
    let m = Manifest::from_yaml(text)
        .with_context(|| format!("{}: bad manifest.yaml", path.display()))?;
    m.check(Stage::Packed)
        .map_err(|p| anyhow::anyhow!("{}: manifest.yaml has problems:\n{p}", path.display()))?;
    Ok(m)
}

/// Reads only the first entries (manifest and signature); cheap even for a large bundle.
pub fn read_head(path: &Path) -> anyhow::Result<Head> {
    let mut ar = open_tar(path)?;
    let mut entries = ar.entries()?;
    let manifest_bytes = manifest_entry(&mut entries, path)?;
    let manifest = parse_manifest(&manifest_bytes, path)?;
    let mut signature = None;
    if let Some(e) = entries.next() {
        let mut e = e?;
        if entry_path(&e)? == SIGNATURE {
            signature = Some(read_all(&mut e, SIGNATURE, 4096)?);
        }
    }
    Ok(Head {
        manifest_bytes,
        manifest,
        signature,
    })
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub bundle: PathBuf,
    pub name: String,
    pub version: String,
    pub manifest_sha256: String,
    pub items: usize,
    pub blobs: usize,
    /// Uncompressed blob bytes hashed.
    pub bytes: u64,
    /// Size of the bundle file.
    pub file_bytes: u64,
    pub seconds: f64,
    /// `verified` (against the given key), `bad` (it does not verify: a problem), `unsigned`
    /// (no signature), or `not-checked` (signed, but no key was given to check it with).
    pub signature: String,
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Every hash matched and, if a key was given, the signature verified.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
    /// Intact and its signature verified: someone vouches for every byte.
    pub fn authenticated(&self) -> bool {
        self.ok() && self.signature == "verified"
    }
    pub fn file_mb_per_s(&self) -> f64 {
        self.file_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
    pub fn data_mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

pub fn check_signature(key: &VerifyingKey, manifest: &[u8], sig: &[u8]) -> Result<(), String> {
    let sig: [u8; 64] = sig.try_into().map_err(|_| {
        format!(
            "{SIGNATURE} is {} bytes, an ed25519 signature is 64",
            sig.len()
        )
    })?;
    key.verify_strict(manifest, &Signature::from_bytes(&sig))
        .map_err(|_| {
            "the signature does not match the manifest and the given public key".to_string()
        })
}

/// Streams the whole bundle once (zstd decode + sha256 as it reads) and checks: the manifest is
/// first and valid; the signature, if `key` is given (required then); every blob's content hash
/// equals its name and its size; every item's blob is present; nothing else is in the archive.
pub fn verify(path: &Path, key: Option<&VerifyingKey>) -> anyhow::Result<VerifyReport> {
    let start = Instant::now();
    let file_bytes = std::fs::metadata(path)
        .with_context(|| format!("cannot open bundle {}", path.display()))?
        .len();
    let mut ar = open_tar(path)?;
    let mut entries = ar.entries()?;
    let mut problems = Vec::new();

    let manifest_bytes = manifest_entry(&mut entries, path)?;
    let manifest = parse_manifest(&manifest_bytes, path)?;
    let manifest_sha256 = hex::encode(Sha256::digest(&manifest_bytes));

    // sha -> (expected size, labels of the items that use it)
    let mut wanted: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for it in &manifest.items {
        let sha = it.sha256.clone().expect("checked: packed");
        let size = it.size.expect("checked: packed");
        let w = wanted.entry(sha).or_insert((size, Vec::new()));
        if w.0 != size {
            problems.push(format!(
                "{}: size {size} differs from another item with the same sha256 ({})",
                it.label(),
                w.0
            ));
        }
        w.1.push(it.label());
    }

    let mut signature: Option<Vec<u8>> = None;
    let mut seen = BTreeSet::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; BUF];
    for (idx, e) in entries.enumerate() {
        let mut e = e.with_context(|| format!("{}: corrupt archive", path.display()))?;
        let p = entry_path(&e)?;
        if p == SIGNATURE {
            if idx != 0 {
                problems.push(format!("{SIGNATURE} must directly follow {MANIFEST}"));
            }
            signature = Some(read_all(&mut e, SIGNATURE, 4096)?);
            continue;
        }
        let Some(sha) = p.strip_prefix("blobs/sha256/") else {
            problems.push(format!("unexpected entry `{p}`"));
            continue;
        };
        let sha = sha.to_string();
        let mut h = Sha256::new();
        let mut n = 0u64;
        loop {
            let k = e.read(&mut buf).with_context(|| {
                format!("{}: corrupt archive while reading {p}", path.display())
            })?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
        bytes += n;
        let got = hex::encode(h.finalize());
        match wanted.get(&sha) {
            None => problems.push(format!(
                "blob {sha} is not named by any item of the manifest"
            )),
            Some((size, labels)) => {
                let who = labels.join(", ");
                if got != sha {
                    problems.push(format!(
                        "{who}: sha256 mismatch: expected {sha}, actual {got}"
                    ));
                } else if n != *size {
                    problems.push(format!(
                        "{who}: size mismatch: manifest says {size}, blob has {n} bytes"
                    ));
                }
            }
        }
        if !seen.insert(sha.clone()) {
            problems.push(format!("blob {sha} appears twice"));
        }
    }
    for (sha, (_, labels)) in &wanted {
        if !seen.contains(sha) {
            problems.push(format!(
                "{}: blob {sha} is missing from the bundle",
                labels.join(", ")
            ));
        }
    }
    let signature_status = match (&signature, key) {
        (None, None) => "unsigned".to_string(),
        (None, Some(_)) => {
            problems.push(format!(
                "the bundle is unsigned (no {SIGNATURE}), but a public key was given"
            ));
            "unsigned".to_string()
        }
        (Some(_), None) => "not-checked".to_string(),
        (Some(sig), Some(k)) => match check_signature(k, &manifest_bytes, sig) {
            Ok(()) => "verified".to_string(),
            Err(e) => {
                problems.push(e);
                "bad".to_string()
            }
        },
    };
    Ok(VerifyReport {
        bundle: path.to_path_buf(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        manifest_sha256,
        items: manifest.items.len(),
        blobs: seen.len(),
        bytes,
        file_bytes,
        seconds: start.elapsed().as_secs_f64(),
        signature: signature_status,
        problems,
    })
}

/// Streams the bundle once and hands each wanted item's bytes to `f` as a reader. The bytes are
/// hashed on the way: if a blob does not match its name, the call fails after `f` returns (so
/// a consumer writing to a temporary file must only commit it when this returns Ok). Items that
/// share a blob are handed over once per item.
pub fn stream_items<F>(path: &Path, wanted: &[&Item], mut f: F) -> anyhow::Result<()>
where
    F: FnMut(&Item, &mut dyn Read) -> anyhow::Result<()>,
{
    let mut by_sha: BTreeMap<String, Vec<&Item>> = BTreeMap::new();
    for it in wanted {
        let sha = it
            .sha256
            .clone()
            .with_context(|| format!("{}: no sha256", it.label()))?;
        by_sha.entry(sha).or_default().push(it);
    }
    let mut ar = open_tar(path)?;
    let mut found = BTreeSet::new();
    for e in ar.entries()? {
        let mut e = e?;
        let p = entry_path(&e)?;
        let Some(sha) = p.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let Some(items) = by_sha.get(sha) else {
            continue;
        };
        let sha = sha.to_string();
        if items.len() == 1 {
            let mut r = HashingReader::new(&mut e);
            f(items[0], &mut r)?;
            io::copy(&mut r, &mut io::sink())?;
            let (got, _) = r.finish();
            if got != sha {
                bail!(
                    "{}: sha256 mismatch in the bundle: expected {sha}, actual {got}",
                    items[0].label()
                );
            }
        } else {
            let mut data = Vec::new();
            let mut r = HashingReader::new(&mut e);
            r.read_to_end(&mut data)?;
            let (got, _) = r.finish();
            if got != sha {
                bail!(
                    "{}: sha256 mismatch in the bundle: expected {sha}, actual {got}",
                    items[0].label()
                );
            }
            for it in items {
                f(it, &mut &data[..])?;
            }
        }
        found.insert(sha);
        if found.len() == by_sha.len() {
            break;
        }
    }
    for (sha, items) in &by_sha {
        if !found.contains(sha) {
            bail!(
                "{}: blob {sha} is not in {}",
                items[0].label(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The bytes of one item (verified against its sha256).
pub fn read_item(path: &Path, item: &Item) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream_items(path, &[item], |_, r| {
        r.read_to_end(&mut out)?;
        Ok(())
    })?;
    Ok(out)
}

/// Rewrites a bundle with `signature` as its second entry (replacing any previous one), copying
/// the blobs through as they are, atomically.
pub fn rewrite_with_signature(path: &Path, signature: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = tempfile::Builder::new()
        .prefix(".sign.")
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    {
        let mut ar = open_tar(path)?;
        let enc = zstd::Encoder::new(BufWriter::with_capacity(BUF, tmp.as_file()), ZSTD_LEVEL)?;
        let mut tw = tar::Builder::new(enc);
        for (i, e) in ar.entries()?.enumerate() {
            let mut e = e?;
            let p = entry_path(&e)?;
            if p == SIGNATURE {
                continue;
            }
            let h = e.header().clone();
            tw.append(&h, &mut e)?;
            if i == 0 {
                tw.append(
                    &header(SIGNATURE, signature.len() as u64, 0o644)?,
                    signature,
                )?;
            }
        }
        let mut w = tw.into_inner()?.finish()?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
