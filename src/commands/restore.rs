//! `clusterctl restore ARCHIVE [--dry-run]`: the command layer of the restore playbook
//! (`playbooks/restore.yaml`, phases in `phases::restore`). Before any host is touched: the
//! archive's signature (the cluster's backup-signing key, see `commands::seal`) and payload are
//! verified on this machine, it is decrypted with `--identity` and unpacked into a private
//! temporary directory (removed afterwards) and checked against its manifest; it must belong to this
//! inventory's cluster (name and etcd members), and the user confirms (or `--yes`). Then the
//! one runner does the rest: snapshot onto the etcd hosts, control plane then etcd stopped,
//! every member rebuilt from the snapshot with a new cluster token (old data directories moved
//! aside, never deleted; put back on failure), apiservers behind /readyz, then
//! controller-managers, schedulers and kubelets one host at a time behind their gates.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Instant;

use super::backup_archive::{self as archive, Manifest, SNAPSHOT};
use std::path::PathBuf;

use clap::Args;

use super::backup::{human, stamp};
use crate::commands::cluster::{Scope, execute, prepare};
use crate::commands::{Global, Output};
use crate::diag::UserError;
use crate::inventory::Inventory;
use crate::phases::restore::RestoreInputs;

/// Why an archive is not this cluster's, or None when it is.
pub fn mismatch(m: &Manifest, inv: &Inventory) -> Option<String> {
    if m.cluster != inv.name() {
        return Some(format!(
            "the archive is a backup of cluster {:?}, the inventory's cluster is {:?}",
            m.cluster,
            inv.name()
        ));
    }
    let mut theirs = m.etcd.members.clone();
    theirs.sort();
    let mut ours: Vec<archive::Member> = inv
        .etcd_hosts()
        .map(|h| archive::Member {
            name: h.name.to_string(),
            address: h.address.to_string(),
        })
        .collect();
    ours.sort();
    if theirs != ours {
        let show = |v: &[archive::Member]| {
            v.iter()
                .map(|m| format!("{}={}", m.name, m.address))
                .collect::<Vec<_>>()
                .join(",")
        };
        return Some(format!(
            "the archive's etcd members ({}) differ from the inventory's ({}): restore rebuilds the members the backup was taken with",
            show(&theirs),
            show(&ours)
        ));
    }
    None
}

/// `clusterctl restore ARCHIVE`.
pub fn run(g: &Global, a: &RestoreArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let nothing = "nothing was touched";
    if !a.archive.is_file() {
        return Err(UserError::bad_input(format!(
            "{}: no such file; {nothing}",
            a.archive.display()
        ))
        .into());
    }
    // Authenticated before anything is decrypted or unpacked: signed by this cluster's
    // backup-signing key (or the one `--signer` names), the payload the one signed.
    let trusted = {
        let ctx = super::context(g)?;
        super::seal::trusted_key(&ctx.state, a.signer.as_deref())
            .map_err(|e| UserError::bad_input(format!("{e:#}\n  {nothing}")))?
    };
    let identities = a
        .identity
        .as_deref()
        .map(super::seal::load_identities)
        .transpose()
        .map_err(|e| UserError::bad_input(format!("{e:#}\n  {nothing}")))?;
    let opened = super::seal::open(&a.archive, &trusted)
        .map_err(|e| UserError::bad_input(format!("{e:#}\n  {nothing}")))?;
    let encrypted = opened.sealed.encrypted;
    // The archive holds every CA key: unpacked only into a private (0700) directory that is
    // removed when restore ends, whatever happens.
    let tmp = tempfile::Builder::new()
        .prefix("clusterctl-restore-")
        .tempdir()?;
    let manifest = opened
        .unpack(identities.as_deref(), tmp.path(), archive::MAX_UNPACKED)
        .map_err(|e| UserError::bad_input(format!("{e:#}\n  {nothing}")))?;
    let v = archive::Verified {
        manifest,
        dir: tmp.path().to_path_buf(),
        sha256: String::new(),
        checksum_file: true,
    };
    let when = stamp(time::OffsetDateTime::now_utc());
    let options = crate::engine::RunOptions {
        dry_run: a.dry_run,
        restore: Some(RestoreInputs {
            snapshot: v.dir.join(SNAPSHOT),
            stamp: when,
        }),
        ..Default::default()
    };
    let (ctx, runner) = prepare(g, "restore", &Scope::default(), options)?;
    if let Some(why) = mismatch(&v.manifest, ctx.inv()) {
        return Err(UserError::bad_input(format!(
            "{}: {why} ({}); {nothing}",
            a.archive.display(),
            ctx.loaded.path.display()
        ))
        .into());
    }
    if !encrypted {
        eprintln!(
            "note: {} is not encrypted (it was taken with spec.backup.unencrypted: true); its signature was checked",
            a.archive.display()
        );
    }
    let m = &v.manifest;
    let inv = ctx.inv();
    let names = |hs: Vec<&crate::inventory::Host>| {
        hs.iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let aside = crate::phases::restore::aside(&ctx);
    eprintln!(
        "restore {}: etcd snapshot of {} taken {} from {} (revision {}, {} keys).\n\
         This stops every apiserver ({}) and every etcd member ({}), moves each member's {} aside to {aside}, \
         and rebuilds the members from the snapshot: everything written to the cluster since {} is lost.",
        a.archive.display(),
        m.cluster,
        m.created,
        m.etcd.snapshot_from,
        m.etcd.status.revision,
        m.etcd.status.total_key,
        names(inv.control_plane_hosts().collect()),
        names(inv.etcd_hosts().collect()),
        inv.spec.etcd.data_dir,
        m.created
    );
    if !g.yes && !a.dry_run {
        confirm(inv, nothing)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    let (report, recorded) = execute(&rt, &ctx, &runner, a.dry_run)?;
    let secs = started.elapsed().as_secs_f64();
    let token = crate::phases::restore::token(&ctx);
    match g.output {
        Output::Json | Output::Yaml => crate::output::print(
            g.output,
            &serde_json::json!({
                "command": "restore",
                "dryRun": a.dry_run,
                "archive": a.archive,
                "cluster": inv.name(),
                "snapshotTaken": m.created,
                "revision": m.etcd.status.revision,
                "token": token,
                "oldDataDirs": inv.etcd_hosts().map(|h| (h.name.to_string(), aside.clone())).collect::<Vec<_>>(),
                "seconds": secs,
                "steps": report.phases.iter().map(|p| (p.phase.clone(), p.seconds)).collect::<Vec<_>>(),
                "wouldChange": crate::commands::cluster::would_change(&recorded),
                "phases": report.phases,
            }),
        )?,
        Output::Text => {
            for (host, what) in &recorded {
                println!("{host}: {what}");
            }
            println!(
                "restore of {}{}: done in {secs:.1}s from {} (taken {}, revision {}, {}); new etcd cluster token {token}",
                inv.name(),
                if a.dry_run {
                    " (dry run: nothing was changed)"
                } else {
                    ""
                },
                a.archive.display(),
                m.created,
                m.etcd.status.revision,
                human(
                    m.files
                        .iter()
                        .find(|f| f.path == SNAPSHOT)
                        .map_or(0, |f| f.size)
                ),
            );
            for (line, p) in report.phase_lines().iter().zip(&report.phases) {
                println!("{line}");
                for l in &p.cluster {
                    println!("  ok {l}");
                }
            }
            if !a.dry_run {
                for h in inv.etcd_hosts() {
                    println!("  {}: the old data directory is kept at {aside}", h.name);
                }
            }
        }
    }
    Ok(())
}

/// The user types the cluster's name.
fn confirm(inv: &Inventory, nothing: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(UserError::bad_input(format!(
            "restore asks for confirmation and standard input is not a terminal: run again with --yes (or --dry-run); {nothing}"
        ))
        .into());
    }
    eprint!("Type the cluster name ({}) to go on: ", inv.name());
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != inv.name() {
        return Err(UserError::failed(format!("not confirmed; {nothing}")).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        let yaml = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: c1}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: h1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: h2, address: 10.0.0.2, roles: [etcd, control-plane]}
    - {name: h3, address: 10.0.0.3, roles: [etcd]}
    - {name: w1, address: 10.0.0.4, roles: [worker]}
"#;
        crate::inventory::load_str(yaml, std::path::Path::new("inventory.yaml"))
            .unwrap()
            .inventory
    }

    fn manifest(inv: &Inventory) -> Manifest {
        Manifest {
            format: archive::FORMAT.into(),
            cluster: "c1".into(),
            created: "t".into(),
            clusterctl_version: "0".into(),
            inventory_file: "inventory.yaml".into(),
            etcd: archive::EtcdInfo {
                members: inv
                    .etcd_hosts()
                    .map(|h| archive::Member {
                        name: h.name.to_string(),
                        address: h.address.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect(),
                snapshot_from: "h1".into(),
                version: None,
                data_dir: "/var/lib/etcd".into(),
                status: archive::SnapshotStatus {
                    hash: 0,
                    revision: 1,
                    total_key: 1,
                    total_size: 1,
                },
            },
            files: vec![],
        }
    }

    #[test]
    fn an_archive_belongs_by_cluster_name_and_members() {
        let inv = inv();
        let mut m = manifest(&inv);
        assert_eq!(mismatch(&m, &inv), None, "member order does not matter");
        m.cluster = "other".into();
        assert!(mismatch(&m, &inv).unwrap().contains("\"other\""));
        let mut m = manifest(&inv);
        m.etcd.members[0].address = "10.0.0.9".into();
        let e = mismatch(&m, &inv).unwrap();
        assert!(
            e.contains("h3=10.0.0.9") && e.contains("h3=10.0.0.3"),
            "{e}"
        );
        let mut m = manifest(&inv);
        m.etcd.members.pop();
        assert!(mismatch(&m, &inv).is_some());
    }
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// A backup written by `clusterctl backup` (`<cluster>-<time>.backup`): its signature is
    /// checked before anything is decrypted or unpacked.
    pub archive: PathBuf,
    /// The age identity file (`age-keygen -o FILE`) of one of the archive's recipients
    /// (`spec.backup.recipients`): needed to decrypt it.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The public key the archive must be signed with (`clusters/<name>/backup-signing.pub`
    /// of the machine that took it). Default: this machine's key for the cluster.
    #[arg(long, value_name = "FILE")]
    pub signer: Option<PathBuf>,
    /// Verify the archive and print what would be done on each host; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
