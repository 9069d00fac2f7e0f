//! `clusterctl restore ARCHIVE`.

use super::RestoreArgs;
use crate::cli::Global;
use crate::diag::UserError;

pub fn run(_g: &Global, _a: &RestoreArgs) -> anyhow::Result<()> {
    Err(UserError::not_built("restore", "day-2 issue").into())
}
