//! `clusterctl certs ...`
use anyhow::Result;
use clap::Subcommand;

use crate::commands::{Global, Output, load_inventory, state_dir};
use crate::diag::UserError;
use crate::pki::expiry::{self, CertSource, LocalDir};
use crate::pki::generate::{self, Action, Layout, Settings};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Generate (or complete) the cluster PKI locally under clusters/<name>/pki.
    Generate,
    /// List every certificate and kubeconfig with its expiry: the local PKI, the files on every
    /// host (over SSH; keys are never read) and what every etcd, apiserver and kubelet endpoint
    /// serves (over TLS). Exit 1 when a host's file differs from the local PKI (not distributed)
    /// or an endpoint serves another certificate than its file (a renewal not loaded).
    CheckExpiration {
        /// Warn about certificates that expire within this time (y/d/h/m).
        #[arg(long, default_value = "180d")]
        warn_within: String,
        /// Only these hosts (comma separated).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Only the local PKI: no SSH, no TLS.
        #[arg(long, conflicts_with = "hosts")]
        local_only: bool,
    },
}

pub fn run(g: &Global, c: CertsCmd) -> Result<()> {
    let loaded = load_inventory(g)?;
    let layout = Layout::new(&state_dir(g, &loaded));
    match c {
        CertsCmd::Generate => {
            let settings = Settings::from_inventory(&loaded.inventory, |p| loaded.resolve(p))
                .map_err(|e| UserError::bad_input(format!("{}: {e:#}", g.inventory.display())))?;
            let out = generate::generate(&loaded.inventory, &settings, &layout)?;
            match g.output {
                Output::Json | Output::Yaml => crate::output::print(g.output, &out)?,
                Output::Text => {
                    for i in out
                        .items
                        .iter()
                        .filter(|i| i.action != Action::Kept || g.verbose > 0)
                    {
                        let reason = i
                            .reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default();
                        println!(
                            "{:<9} {:<30} {}{reason}",
                            format!("{:?}", i.action).to_lowercase(),
                            i.name,
                            i.path.display()
                        );
                    }
                    for b in &out.backups {
                        println!("backup    {}", b.display());
                    }
                    println!(
                        "{}: {} created, {} re-issued, {} adopted, {} rewritten, {} kept",
                        layout.root.display(),
                        out.count(Action::Created),
                        out.count(Action::Reissued),
                        out.count(Action::Adopted),
                        out.count(Action::Rewritten),
                        out.count(Action::Kept)
                    );
                }
            }
            Ok(())
        }
        CertsCmd::CheckExpiration {
            warn_within,
            hosts,
            local_only,
        } => {
            for h in &hosts {
                if loaded.inventory.host(h).is_none() {
                    return Err(UserError::bad_input(format!(
                        "--hosts: `{h}` is not a host of {}",
                        loaded.path.display()
                    ))
                    .into());
                }
            }
            let threshold = crate::duration::parse(&warn_within)
                .map_err(|e| UserError::bad_input(format!("--warn-within: {e}")))?;
            let local = LocalDir {
                pki: layout.pki.clone(),
                kubeconfig: layout.kubeconfig.clone(),
            };
            let sources: [&dyn CertSource; 1] = [&local];
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut rows = expiry::report(&sources, now, threshold.as_secs() as i64)?;
            let rotation = crate::pki::rotation::read_state(&layout.pki)?;
            expiry::authorities(&mut rows, rotation.as_ref());
            let rows = named_for_the_inventory(&loaded.inventory, &layout, rows);
            if rows.is_empty() {
                return Err(UserError::failed(format!(
                    "no certificates under {}: run `clusterctl certs generate` first",
                    layout.root.display()
                ))
                .into());
            }
            let (host_files, served) = if local_only {
                (Vec::new(), Vec::new())
            } else {
                let state = state_dir(g, &loaded);
                let rt = tokio::runtime::Runtime::new()?;
                rt.block_on(crate::commands::cert_hosts::inspect_hosts(
                    &loaded,
                    &state,
                    &hosts,
                    now,
                    threshold.as_secs() as i64,
                ))?
            };
            match g.output {
                Output::Json | Output::Yaml => crate::output::print(
                    g.output,
                    &serde_json::json!({
                        "warnWithin": warn_within,
                        "certificates": rows,
                        "hostFiles": host_files,
                        "served": served,
                    }),
                )?,
                Output::Text => {
                    print!("{}", expiry::table(&rows, &warn_within));
                    if !local_only {
                        print!(
                            "{}",
                            crate::commands::cert_hosts::table(&host_files, &served)
                        );
                    }
                    let n = rows.iter().filter(|r| r.warning).count()
                        + host_files.iter().filter(|r| r.warning).count();
                    if n > 0 {
                        eprintln!("warning: {n} certificate(s) expire within {warn_within}");
                    }
                }
            }
            let problems = crate::commands::cert_hosts::problems(&host_files, &served);
            if problems > 0 {
                return Err(UserError::failed(format!(
                    "{problems} problem(s): host files that differ from the local PKI, or endpoints that do not serve their file (see above; `clusterctl renew-certs` or `clusterctl init --only-phase pki` puts them right)"
                ))
                .into());
            }
            // Monitoring runs this and alerts on the exit code: expired or expiring is not "ok".
            let expiring = rows.iter().filter(|r| r.warning).count()
                + host_files.iter().filter(|r| r.warning).count();
            if expiring > 0 {
                return Err(UserError::with_code(
                    crate::diag::EXIT_EXPIRING,
                    format!(
                        "{expiring} certificate(s) expired or expire within {warn_within} (exit {})",
                        crate::diag::EXIT_EXPIRING
                    ),
                )
                .with_fix("clusterctl renew-certs [--component NAME]")
                .into());
            }
            Ok(())
        }
    }
}

/// The report's rows for what the inventory has now, named as `renew-certs` names them
/// (`apiserver@cp1`, `admin.conf`), with whether their CA is external (no key here) and the
/// `--component` that renews them; the CA that signed each ([`expiry::authorities`]) stays,
/// and a leaf none of the local CAs signed says which one should have. Files of hosts no
/// longer in the inventory are left out: they are nobody's certificates.
fn named_for_the_inventory(
    inv: &crate::inventory::Inventory,
    layout: &Layout,
    rows: Vec<expiry::Row>,
) -> Vec<expiry::Row> {
    use crate::pki::spec::{Ca, cert_list};
    let external = |ca: Ca| !layout.pki.join(format!("{}.key", ca.base())).is_file();
    let component = |name: &str| {
        let base = name.split('@').next().unwrap_or_default();
        crate::phases::certs::COMPONENTS
            .iter()
            .find(|(_, bases)| bases.contains(&base))
            .map(|(c, _)| c.to_string())
            .unwrap_or_default()
    };
    let specs = cert_list(inv);
    rows.into_iter()
        .filter_map(|mut r| {
            if r.is_ca && r.kind == expiry::Kind::Certificate {
                let ca = expiry::bundle_of(&r.name)?;
                r.externally_managed = external(ca);
                r.name = ca.name().to_string();
                r.certificate_authority = r.name.clone();
                return Some(r);
            }
            let spec = specs.iter().find(|s| match r.kind {
                expiry::Kind::Certificate => s
                    .files
                    .as_ref()
                    .is_some_and(|f| f.to_string_lossy() == r.name),
                expiry::Kind::Kubeconfig => s
                    .kubeconfig
                    .as_ref()
                    .is_some_and(|k| k.file.to_string_lossy() == r.name),
            })?;
            r.name = match (&r.kind, &spec.kubeconfig) {
                // kubelet.conf embeds kubelet-client's certificate: named as the file.
                (expiry::Kind::Kubeconfig, Some(k)) if !spec.name.contains(".conf") => {
                    let file = k
                        .file
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    match &spec.host {
                        Some(h) => format!("{file}@{h}"),
                        None => file,
                    }
                }
                _ => spec.name.clone(),
            };
            match r.signer {
                Some(ca) => r.externally_managed = external(ca),
                None => {
                    r.certificate_authority =
                        format!("NONE: not signed by the local {}", spec.ca.name());
                    r.externally_managed = external(spec.ca);
                }
            }
            r.component = component(&spec.name);
            Some(r)
        })
        .collect()
}
