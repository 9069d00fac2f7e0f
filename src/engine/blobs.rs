//! Bytes for the files of a plan: rendered content, local files, and bundle items, which are
//! streamed out of the bundle once into the operator's content-addressed item cache
//! (`StateDir::item_cache`, shared by every cluster on the machine), each checked against its
//! sha256 on the way and again before each use (hashed again only when it may have changed:
//! [`still_hashes_to`]).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::executor::Blob;
use super::{Action, BundleRef, PhasePlan, Source};

pub struct Blobs {
    /// Item label (`name version`) -> cached file.
    bundle: BTreeMap<String, PathBuf>,
    /// Item label -> its (gzip, zstd) streams, for items that shrink by a tenth or more:
    /// those travel compressed and are expanded (and hash-checked) on the host.
    packed: BTreeMap<String, (PathBuf, PathBuf)>,
}

/// Items smaller than this travel as they are: a channel's round trip costs more than the bytes.
const PACK_MIN: u64 = 64 * 1024;

impl Blobs {
    /// Extracts every bundle item the plans use and is not cached yet.
    pub fn prepare(
        plans: &[PhasePlan],
        bundle: Option<&BundleRef>,
        cache: &Path,
    ) -> anyhow::Result<Blobs> {
        let mut wanted: Vec<String> = Vec::new();
        for p in plans {
            for h in &p.hosts {
                for a in &h.actions {
                    if let Action::File {
                        source: Source::Bundle { item },
                        ..
                    } = a
                        && !wanted.contains(item)
                    {
                        wanted.push(item.clone());
                    }
                }
            }
        }
        let mut map = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(Blobs {
                bundle: map,
                packed: BTreeMap::new(),
            });
        }
        let b = bundle.context("the plan uses bundle items but no bundle is set")?;
        let items: Vec<&crate::bundle::Item> = wanted
            .iter()
            .map(|l| {
                b.manifest
                    .items
                    .iter()
                    .find(|i| &i.label() == l)
                    .with_context(|| format!("{l} is not in the bundle"))
            })
            .collect::<anyhow::Result<_>>()?;
        std::fs::create_dir_all(cache)?;
        remove_dead_partials(cache)?;
        let mut missing = Vec::new();
        for it in &items {
            let sha = it
                .sha256
                .clone()
                .with_context(|| format!("{}: no sha256", it.label()))?;
            let path = cache.join(&sha);
            map.insert(it.label(), path.clone());
            // The signed manifest vouches for this hash, so the cached copy is checked against
            // it before use: a file changed in the cache since it was extracted is extracted again.
            if path.is_file() && !still_hashes_to(&path, &sha)? {
                eprintln!(
                    "warning: {}: cached copy {} no longer matches its sha256; extracting it again",
                    it.label(),
                    path.display()
                );
                std::fs::remove_file(&path)?;
            }
            if !path.is_file() {
                missing.push(*it);
            }
        }
        if !missing.is_empty() {
            // Extracted as a hidden `.<sha>` partial file first, committed once all are checked.
            let extracting = |sha: &str| partial_of(&cache.join(format!(".{sha}")));
            crate::bundle::stream_items(&b.path, &missing, |it, r| {
                let sha = it.sha256.as_deref().unwrap_or_default();
                let tmp = extracting(sha);
                let mut f = std::fs::File::create(&tmp)?;
                std::io::copy(r, &mut f)?;
                f.flush()?;
                Ok(())
            })
            .with_context(|| format!("extracting from {}", b.path.display()))?;
            // stream_items checked every hash: only now are the files committed.
            for it in missing {
                let sha = it.sha256.as_deref().unwrap_or_default();
                std::fs::rename(extracting(sha), cache.join(sha))?;
            }
        }
        let packed = pack_all(&items, cache)?;
        Ok(Blobs {
            bundle: map,
            packed,
        })
    }

    pub fn resolve(&self, s: &Source) -> anyhow::Result<Blob> {
        Ok(match s {
            Source::Rendered { content, .. } => Blob::Bytes(content.clone()),
            Source::Local { path } => {
                if !path.is_file() {
                    anyhow::bail!("{} does not exist", path.display());
                }
                Blob::Path(path.clone())
            }
            Source::Bundle { item } => {
                let path = self
                    .bundle
                    .get(item)
                    .with_context(|| format!("bundle item {item} was not extracted"))?
                    .clone();
                match self.packed.get(item) {
                    Some((gz, zst)) => Blob::Packed {
                        path,
                        gz: gz.clone(),
                        zst: zst.clone(),
                    },
                    None => Blob::Path(path),
                }
            }
        })
    }
}

/// Whether the cached file at `path` hashes to `sha`, hashing it only when it may have changed
/// since it last did. `<path>.verified` keeps the file's size, mtime, ctime, inode and device
/// from that check: any write, truncation, chmod or replacement changes one of them (ctime
/// cannot be set back from user space), and then the file is hashed again. Why: every run
/// checked the whole cache (~1.5 GB of items and streams for the lab's cluster: ~0.9 s of a
/// 5.0 s no-op re-run of 5 hosts, in which nothing is sent). The hosts check every byte they
/// receive against the signed manifest's sha256 in any case (`ssh::shell::upload_script`):
/// this check exists to repair the cache with a clear warning, not to protect the hosts.
fn still_hashes_to(path: &Path, sha: &str) -> anyhow::Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let stamp = {
        let mut p = path.as_os_str().to_owned();
        p.push(".verified");
        PathBuf::from(p)
    };
    let key = |m: &std::fs::Metadata| {
        format!(
            "{} {}.{} {}.{} {} {} {sha}\n",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            m.dev()
        )
    };
    let before = key(&std::fs::metadata(path)?);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == before) {
        return Ok(true);
    }
    if crate::hashing::hash_file(path)?.0 != sha {
        return Ok(false);
    }
    // Recorded only if the file did not change while it was hashed. A stamp that cannot be
    // written only costs the next run a hash.
    if key(&std::fs::metadata(path)?) == before {
        let tmp = partial_of(&stamp);
        if std::fs::write(&tmp, &before).is_ok() && std::fs::rename(&tmp, &stamp).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(true)
}

/// How long a partial file must have been left unwritten before a run may remove it.
const PARTIAL_STALE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes what killed runs left in the cache: every [`partial_of`] file (an item being
/// extracted, a stream being compressed, a stamp being written) whose process is gone from
/// this machine and which nothing has written for [`PARTIAL_STALE`]. Such a file is never
/// read, but an item's is up to ~110 MB and nothing else would remove it. A live run's file
/// is left alone (another cluster may be filling the shared cache now), and so is a recent
/// one: `$CLUSTERCTL_CACHE_DIR` may be shared with other machines, whose pids mean nothing
/// here, while their runs keep writing.
fn remove_dead_partials(cache: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(cache)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".partial"))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if super::lock::alive(pid) || idle.is_none_or(|i| i < PARTIAL_STALE) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            // Another run removed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("removing {}, left by a killed run", entry.path().display())
                });
            }
        }
    }
    Ok(())
}

/// Where this process writes `path` before `rename` commits it: `<path>.<pid>.partial`, named
/// by the process because two runs (two clusters) may fill the shared cache with the same file
/// at once; [`remove_dead_partials`] reads the pid back.
fn partial_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{}.partial", std::process::id()));
    PathBuf::from(p)
}

/// The gzip and zstd streams of each item worth compressing, made once into the cache beside
/// the item (`<sha>.gz`, `<sha>.zst`, each with `.sha256` beside it holding the stream's own
/// hash, checked before every use like the items themselves). The host takes the zstd stream
/// when it has `zstd` (it expands ~7x faster than gzip: 0.13 s against 0.99 s for the
/// 110 MB kube-apiserver here), else the gzip one. gzip level 1: a Kubernetes binary shrinks
/// to ~32 % (level 6: ~25 %, at 2.6x the time); zstd level 3: ~25 %, in less time than gzip's
/// level 1. Items already compressed (a .tgz, a .deb as published) do not shrink and travel as
/// they are; a .deb whose xz members `bundle build` expanded (`bundle::deb`) shrinks to ~35 %.
fn pack_all(
    items: &[&crate::bundle::Item],
    cache: &Path,
) -> anyhow::Result<BTreeMap<String, (PathBuf, PathBuf)>> {
    let todo: Vec<(String, PathBuf, Codec)> = items
        .iter()
        .filter(|it| it.size.unwrap_or(u64::MAX) >= PACK_MIN)
        .filter_map(|it| Some((it.label(), cache.join(it.sha256.as_deref()?))))
        .flat_map(|(l, p)| [Codec::Gzip, Codec::Zstd].map(|c| (l.clone(), p.clone(), c)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads =
        std::thread::available_parallelism().map_or(1, |n| n.get().min(todo.len().max(1)));
    let results: Vec<anyhow::Result<Vec<(String, Codec, PathBuf)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((label, path, codec)) = todo.get(i) else {
                            return Ok(out);
                        };
                        if let Some(stream) = pack_one(path, *codec)
                            .with_context(|| format!("compressing {label} ({})", path.display()))?
                        {
                            out.push((label.clone(), *codec, stream));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a compressing thread panicked"))
            .collect()
    });
    let mut gz = BTreeMap::new();
    let mut zst = BTreeMap::new();
    for r in results {
        for (label, codec, stream) in r? {
            match codec {
                Codec::Gzip => gz.insert(label, stream),
                Codec::Zstd => zst.insert(label, stream),
            };
        }
    }
    // Packed only when both streams are worth it, so every host gets a compressed form.
    Ok(gz
        .into_iter()
        .filter_map(|(label, g)| zst.remove(&label).map(|z| (label, (g, z))))
        .collect())
}

#[derive(Debug, Clone, Copy)]
enum Codec {
    Gzip,
    Zstd,
}

impl Codec {
    fn ext(self) -> &'static str {
        match self {
            Codec::Gzip => "gz",
            Codec::Zstd => "zst",
        }
    }
    fn compress(
        self,
        input: &mut impl std::io::Read,
        out: impl std::io::Write,
    ) -> std::io::Result<()> {
        match self {
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                std::io::copy(input, &mut e)?;
                e.finish()?.flush()
            }
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, 3)?;
                // The host's `zstd -d` checks it: a stream cut or changed does not expand.
                e.include_checksum(true)?;
                std::io::copy(input, &mut e)?;
                e.finish()?.flush()
            }
        }
    }
}

/// `path`'s stream in `codec` (made unless a checked one is cached), or None when it saves
/// less than a tenth.
fn pack_one(path: &Path, codec: Codec) -> anyhow::Result<Option<PathBuf>> {
    let ext = codec.ext();
    let stream = path.with_extension(ext);
    let sum = path.with_extension(format!("{ext}.sha256"));
    let size = std::fs::metadata(path)?.len();
    let worth = |len: u64| len.saturating_mul(10) < size.saturating_mul(9);
    if let (Ok(want), true) = (std::fs::read_to_string(&sum), stream.is_file()) {
        if still_hashes_to(&stream, want.trim())? {
            return Ok(worth(std::fs::metadata(&stream)?.len()).then_some(stream));
        }
        eprintln!(
            "warning: {}: cached {ext} stream no longer matches its sha256; compressing again",
            stream.display()
        );
    }
    let tmp = partial_of(&stream);
    {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        codec.compress(
            &mut std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
            out,
        )?;
    }
    let (h, len) = crate::hashing::hash_file(&tmp)?;
    std::fs::rename(&tmp, &stream)?;
    std::fs::write(&sum, format!("{h}\n"))?;
    Ok(worth(len).then_some(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn expand(stream: &Path, codec: Codec) -> Vec<u8> {
        let f = std::fs::File::open(stream).unwrap();
        let mut out = Vec::new();
        match codec {
            Codec::Gzip => flate2::read::GzDecoder::new(f).read_to_end(&mut out),
            Codec::Zstd => zstd::stream::read::Decoder::new(f)
                .unwrap()
                .read_to_end(&mut out),
        }
        .unwrap();
        out
    }

    /// A compressible item gets checked gzip and zstd streams that expand to its bytes; a changed
    /// stream is made again; bytes that do not shrink travel as they are.
    #[test]
    fn items_that_shrink_travel_packed_and_a_changed_stream_is_remade() {
        let d = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("line {}\n", i % 1000).into_bytes())
            .collect();
        let item = d.path().join("aaaa");
        std::fs::write(&item, &text).unwrap();
        for codec in [Codec::Gzip, Codec::Zstd] {
            let stream = pack_one(&item, codec).unwrap().expect("text shrinks");
            assert_eq!(stream, d.path().join(format!("aaaa.{}", codec.ext())));
            assert_eq!(expand(&stream, codec), text);
            assert!(std::fs::metadata(&stream).unwrap().len() < text.len() as u64 / 5);

            std::fs::write(&stream, b"tampered").unwrap();
            let again = pack_one(&item, codec).unwrap().unwrap();
            assert_eq!(
                expand(&again, codec),
                text,
                "a stream that fails its hash is made again"
            );
        }

        // Already compressed bytes (a .deb, a .tgz) do not shrink by a tenth.
        let mut noise = Vec::new();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        let item = d.path().join("bbbb");
        std::fs::write(&item, &noise).unwrap();
        assert_eq!(pack_one(&item, Codec::Gzip).unwrap(), None);
        assert_eq!(pack_one(&item, Codec::Zstd).unwrap(), None);
    }

    /// A killed run's partial files go (an item, a stream, a stamp) once stale; a live run's
    /// stay, a recent one stays (another machine's, maybe), and so do the cache's own files.
    #[test]
    fn partial_files_of_killed_runs_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let gone = [
            format!(".aaaa.{dead}.partial"),
            format!("aaaa.zst.{dead}.partial"),
            format!("aaaa.verified.{dead}.partial"),
        ];
        let kept_stale = [
            format!(".bbbb.{live}.partial"),
            "aaaa".to_string(),
            "aaaa.zst".to_string(),
            "aaaa.zst.sha256".to_string(),
            "aaaa.verified".to_string(),
            "notapid.partial".to_string(),
        ];
        let kept_recent = format!(".cccc.{dead}.partial");
        let stale =
            std::time::SystemTime::now() - PARTIAL_STALE - std::time::Duration::from_secs(60);
        for n in gone.iter().chain(&kept_stale) {
            let f = std::fs::File::create(d.path().join(n)).unwrap();
            f.set_modified(stale).unwrap();
        }
        std::fs::write(d.path().join(&kept_recent), b"x").unwrap();
        let kept = kept_stale.iter().chain([&kept_recent]);
        remove_dead_partials(d.path()).unwrap();
        for n in &gone {
            assert!(!d.path().join(n).exists(), "{n} was left");
        }
        for n in kept {
            assert!(d.path().join(n).exists(), "{n} was removed");
        }
    }

    /// A checked file is not hashed again while it is unchanged; any change to it (even one
    /// that keeps its size and mtime) is caught, and so is a stamp for another hash.
    #[test]
    fn a_cached_file_is_hashed_again_only_when_it_changed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("cccc");
        std::fs::write(&f, b"the item's bytes").unwrap();
        let sha = crate::hashing::sha256_hex(b"the item's bytes");
        let stamp = d.path().join("cccc.verified");
        assert!(!still_hashes_to(&f, &"0".repeat(64)).unwrap());
        assert!(!stamp.exists(), "a failed check records nothing");
        assert!(still_hashes_to(&f, &sha).unwrap());
        let recorded = std::fs::read_to_string(&stamp).unwrap();
        assert!(recorded.ends_with(&format!(" {sha}\n")), "{recorded}");
        assert!(
            still_hashes_to(&f, &sha).unwrap(),
            "unchanged: the stamp answers"
        );
        assert!(
            !still_hashes_to(&f, &"0".repeat(64)).unwrap(),
            "a stamp for another hash does not vouch for this one"
        );

        // Same size, mtime put back: the ctime still moves, so it is hashed and refused.
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"the item's bytez").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(!still_hashes_to(&f, &sha).unwrap());
        assert_eq!(
            std::fs::read_to_string(&stamp).unwrap(),
            recorded,
            "a failed check leaves the old stamp, which no longer matches the file"
        );
    }
}
