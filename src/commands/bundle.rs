//! `clusterctl bundle ...`
use std::path::PathBuf;

use clap::Subcommand;

use crate::commands::{Global, Output};
use crate::diag::UserError;

use crate::bundle::build::{BuildOptions, build, print_report};

/// `bundle verify`'s exit code for a bundle whose hashes all match but whose signature was not
/// verified (unsigned, or signed with no `--key` given). 1 is a failed check (a hash, a missing
/// blob, a bad signature); 0 means intact and its signature verified.
pub const EXIT_UNAUTHENTICATED: i32 = 3;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Download every item of a manifest, verify its sha256, and pack a bundle.
    Build {
        /// The manifest (YAML), e.g. offline-bundle/kubernetes-1.34.yaml.
        #[arg(long)]
        manifest: PathBuf,
        /// The bundle to write (`.tar.zst`); written atomically.
        #[arg(long)]
        out: PathBuf,
        /// Cache of verified downloads (default: $XDG_CACHE_HOME or ~/.cache/clusterctl/downloads).
        #[arg(long, env = "CLUSTERCTL_DOWNLOAD_CACHE")]
        cache: Option<PathBuf>,
        /// Sign the manifest with this ed25519 PKCS#8 PEM private key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Attempts per item when a connection drops (each resumes).
        #[arg(long, default_value_t = 5)]
        attempts: u32,
        /// Build even where an item has no published sha256 (`hashMissing`): download it once
        /// and record the hash that arrived as "pinned on first download" in the manifest.
        #[arg(long)]
        pin_on_first_download: bool,
        /// Store .debs byte for byte as published. By default their xz-compressed members are
        /// stored expanded (contents unchanged; the published sha256 is kept in the manifest as
        /// `published`): hosts then skip xz, most of what `dpkg -i` costs them.
        #[arg(long)]
        debs_as_published: bool,
    },
    /// Verify every hash and the signature of a bundle. Exit 0: intact and the signature verifies
    /// against --key; 1: a hash, a blob or the signature is wrong; 3: intact but unsigned, or
    /// signed and no --key given (not authenticated).
    Verify {
        bundle: PathBuf,
        /// Public key (SPKI PEM) to check the signature with; required for a signed bundle to count as verified.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Also require the manifest's sha256 to be this value (e.g. published next to the bundle).
        #[arg(long)]
        manifest_sha256: Option<String>,
    },
    /// Sign a bundle's manifest (rewrites the bundle with `manifest.yaml.sig`).
    Sign {
        bundle: PathBuf,
        /// ed25519 private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
    },
    /// Create an ed25519 key pair: <PREFIX>.key (PKCS#8 PEM, 0600) and <PREFIX>.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// What changed between two bundles (or manifest files): components, versions, hashes.
    Diff { a: PathBuf, b: PathBuf },
    /// List a bundle's (or a manifest's) items.
    Ls { bundle: PathBuf },
    /// Write a manifest for local files listed in a TSV file (hashes computed from the files).
    GenManifest {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// Tab-separated: name version kind roles url(file://) install-path mode hash-source [note].
        #[arg(long)]
        items: PathBuf,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        platform: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(g: &Global, c: BundleCmd) -> anyhow::Result<()> {
    let json = g.output != Output::Text;
    match c {
        BundleCmd::Build {
            manifest,
            out,
            cache,
            key,
            attempts,
            pin_on_first_download,
            debs_as_published,
        } => {
            let o = BuildOptions {
                manifest,
                out,
                cache: cache.unwrap_or_else(BuildOptions::default_cache),
                key,
                attempts,
                quiet: json,
                pin_on_first_download,
                debs_as_published,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(build(&o))?;
            if json {
                crate::output::print(g.output, &r)?;
            } else {
                print_report(&r, &mut std::io::stdout())?;
            }
            Ok(())
        }
        BundleCmd::Verify {
            bundle,
            key,
            manifest_sha256,
        } => {
            let k = key
                .as_deref()
                .map(crate::bundle::keys::load_verifying)
                .transpose()?;
            let mut r = crate::bundle::archive::verify(&bundle, k.as_ref())?;
            if let Some(want) = manifest_sha256
                && want.to_ascii_lowercase() != r.manifest_sha256
            {
                r.problems.push(format!(
                    "manifest sha256 is {}, expected {want}",
                    r.manifest_sha256
                ));
            }
            if json {
                crate::output::print(g.output, &r)?;
            } else {
                for p in &r.problems {
                    eprintln!("  FAIL {p}");
                }
                println!(
                    "{}: {} {} — {} items, {} blobs, {:.1} MB hashed in {:.2} s ({:.0} MB/s of bundle, {:.0} MB/s of data); manifest sha256 {}; signature {}",
                    bundle.display(),
                    r.name,
                    r.version,
                    r.items,
                    r.blobs,
                    r.bytes as f64 / 1e6,
                    r.seconds,
                    r.file_mb_per_s(),
                    r.data_mb_per_s(),
                    r.manifest_sha256,
                    r.signature
                );
            }
            if !r.ok() {
                return Err(UserError::failed(format!(
                    "{}: verification failed ({} problem(s))",
                    bundle.display(),
                    r.problems.len()
                ))
                .into());
            }
            // Intact but not authenticated: a distinct exit code, so a script can tell "tampered"
            // (1) from "nobody vouches for it" (3).
            match r.signature.as_str() {
                "unsigned" => Err(UserError::with_code(EXIT_UNAUTHENTICATED, format!(
                        "{}: every hash matches, but the bundle is UNSIGNED: nothing vouches for its manifest (exit {EXIT_UNAUTHENTICATED})\n  fix: sign it with `clusterctl bundle sign --key PRIVATE.key`, then verify with --key PUBLIC.pub",
                        bundle.display()
                    )).into()),
                "not-checked" => Err(UserError::with_code(EXIT_UNAUTHENTICATED, format!(
                        "{}: every hash matches; the bundle is signed, but the signature was NOT checked (exit {EXIT_UNAUTHENTICATED})\n  fix: pass --key with the signer's public key",
                        bundle.display()
                    )).into()),
                _ => Ok(()),
            }
        }
        BundleCmd::Sign { bundle, key } => {
            let k = crate::bundle::keys::load_signing(&key)?;
            // Only sign what verifies: a signature vouches for the content.
            let r = crate::bundle::archive::verify(&bundle, None)?;
            if !r.ok() {
                anyhow::bail!(
                    "{}: not signing a bundle that does not verify:\n  {}",
                    bundle.display(),
                    r.problems.join("\n  ")
                );
            }
            let head = crate::bundle::archive::read_head(&bundle)?;
            let sig = crate::bundle::keys::sign(&k, &head.manifest_bytes);
            crate::bundle::archive::rewrite_with_signature(&bundle, &sig)?;
            println!(
                "{}: signed (manifest sha256 {})",
                bundle.display(),
                head.manifest_sha256()
            );
            Ok(())
        }
        BundleCmd::Keygen { out } => {
            let private = out.with_extension("key");
            let public = out.with_extension("pub");
            crate::bundle::keys::write_pair(&crate::bundle::keys::generate(), &private, &public)?;
            println!("wrote {} and {}", private.display(), public.display());
            Ok(())
        }
        BundleCmd::Diff { a, b } => {
            let (ma, mb) = (
                crate::bundle::load_manifest_any(&a)?,
                crate::bundle::load_manifest_any(&b)?,
            );
            let d = crate::bundle::diff::diff(&ma, &mb);
            if json {
                crate::output::print(g.output, &d)?;
            } else if d.is_empty() {
                println!("no differences");
            } else {
                for c in &d {
                    println!("{c}");
                }
            }
            Ok(())
        }
        BundleCmd::Ls { bundle } => {
            let m = crate::bundle::load_manifest_any(&bundle)?;
            if json {
                crate::output::print(g.output, &m)?;
                return Ok(());
            }
            println!("{} {} ({} items)", m.name, m.version, m.items.len());
            println!(
                "{:26} {:28} {:8} {:>11} {:14} {:30} {:5} SHA256",
                "NAME", "VERSION", "KIND", "SIZE", "ROLES", "INSTALL / IMAGE", "MODE"
            );
            for it in &m.items {
                let roles = it
                    .roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let sha = match (&it.sha256, &it.hash_missing) {
                    (Some(s), _) => s[..16].to_string(),
                    (None, _) => "MISSING".to_string(),
                };
                println!(
                    "{:26} {:28} {:8} {:>11} {:14} {:30} {:5} {sha}",
                    it.name,
                    it.version,
                    it.kind.as_str(),
                    it.size.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    roles,
                    it.install
                        .as_ref()
                        .map(|i| i.path.as_str())
                        .or(it.image.as_deref())
                        .unwrap_or("-"),
                    it.install
                        .as_ref()
                        .and_then(|i| i.mode.as_deref())
                        .unwrap_or("-"),
                );
                if let Some(p) = &it.published {
                    println!("    published: {p}");
                }
                if let Some(n) = &it.note {
                    println!("    note: {n}");
                }
            }
            Ok(())
        }
        BundleCmd::GenManifest {
            name,
            version,
            items,
            description,
            platform,
            out,
        } => {
            let tsv = std::fs::read_to_string(&items)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", items.display()))?;
            let m =
                crate::bundle::genmanifest::from_tsv(&tsv, &name, &version, description, platform)
                    .map_err(|e| anyhow::anyhow!("{}: {e:#}", items.display()))?;
            let y = m.to_yaml()?;
            match out {
                Some(o) => std::fs::write(&o, y)?,
                None => print!("{y}"),
            }
            Ok(())
        }
    }
}
