//! Bytes for the files of a plan: rendered content, local files, and bundle items, which are
//! streamed out of the bundle once into a content-addressed cache (`clusters/<name>/cache/`),
//! each checked against its sha256 on the way.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::executor::Blob;
use super::{Action, BundleRef, PhasePlan, Source};

pub struct Blobs {
    /// Item label (`name version`) -> cached file.
    bundle: BTreeMap<String, PathBuf>,
}

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
            return Ok(Blobs { bundle: map });
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
                let tmp = cache.join(format!(".{sha}.partial"));
                let mut f = std::fs::File::create(&tmp)?;
                std::io::copy(r, &mut f)?;
                f.flush()?;
                Ok(())
            })
            .with_context(|| format!("extracting from {}", b.path.display()))?;
            // stream_items checked every hash: only now are the files committed.
            for it in missing {
                let sha = it.sha256.as_deref().unwrap_or_default();
                std::fs::rename(cache.join(format!(".{sha}.partial")), cache.join(sha))?;
            }
        }
        Ok(Blobs { bundle: map })
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
            Source::Bundle { item } => Blob::Path(
                self.bundle
                    .get(item)
                    .with_context(|| format!("bundle item {item} was not extracted"))?
                    .clone(),
            ),
        })
    }
}
