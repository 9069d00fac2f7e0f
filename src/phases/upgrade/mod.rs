//! The phases of `clusterctl upgrade` (`playbooks/upgrade.yaml`), run by the one runner like
//! every other command's: ordering, gates, balancer rotation, host run markers, pending records,
//! journal, `--dry-run` and `plan` come from it.
//!
//! - [`etcd`]: members one at a time;
//! - [`control_plane`]: control-plane hosts one at a time;
//! - [`nodes`]: kubelet and kube-proxy, each node cordoned and drained first (recorded in the
//!   host's pending record before the cordon, so a killed run's re-run uncordons the node and
//!   never drains it twice) and uncordoned after its gate.
//!
//! - [`rollback`] (`playbooks/upgrade-rollback.yaml`, `upgrade --rollback`): the kept
//!   binaries back, one host at a time behind the same gates.
//!
//! Before a host's binaries are swapped, the ones it has are kept on it (`binaries`,
//! `--rollback` installs them again): the phases' `before_host`, right before the runner
//! converges the host.
//!
//! What is not a phase stays with the command (`crate::commands::upgrade`): reading what runs, the skew
//! check (`skew`), `upgrade plan`, the pre-upgrade backup and the versions record.

pub mod binaries;
pub mod control_plane;
pub mod drain;
pub mod etcd;
pub mod nodes;
pub mod rollback;
pub mod skew;

use crate::engine::executor::{Blob, converge};
use crate::engine::{Context, Executor, HostPlan, Source};
use crate::inventory::Host;

/// Same version, written with or without the `v`.
pub fn same_version(a: &str, b: &str) -> bool {
    a.trim_start_matches('v') == b.trim_start_matches('v')
}

/// Keeps the binaries of `comps` that `host` has now in [`binaries::PREVIOUS_DIR`] (each
/// skipped when the target is already in place): the first step of a host's turn, before the
/// runner converges it, because a converge writes files before it runs commands. A dry run
/// says what it would keep. Returns lines for the host's report.
pub async fn keep_current(
    ctx: &Context,
    exec: &dyn Executor,
    host: &Host,
    comps: &[binaries::Component],
) -> anyhow::Result<Vec<String>> {
    let plan = HostPlan {
        host: host.name.to_string(),
        address: host.address.to_string(),
        actions: binaries::keep_actions(ctx, host, comps)?,
    };
    // Keep steps are commands only: nothing to resolve.
    let no_files = |s: &Source| -> anyhow::Result<Blob> {
        anyhow::bail!("a keep step has no file to send ({s:?})")
    };
    let ch = converge(exec, host, &plan, &no_files)
        .await
        .map_err(|e| e.context("keeping the current binaries"))?;
    Ok(if ch.commands_run > 0 && !exec.is_dry_run() {
        vec![format!(
            "{}: {} binar{} kept in {}",
            host.name,
            ch.commands_run,
            if ch.commands_run == 1 { "y" } else { "ies" },
            binaries::PREVIOUS_DIR
        )]
    } else {
        vec![]
    })
}
