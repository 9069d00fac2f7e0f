//! The cluster's local state directory: `clusters/<name>/` beside the inventory (or under
//! `--state-dir`): pki/, known_hosts, journal, logs/, admin.conf; and the operator's item
//! cache, which every cluster on this machine shares.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// `<base>/clusters/<name>`; base defaults to the inventory file's directory.
    pub fn new(base: &Path, cluster: &str) -> StateDir {
        StateDir {
            root: base.join("clusters").join(cluster),
        }
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal.jsonl")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.conf")
    }
    /// Where bundle items are extracted to (and compressed) once, for every cluster and bundle of
    /// this user: [`item_cache`], or this cluster's `cache/` when there is no home to put it in.
    pub fn item_cache(&self) -> PathBuf {
        item_cache(|k| std::env::var_os(k)).unwrap_or_else(|| self.root.join("cache"))
    }
}

/// The shared item cache: `$CLUSTERCTL_CACHE_DIR`, else `$XDG_CACHE_HOME/clusterctl/items`,
/// else `~/.cache/clusterctl/items` (k0sctl keeps its binaries in `~/.cache/k0sctl` the same
/// way). Sharing it trusts nothing new: a file there is named by its sha256 and hashed against
/// the signed manifest before each use. A per-cluster cache extracted and compressed every item
/// again for each new cluster: ~3 s of every first `init` from an already built bundle.
fn item_cache(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("CLUSTERCTL_CACHE_DIR") {
        return Some(d);
    }
    let base = set("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| set("HOME").map(|h| h.join(".cache")))?;
    Some(base.join("clusterctl").join("items"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn the_item_cache_follows_the_override_then_xdg_then_home() {
        let all = [
            ("CLUSTERCTL_CACHE_DIR", "/srv/cc"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/op"),
        ];
        assert_eq!(item_cache(env(&all)), Some(PathBuf::from("/srv/cc")));
        assert_eq!(
            item_cache(env(&all[1..])),
            Some(PathBuf::from("/x/clusterctl/items"))
        );
        // A relative XDG_CACHE_HOME is invalid by the XDG spec: ignored.
        assert_eq!(
            item_cache(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/home/op")])),
            Some(PathBuf::from("/home/op/.cache/clusterctl/items"))
        );
        assert_eq!(item_cache(env(&[("HOME", "")])), None);
    }
}
