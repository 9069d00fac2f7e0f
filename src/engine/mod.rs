//! The engine: one runner under every command that changes a host.
//!
//! A command is a playbook: an ordered list of phases (`phases::playbook`), each implementing
//! [`Phase`], all run by one [`runner::Runner`]. A phase does not touch hosts itself. `plan`
//! describes the desired state of each host as [`Action`]s (files with their content hash,
//! services, commands), and the runner converges hosts to it through an [`Executor`]. That one
//! path gives:
//! - `plan` and `--dry-run`: print the actions, change nothing;
//! - idempotence: a file whose far hash already matches is not sent, a service whose files did
//!   not change is not restarted;
//! - crash safety: what a change owes a host (restarts, reloads, a drained backend) is recorded
//!   on the host before its files are replaced and finished by the next run (`executor`);
//! - the journal: what a phase did on a host, keyed by the hash of its plan;
//! - one run at a time per cluster (`lock`).
//!
//! The engine knows no phase: phases (`crate::phases`) and commands (`crate::commands`) sit
//! above it and it imports neither.

pub mod blobs;
pub mod executor;
#[cfg(test)]
pub mod guarded_fake;
pub mod lock;
pub mod peers;
pub mod rotation;
pub mod runner;
pub mod ssh_exec;

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde::Serialize;

use crate::inventory::{Host, Inventory, Loaded};
use crate::render::Renderer;
pub use crate::ssh::shell::{Cmd, Script, Shell};
use crate::state::StateDir;

pub use executor::Executor;

/// The kubelet's `staticPodPath`.
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";

/// Everything a phase may read. Built once per run; phases never mutate it, but for the
/// facts they read from hosts (`facts`).
pub struct Context {
    pub loaded: Loaded,
    pub state: StateDir,
    pub render: Renderer,
    /// `--hosts`: limit the run to these hosts (empty: all).
    pub host_filter: Vec<String>,
    /// The offline bundle named by `spec.bundle`, if any.
    pub bundle: Option<BundleRef>,
    /// What the command line asked beyond hosts and phases.
    pub options: RunOptions,
    /// What phases read from hosts during this run, for the phases after them.
    pub facts: Facts,
}

/// Facts read from hosts during a run (e.g. preflight's read-back of the kernel settings the
/// kubelet checks), by host and name: a phase that reads one sets it, a later phase plans
/// from it (the runner plans each phase right before it runs). The only thing in a
/// [`Context`] that changes during a run; `plan` and a run that skipped the reading phase
/// find nothing, and the planning phase must say what it did without.
#[derive(Debug, Default)]
pub struct Facts(std::sync::Mutex<std::collections::BTreeMap<(String, String), String>>);

impl Facts {
    pub fn set(&self, host: &str, name: &str, value: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((host.to_string(), name.to_string()), value);
    }

    pub fn get(&self, host: &str, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(host.to_string(), name.to_string()))
            .cloned()
    }
}

/// Command-line choices phases may read.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--dry-run`: local steps must not change anything either.
    pub dry_run: bool,
    /// `renew-certs --component`: the components whose certificates are renewed (empty: all).
    pub renew_components: Vec<String>,
    /// `renew-certs --ca STAGE`: the CA rotation stage this run makes and rolls.
    pub ca_stage: Option<crate::pki::rotation::Stage>,
    /// `join`: the hosts joining the cluster in this run (empty for other commands). Phases
    /// plan their steps for them, and an existing host only where [`Phase::join_concerns`]
    /// says why.
    pub joining: Vec<String>,
    /// `--break-lock`: take the hosts' run markers even when another machine's run left them.
    pub break_lock: bool,
    /// `reset --drain-timeout`, `upgrade --drain-timeout`: how long draining one node may
    /// take (None: the phase's default).
    pub drain_timeout: Option<std::time::Duration>,
    /// `upgrade --max-unavailable`: nodes upgraded at once (None: one).
    pub max_unavailable: Option<usize>,
    /// `restore ARCHIVE`: the verified snapshot and the run's time stamp.
    pub restore: Option<RestoreInputs>,
    /// What a command decided for its phases before the run, by type (e.g. `upgrade
    /// --rollback`'s kept copies per host): the engine carries them without knowing them.
    pub inputs: Inputs,
    /// `backup --schedule`: the calendar (or off) and how many snapshots to keep.
    pub schedule: Option<Schedule>,
}

/// What a restore run restores, decided once by the command before the run.
#[derive(Debug, Clone)]
pub struct RestoreInputs {
    /// The verified snapshot, unpacked on the operator's machine.
    pub snapshot: PathBuf,
    /// `20261124T221000Z`: names the copies, the moved-aside data directories, the token.
    pub stamp: String,
}

/// `backup --schedule`'s choice.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// A systemd calendar, or `off`.
    pub calendar: String,
    pub keep: u32,
}

impl Schedule {
    pub fn is_off(&self) -> bool {
        self.calendar == "off"
    }
}

/// Values a command hands its phases, one per type.
#[derive(Clone, Default)]
pub struct Inputs(
    std::collections::HashMap<std::any::TypeId, std::sync::Arc<dyn std::any::Any + Send + Sync>>,
);

impl Inputs {
    pub fn insert<T: std::any::Any + Send + Sync>(&mut self, value: T) {
        self.0
            .insert(std::any::TypeId::of::<T>(), std::sync::Arc::new(value));
    }

    pub fn get<T: std::any::Any>(&self) -> Option<&T> {
        self.0.get(&std::any::TypeId::of::<T>())?.downcast_ref()
    }
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inputs({} value(s))", self.0.len())
    }
}

/// An offline bundle: where it is and its manifest (read from its head only).
pub struct BundleRef {
    pub path: PathBuf,
    pub manifest: crate::bundle::Manifest,
    /// How its signature was judged (plans say it).
    pub trust: crate::bundle::Trust,
}

impl Context {
    pub fn inv(&self) -> &Inventory {
        &self.loaded.inventory
    }

    /// Hosts selected by `--hosts` that also satisfy `pred`, in inventory order.
    /// The cluster's API as its admin, through the endpoints the operator's machine uses.
    pub fn kube_admin(&self) -> anyhow::Result<crate::kube::Client> {
        crate::kube::Client::admin(self.inv(), &self.state)
    }

    /// An HTTPS client holding the admin credentials (`kubeconfig/admin.conf`).
    pub fn admin_http(&self) -> anyhow::Result<reqwest::Client> {
        crate::kube::admin_http(&self.state)
    }

    pub fn hosts_where(&self, pred: impl Fn(&Host) -> bool) -> Vec<&Host> {
        self.inv()
            .spec
            .hosts
            .iter()
            .filter(|h| {
                self.host_filter.is_empty() || self.host_filter.iter().any(|f| f == &h.name)
            })
            .filter(|h| pred(h))
            .collect()
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum Source {
    /// Rendered from a template (the name is the template path under templates/).
    Rendered {
        template: String,
        #[serde(skip)]
        content: Vec<u8>,
    },
    /// A file on the operator's machine (e.g. a certificate under clusters/<name>/pki).
    Local { path: PathBuf },
    /// An item of the offline bundle, by name.
    Bundle { item: String },
}

/// Mode as the usual octal string in plans and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// One piece of desired state on one host.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// A directory exists with this mode.
    Directory { path: String, mode: Mode },
    /// A file has exactly these bytes (sent only when the far sha256 differs). A change
    /// restarts the listed units.
    File {
        path: String,
        mode: Mode,
        source: Source,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        restarts: Vec<String>,
    },
    /// A systemd unit is enabled and running; restarted when one of its files changed, or
    /// with `reload`, reloaded (`systemctl reload`: haproxy and keepalived take a new config
    /// without dropping connections or the VIP).
    Service {
        unit: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reload: bool,
    },
    /// A command that changes the host; skipped when `unless` succeeds (so a re-run is a
    /// no-op). With `warn_only`, a failure is a warning (e.g. a sysctl a container cannot set).
    Run {
        description: String,
        command: Shell,
        #[serde(skip_serializing_if = "Option::is_none")]
        unless: Option<Shell>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        warn_only: bool,
    },
    /// A read-only check; a non-zero exit is a problem reported with `description`. Checks
    /// that open a host's plan are guards: they run before anything on the host changes, and
    /// a failed one leaves the host untouched.
    Check {
        description: String,
        command: Shell,
        /// A failed check is a warning, not an error (e.g. a sysctl a container cannot set).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        warn_only: bool,
    },
}

impl Action {
    /// A file rendered from a template: the content hash is known at plan time.
    pub fn rendered(
        path: impl Into<String>,
        mode: u32,
        template: &str,
        content: String,
        restarts: &[&str],
    ) -> Action {
        let bytes = content.into_bytes();
        Action::File {
            path: path.into(),
            mode: Mode(mode),
            sha256: Some(sha256_hex(&bytes)),
            size: Some(bytes.len() as u64),
            source: Source::Rendered {
                template: template.to_string(),
                content: bytes,
            },
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn service(unit: &str) -> Action {
        Action::Service {
            unit: unit.to_string(),
            reload: false,
        }
    }

    /// A service that takes a changed file by reloading, not restarting.
    pub fn reloaded_service(unit: &str) -> Action {
        Action::Service {
            unit: unit.to_string(),
            reload: true,
        }
    }

    pub fn dir(path: &str, mode: u32) -> Action {
        Action::Directory {
            path: path.to_string(),
            mode: Mode(mode),
        }
    }

    pub fn check(description: &str, command: impl Into<Shell>) -> Action {
        Action::Check {
            description: description.into(),
            command: command.into(),
            warn_only: false,
        }
    }

    /// A command that changes the host, skipped when `unless` succeeds (`None`: always runs).
    pub fn run(description: &str, command: impl Into<Shell>, unless: Option<Shell>) -> Action {
        Action::Run {
            description: description.into(),
            command: command.into(),
            unless,
            warn_only: false,
        }
    }
}

pub use crate::hashing::sha256_hex;

/// What a phase will do on one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    pub actions: Vec<Action>,
}

/// How the runner walks the hosts of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// All hosts at once (bounded by the SSH concurrency).
    Parallel,
    /// One host after another, each gated by `verify` (e.g. restarting apiservers).
    OneAtATime,
    /// Hosts where none of the phase's services runs yet go in parallel (a first install:
    /// etcd members must even start together); hosts where they run go one at a time behind
    /// `verify`, so a change never restarts every member or apiserver at once.
    Rolling,
    /// Up to this many hosts at a time, in plan order, each batch gated by `verify` before
    /// the next (e.g. workers drained `--max-unavailable` at a time).
    Batches(usize),
}

/// What a phase will do, per host, in order.
#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    pub phase: String,
    pub summary: String,
    pub order: Order,
    pub hosts: Vec<HostPlan>,
    /// Work done on the operator's machine, before the hosts (e.g. "write admin.conf").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<String>,
    /// Things the user should know (e.g. "no bundle set: binaries must already be on hosts").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl PhasePlan {
    pub fn new(phase: &dyn Phase, order: Order) -> PhasePlan {
        PhasePlan {
            phase: phase.name().to_string(),
            summary: phase.summary().to_string(),
            order,
            hosts: Vec::new(),
            local: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn host(&mut self, h: &Host, actions: Vec<Action>) {
        self.hosts.push(HostPlan {
            host: h.name.to_string(),
            address: h.address.to_string(),
            actions,
        });
    }

    /// Hash of everything this phase will do on `host`: the journal's key for "nothing
    /// changed". Rendered contents are covered by the sha256 each File action carries.
    pub fn inputs_hash(&self, host: &str) -> String {
        let h = self.hosts.iter().find(|h| h.host == host);
        sha256_hex(&serde_json::to_vec(&(&self.phase, h)).expect("plans serialize"))
    }
}

/// One step of a command. Implementations live one per file in this module.
pub trait Phase: Send + Sync {
    /// The name used in playbooks, `--skip-phases` and `--only-phase`.
    fn name(&self) -> &'static str;
    /// One line for `--help`, plans and progress.
    fn summary(&self) -> &'static str;
    /// Desired state of every host this phase touches. Pure: reads the context only.
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan>;
    /// Reads from the hosts, right before [`Phase::plan`] in a run, the facts the plan needs
    /// that an earlier phase of the run would have read (`--only-phase` or `--skip-phases`
    /// leaves that phase out), into `ctx.facts`. Read-only: dry runs call it too. Default:
    /// nothing.
    fn gather<'a>(
        &'a self,
        _ctx: &'a Context,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Work on the operator's machine that `plan.local` describes; runs before the hosts.
    fn apply_local(&self, _ctx: &Context) -> anyhow::Result<()> {
        Ok(())
    }
    /// Health gate after the plan has been applied to `host` (e.g. etcd member healthy).
    /// The runner calls it per host for `Order::OneAtATime`, and once per host after a
    /// parallel phase. Returns lines worth reporting (the verify phase's report). Default:
    /// nothing to check.
    fn verify<'a>(
        &'a self,
        _ctx: &'a Context,
        _host: &'a Host,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// For `Order::Rolling`: a read-only shell command that succeeds when what this phase runs
    /// already runs on `host`, which then goes one at a time behind the gate. None (default):
    /// one of the units the host's plan manages or restarts is active. A phase whose program
    /// is no unit of its own (a static pod) says what counts instead: containerd, which the
    /// bundle's package starts on install, does not make an etcd member "running".
    fn running_check(&self, _ctx: &Context, _host: &Host) -> Option<Shell> {
        None
    }
    /// Work through the cluster's API right before `host` converges (e.g. etcd's `member add
    /// --learner` for a joining member, which must precede its start). With a dry-run
    /// executor it changes nothing and says what it would do. Returns lines for the report.
    /// Default: nothing.
    fn before_host<'a>(
        &'a self,
        _ctx: &'a Context,
        _host: &'a Host,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// Work through the cluster's API once `host`'s turn is over, whether it succeeded
    /// (`ok`) or not, after its apiserver is back in the balancers (e.g. uncordon the node
    /// `before_host` cordoned). A failure fails the host. Returns warnings for the report.
    /// Default: nothing.
    fn after_host<'a>(
        &'a self,
        _ctx: &'a Context,
        _host: &'a Host,
        _exec: &'a dyn Executor,
        _ok: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// For `join`: why `host`, already part of the cluster, must take part in this phase
    /// because of the hosts joining (`RunOptions::joining`), e.g. a balancer that gets a new
    /// apiserver as a backend. None (default): the phase leaves existing hosts alone, so a
    /// join neither changes nor gates them. The plan shows the reason as a note.
    fn join_concerns(&self, _ctx: &Context, _host: &Host) -> Option<String> {
        None
    }
    /// What puts back this phase's changes when it or a later phase fails (e.g. `restore`
    /// moves the old etcd data back and starts what it stopped): a plan the runner converges
    /// on every host at once, newest phase first, walking back while phases have one. None
    /// (default): nothing to undo, and nothing before this phase is undone either (a point of
    /// no return).
    fn undo(&self, _ctx: &Context) -> anyhow::Result<Option<PhasePlan>> {
        Ok(None)
    }
    /// Work through the cluster's API after every host of the phase converged and passed its
    /// gate (e.g. apply add-ons, label nodes). With `dry_run` it must change nothing and say
    /// what it would do. Returns lines for the run's report. Default: nothing.
    fn apply_cluster<'a>(
        &'a self,
        _ctx: &'a Context,
        _dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
}
