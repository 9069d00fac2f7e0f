//! A host for playbook tests of steps guarded by `unless` (reset, restore): a step's `unless`
//! holds once its command ran there; the host can be "killed" after a number of changes, and
//! a command containing `fail_on` fails (exit 1).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;

use crate::engine::executor::{Blob, CmdOutput, Executor};
use crate::engine::{Action, PhasePlan};
use crate::inventory::Host;

#[derive(Default)]
pub struct GuardedHosts {
    /// (host, `unless`) → the command that makes it hold there.
    pub guards: BTreeMap<(String, String), String>,
    /// (host, command) run.
    pub done: Mutex<BTreeSet<(String, String)>>,
    pub log: Mutex<Vec<String>>,
    /// Changes left before the run is "killed" (every later change fails).
    pub budget: Option<AtomicUsize>,
    /// A command containing this exits 1.
    pub fail_on: Option<String>,
}

impl GuardedHosts {
    pub fn for_plans(plans: &[PhasePlan]) -> GuardedHosts {
        let mut g = GuardedHosts::default();
        for p in plans {
            for hp in &p.hosts {
                for a in &hp.actions {
                    if let Action::Run {
                        command,
                        unless: Some(u),
                        ..
                    } = a
                    {
                        g.guards
                            .insert((hp.host.clone(), u.to_string()), command.to_string());
                    }
                }
            }
        }
        g
    }
}

impl Executor for GuardedHosts {
    fn query<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a crate::ssh::shell::Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        let cmd = cmd.as_str();
        let status = match self.guards.get(&(host.name.to_string(), cmd.to_string())) {
            Some(c) => {
                if self
                    .done
                    .lock()
                    .unwrap()
                    .contains(&(host.name.to_string(), c.clone()))
                {
                    0
                } else {
                    1
                }
            }
            None => 0,
        };
        Box::pin(async move {
            Ok(CmdOutput {
                status,
                ..Default::default()
            })
        })
    }
    fn change<'a>(
        &'a self,
        host: &'a Host,
        cmd: &'a crate::ssh::shell::Shell,
    ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
        let cmd = cmd.as_str();
        let killed = self.budget.as_ref().is_some_and(|b| {
            b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        });
        let fails = self
            .fail_on
            .as_ref()
            .is_some_and(|f| cmd.contains(f.as_str()));
        if !killed && !fails {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}: {cmd}", host.name));
            self.done
                .lock()
                .unwrap()
                .insert((host.name.to_string(), cmd.to_string()));
        }
        Box::pin(async move {
            if killed {
                anyhow::bail!("killed");
            }
            Ok(CmdOutput {
                status: if fails { 1 } else { 0 },
                ..Default::default()
            })
        })
    }
    fn put<'a>(
        &'a self,
        host: &'a Host,
        path: &'a str,
        _: &'a Blob,
        _: &'a str,
        _: u32,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}: put {path}", host.name));
        Box::pin(async { Ok(1) })
    }
}

/// A context for playbook tests: the inventory `yaml` (its file and state under `dir`),
/// `--hosts`, the run's options, the built-in templates, no bundle.
pub fn test_context(
    yaml: &str,
    dir: &std::path::Path,
    hosts: &[&str],
    options: crate::engine::RunOptions,
) -> crate::engine::Context {
    crate::engine::Context {
        loaded: crate::inventory::load_str(yaml, &dir.join("inventory.yaml"))
            .unwrap_or_else(|d| panic!("{d}")),
        state: crate::state::StateDir::new(dir, "t"),
        render: crate::render::Renderer::new(None).unwrap(),
        host_filter: hosts.iter().map(|s| s.to_string()).collect(),
        bundle: None,
        options,
        facts: Default::default(),
    }
}

/// Bytes of a planned file in playbook tests: rendered content, or a local file read now.
pub fn resolve(s: &crate::engine::Source) -> anyhow::Result<Blob> {
    match s {
        crate::engine::Source::Rendered { content, .. } => Ok(Blob::Bytes(content.clone())),
        crate::engine::Source::Local { path } => Ok(Blob::Bytes(std::fs::read(path)?)),
        other => anyhow::bail!("{other:?}"),
    }
}
