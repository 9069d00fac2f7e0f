//! Whether a bundle may be installed: its manifest's ed25519 signature checked against the key
//! the inventory names (`spec.bundle.publicKey`). The manifest carries the sha256 of every item,
//! and every item is checked against it as it is read (`archive::stream_items`), so a verified
//! signature vouches for every byte that reaches a host.
//!
//! Policy, decided once here for `init`, `join`, `upgrade`, `plan` (and every command that
//! loads the bundle):
//! - `publicKey` set: the bundle must be signed, and the signature must verify.
//! - no `publicKey`, bundle signed: refused (nothing to check the signature with) unless
//!   `allowUnsigned: true`.
//! - no `publicKey`, bundle unsigned: refused unless `allowUnsigned: true`.
//!
//! What was decided is said in every plan (see [`Trust`]'s `Display`).

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::archive::{Head, check_signature};

/// How a bundle that may be installed is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The manifest's signature verified against this key.
    Verified { key: PathBuf, fingerprint: String },
    /// No signature; installed because the inventory says `allowUnsigned: true`.
    UnsignedAllowed,
    /// Signed, but no key was given to check it; installed because of `allowUnsigned: true`.
    UncheckedAllowed,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Verified { key, fingerprint } => write!(
                f,
                "signature verified with {} (ed25519 {fingerprint})",
                key.display()
            ),
            Trust::UnsignedAllowed => f.write_str(
                "UNSIGNED: installed without a signature because spec.bundle.allowUnsigned is true",
            ),
            Trust::UncheckedAllowed => f.write_str(
                "signature NOT checked (no spec.bundle.publicKey): installed because spec.bundle.allowUnsigned is true",
            ),
        }
    }
}

/// A short, stable name of a public key: the first 16 hex digits of the sha256 of its 32 bytes.
pub fn fingerprint(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// A refusal: what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  fix: {}", self.message, self.fix)
    }
}

/// Decides whether the bundle at `bundle` (whose head is `head`) may be installed.
/// `key` is the inventory's `publicKey` (path as written, resolved path's key).
pub fn decide(
    bundle: &Path,
    head: &Head,
    key: Option<(&Path, &VerifyingKey)>,
    allow_unsigned: bool,
) -> Result<Trust, Refused> {
    let b = bundle.display();
    match (key, &head.signature) {
        (Some((path, k)), Some(sig)) => match check_signature(k, &head.manifest_bytes, sig) {
            Ok(()) => Ok(Trust::Verified {
                key: path.to_path_buf(),
                fingerprint: fingerprint(k),
            }),
            Err(e) => Err(Refused {
                message: format!(
                    "bundle {b}: {e} ({} is ed25519 {})",
                    path.display(),
                    fingerprint(k)
                ),
                fix: "use the bundle as its publisher signed it (or `clusterctl bundle sign` it with the key whose public half spec.bundle.publicKey names)".into(),
            }),
        },
        (Some((path, _)), None) => Err(Refused {
            message: format!(
                "bundle {b} is unsigned, but spec.bundle.publicKey ({}) requires a signature",
                path.display()
            ),
            fix: "sign it: `clusterctl bundle sign BUNDLE --key PRIVATE.key` (or build it with `--key`)".into(),
        }),
        (None, _) if allow_unsigned => Ok(if head.signature.is_some() {
            Trust::UncheckedAllowed
        } else {
            Trust::UnsignedAllowed
        }),
        (None, Some(_)) => Err(Refused {
            message: format!(
                "bundle {b} is signed, but spec.bundle.publicKey is not set: nothing to check the signature with"
            ),
            fix: "set spec.bundle to {path: BUNDLE, publicKey: SIGNER.pub} (the public key the publisher gave you)".into(),
        }),
        (None, None) => Err(Refused {
            message: format!(
                "bundle {b} is unsigned: nothing vouches for its manifest (and so for the binaries it installs as root)"
            ),
            fix: "sign it (`clusterctl bundle keygen`, `clusterctl bundle sign`) and set spec.bundle to {path: BUNDLE, publicKey: SIGNER.pub}; or, knowingly, add `allowUnsigned: true` to spec.bundle".into(),
        }),
    }
}

/// The inventory's bundle, opened for installing: its path, head (manifest) and how it is
/// trusted. `Ok(None)` when the inventory names no bundle. Every refusal is bad input (exit 2,
/// no host touched) naming the inventory's line.
pub fn open_for_install(
    loaded: &crate::inventory::Loaded,
) -> Result<Option<(PathBuf, Head, Trust)>, crate::diag::UserError> {
    use crate::diag::UserError;
    let Some(spec) = &loaded.inventory.spec.bundle else {
        return Ok(None);
    };
    let at = |field: &str| {
        let pos = loaded
            .source_map
            .value(field)
            .or_else(|| loaded.source_map.value("spec.bundle"));
        format!(
            "{}{}: {field}",
            loaded.path.display(),
            pos.map(|p| format!(":{}:{}", p.line, p.column))
                .unwrap_or_default()
        )
    };
    let path = loaded.resolve(&spec.path);
    if !path.is_file() {
        return Err(UserError::bad_input(format!(
            "{}: {} does not exist\n  fix: build it with `clusterctl bundle build` or correct the path (relative to the inventory file)",
            at("spec.bundle"),
            path.display()
        )));
    }
    let key = match &spec.public_key {
        None => None,
        Some(k) => {
            let kp = loaded.resolve(k);
            let key = super::keys::load_verifying(&kp).map_err(|e| {
                UserError::bad_input(format!(
                    "{}: {e:#}\n  fix: point publicKey at the bundle signer's public key (`clusterctl bundle keygen` writes it as PREFIX.pub)",
                    at("spec.bundle.publicKey")
                ))
            })?;
            Some((k.clone(), key))
        }
    };
    let head = super::read_head(&path)
        .map_err(|e| UserError::bad_input(format!("{}: {e:#}", at("spec.bundle"))))?;
    let trust = decide(
        &path,
        &head,
        key.as_ref().map(|(p, k)| (p.as_path(), k)),
        spec.allow_unsigned,
    )
    .map_err(|r| UserError::bad_input(format!("{}: {r}", at("spec.bundle"))))?;
    Ok(Some((path, head, trust)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::keys;

    fn head(signature: Option<Vec<u8>>) -> Head {
        let y = "name: t\nversion: '1'\nitems: []\n";
        Head {
            manifest_bytes: y.as_bytes().to_vec(),
            manifest: crate::bundle::Manifest {
                api_version: crate::bundle::manifest::API_VERSION.into(),
                name: "t".into(),
                version: "1".into(),
                description: None,
                platform: None,
                items: Vec::new(),
            },
            signature,
        }
    }

    #[test]
    fn every_case_of_the_policy() {
        let k = keys::generate();
        let v = k.verifying_key();
        let p = Path::new("b.pub");
        let b = Path::new("x.tar.zst");
        let good = keys::sign(&k, &head(None).manifest_bytes);
        let random: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();

        let t = decide(b, &head(Some(good.clone())), Some((p, &v)), false).unwrap();
        assert!(
            t.to_string().contains("signature verified with b.pub"),
            "{t}"
        );
        // A random 64-byte signature, a signature by another key: refused.
        let e = decide(b, &head(Some(random)), Some((p, &v)), false).unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
        let other = keys::generate().verifying_key();
        assert!(decide(b, &head(Some(good.clone())), Some((p, &other)), true).is_err());
        // A key is named: unsigned refused even with allowUnsigned.
        let e = decide(b, &head(None), Some((p, &v)), true).unwrap_err();
        assert!(e.message.contains("is unsigned"), "{e}");
        // No key: refused unless allowed, and then said plainly.
        let e = decide(b, &head(None), None, false).unwrap_err();
        assert!(
            e.message.contains("is unsigned") && e.fix.contains("allowUnsigned"),
            "{e}"
        );
        let e = decide(b, &head(Some(good.clone())), None, false).unwrap_err();
        assert!(e.message.contains("publicKey is not set"), "{e}");
        let t = decide(b, &head(None), None, true).unwrap();
        assert!(t.to_string().starts_with("UNSIGNED"), "{t}");
        let t = decide(b, &head(Some(good)), None, true).unwrap();
        assert!(t.to_string().contains("NOT checked"), "{t}");
    }
}
