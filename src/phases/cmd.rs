//! `init`, `join`, `upgrade`, `renew-certs`, `plan`: the commands that run playbooks.
use clap::Args;

use crate::cli::Global;
use crate::diag::UserError;

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Only print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// Skip these phases (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub skip_phases: Vec<String>,
    /// Run only these phases (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub only_phase: Vec<String>,
    /// Limit to these hosts (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PlanArgs {
    /// The command to plan.
    #[arg(long, default_value = "init")]
    pub command: String,
}

pub fn run(command: &str, _g: &Global, _a: &RunArgs) -> anyhow::Result<()> {
    Err(UserError::not_built(command, "init issue").into())
}

pub fn plan(_g: &Global, _a: &PlanArgs) -> anyhow::Result<()> {
    Err(UserError::not_built("plan", "foundation issue").into())
}
