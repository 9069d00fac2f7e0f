//! `clusterctl bundle ...`
use clap::Subcommand;

use crate::cli::Global;
use crate::diag::UserError;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Download every item of a manifest, verify its sha256, and pack a bundle.
    Build,
    /// Verify every hash (and the signature, if any) of a bundle.
    Verify,
}

pub fn run(_g: &Global, c: BundleCmd) -> anyhow::Result<()> {
    match c {
        BundleCmd::Build => {
            Err(UserError::not_built("bundle build", "offline bundle issue").into())
        }
        BundleCmd::Verify => {
            Err(UserError::not_built("bundle verify", "offline bundle issue").into())
        }
    }
}
