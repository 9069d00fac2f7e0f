//! `clusterctl inventory import --from kubeasz hosts`: a kubeasz Ansible INI inventory to ours.
use std::path::Path;

pub fn import_file(path: &Path) -> anyhow::Result<String> {
    Err(crate::diag::UserError::not_built(&format!("inventory import {}", path.display()), "foundation issue").into())
}
