//! `clusterctl certs ...`
use clap::Subcommand;

use crate::cli::Global;
use crate::diag::UserError;

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Generate (or complete) the cluster PKI locally under clusters/<name>/pki.
    Generate,
    /// List every certificate and kubeconfig with its expiry.
    CheckExpiration,
}

pub fn run(_g: &Global, c: CertsCmd) -> anyhow::Result<()> {
    match c {
        CertsCmd::Generate => Err(UserError::not_built("certs generate", "PKI issue").into()),
        CertsCmd::CheckExpiration => Err(UserError::not_built("certs check-expiration", "PKI issue").into()),
    }
}
