//! ed25519 keys for bundle signatures, as PEM files: PKCS#8 private keys, SPKI public keys.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

pub fn generate() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// Writes `<prefix>.key` (PKCS#8, mode 0600) and `<prefix>.pub` (SPKI); refuses to overwrite.
pub fn write_pair(key: &SigningKey, private: &Path, public: &Path) -> anyhow::Result<()> {
    for p in [private, public] {
        if p.exists() {
            anyhow::bail!("{} already exists; not overwriting a key", p.display());
        }
    }
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode key: {e}"))?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(private)
            .with_context(|| format!("cannot create {}", private.display()))?;
        f.write_all(pem.as_bytes())?;
    }
    let pubpem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode key: {e}"))?;
    std::fs::write(public, pubpem).with_context(|| format!("cannot write {}", public.display()))?;
    Ok(())
}

pub fn load_signing(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an ed25519 PKCS#8 PEM private key ({e})",
            path.display()
        )
    })
}

/// A public key file, or a private key file (its public half is used).
pub fn load_verifying(path: &Path) -> anyhow::Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key {}", path.display()))?;
    if let Ok(k) = VerifyingKey::from_public_key_pem(&text) {
        return Ok(k);
    }
    SigningKey::from_pkcs8_pem(&text)
        .map(|k| k.verifying_key())
        .map_err(|_| {
            anyhow::anyhow!(
                "{}: not an ed25519 public key (SPKI PEM) or PKCS#8 private key",
                path.display()
            )
        })
}

pub fn sign(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    key.sign(manifest).to_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_signature() {
        let d = tempfile::tempdir().unwrap();
        let k = generate();
        let (a, b) = (d.path().join("k.key"), d.path().join("k.pub"));
        write_pair(&k, &a, &b).unwrap();
        assert!(write_pair(&k, &a, &b).is_err(), "must not overwrite");
        let k2 = load_signing(&a).unwrap();
        let v = load_verifying(&b).unwrap();
        assert_eq!(load_verifying(&a).unwrap(), v);
        let sig = sign(&k2, b"manifest");
        assert!(super::super::archive::check_signature(&v, b"manifest", &sig).is_ok());
        assert!(super::super::archive::check_signature(&v, b"manifest!", &sig).is_err());
        assert!(
            super::super::archive::check_signature(&generate().verifying_key(), b"manifest", &sig)
                .is_err()
        );
        assert!(load_signing(&b).is_err());
    }
}
