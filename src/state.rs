//! The cluster's local state directory: `clusters/<name>/` beside the inventory (or under
//! `--state-dir`): pki/, known_hosts, journal, logs/, admin.conf.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// `<base>/clusters/<name>`; base defaults to the inventory file's directory.
    pub fn new(base: &Path, cluster: &str) -> StateDir {
        StateDir { root: base.join("clusters").join(cluster) }
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
}
