//! The commands: argument definitions, dispatch, and one module per verb that parses its
//! arguments, builds the playbook the engine runs (or reads, for the read-only verbs) and reports.
//! The top layer: nothing below imports it.

pub mod backup;
pub mod backup_archive;
pub mod bundle;
pub mod cert_hosts;
pub mod certs;
pub mod cluster;
pub mod kubeconfig;
pub mod reset;
pub mod restore;
pub mod seal;
pub mod status;
pub mod upgrade;

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::diag::{Diagnostics, EXIT_BAD_INPUT, UserError};
use crate::engine::Context;
use crate::inventory::{self, Loaded};

#[derive(Parser, Debug)]
#[command(
    name = "clusterctl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CLUSTERCTL_GIT_COMMIT"), ")"),
    about = "Install and run HA Kubernetes clusters on plain Linux hosts over SSH",
    after_help = "Not Cluster API's `clusterctl`: see the README (\"Which clusterctl\") to keep both on one machine.\nExit codes: 0 ok, 1 failed, 2 bad input (nothing touched), 3 bundle not authenticated, 4 certificates expire within --warn-within."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Inventory file (YAML).
    #[arg(
        short,
        long,
        global = true,
        env = "CLUSTERCTL_INVENTORY",
        default_value = "inventory.yaml"
    )]
    pub inventory: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// More detail (-v, -vv, -vvv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Answer yes to confirmations (destructive steps still print what they do).
    #[arg(long, global = true)]
    pub yes: bool,
    /// Where cluster state (PKI, known_hosts, journal, logs) lives; default: the inventory's
    /// directory. State goes to `<dir>/clusters/<name>/`.
    #[arg(long, global = true, env = "CLUSTERCTL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Take the hosts' run markers (/var/lib/clusterctl/run.lock) even when another machine's
    /// run left them: for a run that is gone (its machine died). See "How `init` works".
    #[arg(long, global = true)]
    pub break_lock: bool,
    /// No live per-host lines on a terminal: the plain timestamped lines of a pipe or CI
    /// (which never get the live view anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

pub use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a cluster: PKI, etcd, load balancer, control plane, nodes, add-ons.
    Init(crate::commands::cluster::RunArgs),
    /// Add the hosts that are new in the inventory.
    Join(crate::commands::cluster::RunArgs),
    /// Roll a new version through the cluster.
    Upgrade(crate::commands::upgrade::UpgradeArgs),
    /// Re-issue certificates from the existing CAs and restart what loads them, one host at a
    /// time in a safe order (etcd, apiservers, controller-managers, schedulers, nodes), without
    /// dropping the API; running containers are not restarted.
    RenewCerts(crate::commands::cluster::RenewArgs),
    /// Print, per host and in order, what `init` would do; touches nothing.
    Plan(crate::commands::cluster::PlanArgs),
    /// The cluster's health on one screen (or -o json), read now: etcd members (leader, DB
    /// size, health, version), each apiserver's readyz, the VIP holder, nodes and their
    /// versions, the nearest certificate expiry, what differs from the inventory. Exit 1 when
    /// anything is unhealthy.
    Status,
    /// Certificates: generate locally, report expiry.
    #[command(subcommand)]
    Certs(crate::commands::certs::CertsCmd),
    /// Snapshot etcd plus the local PKI and inventory into one archive (or, with --schedule,
    /// install a snapshot timer on the etcd hosts).
    Backup(crate::commands::backup::BackupArgs),
    /// Restore etcd from a backup archive: every member rebuilt from the snapshot.
    Restore(crate::commands::restore::RestoreArgs),
    /// Take hosts out of the cluster (drain + delete the node, etcd member remove) and remove
    /// what clusterctl installed on them; data is deleted only after a confirmation (--yes).
    Reset(crate::commands::reset::ResetArgs),
    /// Offline bundles: build, verify, sign, diff, ls.
    #[command(subcommand)]
    Bundle(crate::commands::bundle::BundleCmd),
    /// Inventory tools.
    #[command(subcommand)]
    Inventory(InventoryCmd),
    /// Print the admin kubeconfig, or merge it into $KUBECONFIG / ~/.kube/config (--merge).
    Kubeconfig(crate::commands::kubeconfig::KubeconfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout, or write one page per command into --dir.
    Man {
        /// Write clusterctl.1 and clusterctl-<command>.1 files here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the version, the git commit it was built from and the supported Kubernetes minors.
    Version,
}

#[derive(Subcommand, Debug)]
pub enum InventoryCmd {
    /// Check an inventory; every problem with file:line:column and a fix; exit 2 on errors.
    Validate,
    /// Convert another tool's inventory into a clusterctl inventory (YAML on stdout).
    Import {
        /// The tool the file comes from.
        #[arg(long, value_enum)]
        from: ImportFrom,
        /// Its inventory file (kubeasz: clusters/<name>/hosts).
        path: PathBuf,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Kubernetes version, when the kubeasz files do not say (no config.yml with K8S_VER).
        #[arg(long)]
        kubernetes_version: Option<String>,
        /// Cluster name (default: config.yml's CLUSTER_NAME, else the hosts file's directory).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ImportFrom {
    Kubeasz,
}

/// Entry point: parses arguments, runs, prints errors; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::console::init(cli.global.no_progress);
    crate::logging::init(cli.global.verbose);
    let output = cli.global.output;
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let code = report(&e);
            if output != Output::Text && !crate::output::printed() {
                // A script reads one object on stdout whatever happened; stderr keeps the text.
                let failure = crate::output::Failure::from_error(&e, code);
                let _ = crate::output::print(output, &failure);
            }
            code
        }
    }
}

fn report(e: &anyhow::Error) -> i32 {
    if let Some(d) = e.downcast_ref::<Diagnostics>() {
        eprintln!("{d}");
        return EXIT_BAD_INPUT;
    }
    if let Some(u) = e.downcast_ref::<UserError>() {
        eprintln!("error: {u}");
        return u.code;
    }
    eprintln!("error: {e:#}");
    crate::diag::EXIT_FAILED
}

/// Loads and validates the inventory named by `-i`, printing its warnings to stderr.
pub fn load_inventory(g: &Global) -> anyhow::Result<Loaded> {
    let loaded = inventory::load(&g.inventory)?;
    tracing::info!(
        inventory = %g.inventory.display(),
        cluster = loaded.inventory.name(),
        hosts = loaded.inventory.spec.hosts.len(),
        "inventory loaded"
    );
    for w in loaded.warnings.warnings() {
        eprintln!("{w}");
    }
    Ok(loaded)
}

/// The cluster's state directory for a loaded inventory.
pub fn state_dir(g: &Global, loaded: &Loaded) -> crate::state::StateDir {
    let base = match &g.state_dir {
        Some(d) => d.clone(),
        None => loaded
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    crate::state::StateDir::new(&base, loaded.inventory.name())
}

/// The commands that change a cluster hold its operator lock for their whole run (see
/// `phases::lock`); read-only ones (plan, status, certificate reports) and `--dry-run` runs,
/// which change nothing either, do not (nor do they create the state directory for it).
fn changes_the_cluster(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::Init(a) if !a.dry_run => "init",
        Command::Join(a) if !a.dry_run => "join",
        Command::RenewCerts(a) if !a.run.dry_run => "renew-certs",
        Command::Upgrade(a) if a.action.is_none() && !a.dry_run => "upgrade",
        Command::Backup(a) if !a.dry_run => "backup",
        Command::Restore(a) if !a.dry_run => "restore",
        Command::Reset(a) if !a.dry_run => "reset",
        _ => return None,
    })
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    // An inventory that does not load is reported by the command itself, before any host.
    let _lock = match (
        changes_the_cluster(&cli.command),
        inventory::load(&g.inventory),
    ) {
        (Some(command), Ok(loaded)) => Some(crate::engine::lock::OperatorLock::acquire(
            &state_dir(g, &loaded).root,
            command,
        )?),
        _ => None,
    };
    match cli.command {
        Command::Init(a) => crate::commands::cluster::run("init", g, &a),
        Command::Join(a) => crate::commands::cluster::run("join", g, &a),
        Command::Upgrade(a) => crate::commands::upgrade::run(g, &a),
        Command::RenewCerts(a) => crate::commands::cluster::renew_certs(g, &a),
        Command::Plan(a) => crate::commands::cluster::plan(g, &a),
        Command::Status => crate::commands::status::run(g),
        Command::Certs(c) => crate::commands::certs::run(g, c),
        Command::Backup(a) => crate::commands::backup::run(g, &a),
        Command::Restore(a) => crate::commands::restore::run(g, &a),
        Command::Reset(a) => crate::commands::reset::run(g, &a),
        Command::Bundle(c) => crate::commands::bundle::run(g, c),
        Command::Inventory(InventoryCmd::Validate) => validate_cmd(g),
        Command::Inventory(InventoryCmd::Import {
            from: ImportFrom::Kubeasz,
            path,
            out,
            kubernetes_version,
            name,
        }) => {
            let opts = inventory::kubeasz::ImportOptions {
                kubernetes_version,
                name,
            };
            let (yaml, notes) = inventory::kubeasz::import_to_yaml(&path, &opts)?;
            for n in &notes {
                eprintln!("note: {n}");
            }
            // Check what we produce with the same rules as `inventory validate`.
            let shown = out.clone().unwrap_or_else(|| PathBuf::from("<imported>"));
            if let Err(d) = inventory::load_str(&yaml, &shown) {
                eprintln!("the imported inventory needs changes before use:\n{d}");
            }
            match out {
                Some(o) => std::fs::write(&o, yaml)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", o.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Command::Completion { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "clusterctl", &mut script);
            crate::stdout::write_bytes(&script);
            Ok(())
        }
        Command::Kubeconfig(a) => crate::commands::kubeconfig::run(g, &a),
        Command::Man { dir } => man(dir.as_deref()),
        Command::Version => {
            let supported = crate::version::KubeVersion::supported_list();
            match g.output {
                Output::Json | Output::Yaml => crate::output::print(
                    g.output,
                    &serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "commit": env!("CLUSTERCTL_GIT_COMMIT"), "kubernetesMinors": supported}),
                )?,
                Output::Text => println!(
                    "clusterctl {} (commit {}; Kubernetes {supported})",
                    env!("CARGO_PKG_VERSION"),
                    env!("CLUSTERCTL_GIT_COMMIT")
                ),
            }
            Ok(())
        }
    }
}

/// The man pages, from the same clap definitions as `--help`, so they never disagree.
fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        None => {
            // Into memory first, as completions: a closed pipe must not panic the renderer.
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            crate::stdout::write_bytes(&page);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                anyhow::anyhow!("cannot write man pages into {}: {e}", dir.display())
            })?;
            println!("man pages written to {}", dir.display());
        }
    }
    Ok(())
}

fn validate_cmd(g: &Global) -> anyhow::Result<()> {
    match inventory::load(&g.inventory) {
        Ok(loaded) => {
            let n = loaded.inventory.spec.hosts.len();
            match g.output {
                Output::Json | Output::Yaml => crate::output::print(
                    g.output,
                    &serde_json::json!({"valid": true, "file": g.inventory, "hosts": n, "diagnostics": loaded.warnings.items}),
                )?,
                Output::Text => {
                    for w in loaded.warnings.warnings() {
                        eprintln!("{w}");
                    }
                    println!(
                        "{}: valid ({n} hosts, {} warning(s))",
                        g.inventory.display(),
                        loaded.warnings.items.len()
                    );
                }
            }
            Ok(())
        }
        Err(d) => {
            let e: anyhow::Error = d.into();
            if g.output != Output::Text {
                // The failure object every command prints, plus the validation verdict.
                let f = crate::output::Failure::from_error(&e, EXIT_BAD_INPUT);
                crate::output::print(
                    g.output,
                    &serde_json::json!({
                        "valid": false,
                        "file": g.inventory,
                        "error": f.error,
                        "host": f.host,
                        "phase": f.phase,
                        "fix": f.fix,
                        "exitCode": f.exit_code,
                        "diagnostics": f.diagnostics,
                    }),
                )?;
            }
            Err(e)
        }
    }
}

/// The context of a command that runs no playbook: inventory, state dir, templates.
pub fn context(g: &Global) -> anyhow::Result<Context> {
    let loaded = load_inventory(g)?;
    let state = state_dir(g, &loaded);
    let render = crate::render::Renderer::new(Some(&state.root.join("templates")))?;
    Ok(Context {
        loaded,
        state,
        render,
        host_filter: vec![],
        bundle: None,
        options: Default::default(),
        facts: Default::default(),
    })
}
