//! Bytes for the files of a plan: rendered content, local files, and bundle items, which are
//! streamed out of the bundle once into the operator's content-addressed item cache
//! (`StateDir::item_cache`, shared by every cluster on the machine), each checked against its
//! sha256 on the way and again before each use.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::executor::Blob;
use super::{Action, BundleRef, PhasePlan, Source};

pub struct Blobs {
    /// Item label (`name version`) -> cached file.
    bundle: BTreeMap<String, PathBuf>,
    /// Item label -> its gzip stream, for items that shrink by a tenth or more: those travel
    /// compressed and are expanded (and hash-checked) on the host.
    packed: BTreeMap<String, PathBuf>,
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
            if path.is_file() && crate::hashing::hash_file(&path)?.0 != sha {
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
            crate::bundle::stream_items(&b.path, &missing, |it, r| {
                let sha = it.sha256.as_deref().unwrap_or_default();
                let tmp = cache.join(partial_name(sha));
                let mut f = std::fs::File::create(&tmp)?;
                std::io::copy(r, &mut f)?;
                f.flush()?;
                Ok(())
            })
            .with_context(|| format!("extracting from {}", b.path.display()))?;
            // stream_items checked every hash: only now are the files committed.
            for it in missing {
                let sha = it.sha256.as_deref().unwrap_or_default();
                std::fs::rename(cache.join(partial_name(sha)), cache.join(sha))?;
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
                    Some(gz) => Blob::Packed {
                        path,
                        gz: gz.clone(),
                    },
                    None => Blob::Path(path),
                }
            }
        })
    }
}

/// A file being extracted into the cache: named by this process too, since two runs (two
/// clusters) may fill the shared cache with the same item at once; `rename` commits it.
fn partial_name(sha: &str) -> String {
    format!(".{sha}.{}.partial", std::process::id())
}

/// The gzip stream of each item worth compressing, made once into the cache beside the item
/// (`<sha>.gz`, with `<sha>.gz.sha256` holding the stream's own hash, checked before every
/// use like the items themselves). Level 1: a Kubernetes binary shrinks to ~29 % (level 6:
/// ~25 %, at 2.6x the time), and the hosts' `gzip -dc` expands it far faster than links carry
/// it. Items already compressed (.debs, .tgz) do not shrink and travel as they are.
fn pack_all(
    items: &[&crate::bundle::Item],
    cache: &Path,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let todo: Vec<(String, PathBuf)> = items
        .iter()
        .filter(|it| it.size.unwrap_or(u64::MAX) >= PACK_MIN)
        .filter_map(|it| Some((it.label(), cache.join(it.sha256.as_deref()?))))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads =
        std::thread::available_parallelism().map_or(1, |n| n.get().min(todo.len().max(1)));
    let results: Vec<anyhow::Result<Vec<(String, PathBuf)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((label, path)) = todo.get(i) else {
                            return Ok(out);
                        };
                        if let Some(gz) = pack_one(path)
                            .with_context(|| format!("compressing {label} ({})", path.display()))?
                        {
                            out.push((label.clone(), gz));
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
    let mut packed = BTreeMap::new();
    for r in results {
        packed.extend(r?);
    }
    Ok(packed)
}

/// `path`'s gzip stream (made unless a checked one is cached), or None when it saves less
/// than a tenth.
fn pack_one(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    let gz = path.with_extension("gz");
    let sum = path.with_extension("gz.sha256");
    let size = std::fs::metadata(path)?.len();
    let worth = |gz_len: u64| gz_len.saturating_mul(10) < size.saturating_mul(9);
    if let (Ok(want), true) = (std::fs::read_to_string(&sum), gz.is_file()) {
        let (have, len) = crate::hashing::hash_file(&gz)?;
        if have == want.trim() {
            return Ok(worth(len).then_some(gz));
        }
        eprintln!(
            "warning: {}: cached gzip stream no longer matches its sha256; compressing again",
            gz.display()
        );
    }
    let tmp = path.with_extension(format!("gz.{}.partial", std::process::id()));
    {
        let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        std::io::copy(
            &mut std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?),
            &mut e,
        )?;
        e.finish()?.flush()?;
    }
    let (h, len) = crate::hashing::hash_file(&tmp)?;
    std::fs::rename(&tmp, &gz)?;
    std::fs::write(&sum, format!("{h}\n"))?;
    Ok(worth(len).then_some(gz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn expand(gz: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(gz).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// A compressible item gets a checked gzip stream that expands to its bytes; a changed
    /// stream is made again; bytes that do not shrink travel as they are.
    #[test]
    fn items_that_shrink_travel_as_gzip_and_a_changed_stream_is_remade() {
        let d = tempfile::tempdir().unwrap();
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("line {}\n", i % 1000).into_bytes())
            .collect();
        let item = d.path().join("aaaa");
        std::fs::write(&item, &text).unwrap();
        let gz = pack_one(&item).unwrap().expect("text shrinks");
        assert_eq!(gz, d.path().join("aaaa.gz"));
        assert_eq!(expand(&gz), text);
        assert!(std::fs::metadata(&gz).unwrap().len() < text.len() as u64 / 5);

        std::fs::write(&gz, b"tampered").unwrap();
        let again = pack_one(&item).unwrap().unwrap();
        assert_eq!(
            expand(&again),
            text,
            "a stream that fails its hash is made again"
        );

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
        assert_eq!(pack_one(&item).unwrap(), None);
    }
}
