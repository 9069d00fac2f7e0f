//! Private keys: generation (ECDSA P-256 by ring through rcgen; RSA by the pure-Rust `rsa`
//! crate, then handed to rcgen/ring as PKCS#8) and loading of PEM keys in the encodings
//! kubeadm and OpenSSL write (PKCS#8, PKCS#1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`).

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData};
use rustls::pki_types::PrivatePkcs8KeyDer;

use crate::inventory::KeyAlgorithm;

/// A fresh key pair for `alg`.
pub fn generate(alg: KeyAlgorithm) -> Result<KeyPair> {
    match alg {
        KeyAlgorithm::EcdsaP256 => {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating an ECDSA P-256 key")
        }
        KeyAlgorithm::Rsa2048 => generate_rsa(2048),
        KeyAlgorithm::Rsa4096 => generate_rsa(4096),
    }
}

fn generate_rsa(bits: usize) -> Result<KeyPair> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand::rng(), bits)
        .map_err(|e| anyhow!("generating an RSA {bits} key: {e}"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| anyhow!("encoding an RSA key as PKCS#8: {e}"))?;
    rsa_from_pkcs8(der.as_bytes())
}

fn rsa_from_pkcs8(der: &[u8]) -> Result<KeyPair> {
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &PKCS_RSA_SHA256)
        .map_err(|e| anyhow!("ring cannot use this RSA key: {e}"))
}

/// Parses a PEM private key; `what` names the file in errors.
pub fn from_pem(text: &str, what: &str) -> Result<KeyPair> {
    let block = pem::parse(text).map_err(|e| anyhow!("{what}: not a PEM private key: {e}"))?;
    match block.tag() {
        "PRIVATE KEY" => KeyPair::try_from(block.contents()).map_err(|e| {
            anyhow!("{what}: unsupported PKCS#8 key (use ECDSA P-256/P-384, Ed25519 or RSA): {e}")
        }),
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let k = rsa::RsaPrivateKey::from_pkcs1_der(block.contents())
                .map_err(|e| anyhow!("{what}: bad PKCS#1 RSA key: {e}"))?;
            let der = k.to_pkcs8_der().map_err(|e| anyhow!("{what}: {e}"))?;
            rsa_from_pkcs8(der.as_bytes()).with_context(|| what.to_string())
        }
        "EC PRIVATE KEY" => {
            use p256::pkcs8::EncodePrivateKey;
            let k = p256::SecretKey::from_sec1_der(block.contents()).map_err(|e| {
                anyhow!("{what}: only P-256 is supported for SEC1 `EC PRIVATE KEY` files: {e}")
            })?;
            let der = k.to_pkcs8_der().map_err(|e| anyhow!("{what}: {e}"))?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der.as_bytes()),
                &PKCS_ECDSA_P256_SHA256,
            )
            .map_err(|e| anyhow!("{what}: {e}"))
        }
        other => bail!("{what}: PEM block `{other}` is not a private key"),
    }
}

/// Which of the inventory's algorithms `key` is (None: another kind, e.g. an adopted P-384).
pub fn algorithm_of(key: &KeyPair) -> Option<KeyAlgorithm> {
    if key.algorithm() == &PKCS_ECDSA_P256_SHA256 {
        return Some(KeyAlgorithm::EcdsaP256);
    }
    if key.algorithm() == &PKCS_RSA_SHA256 {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let k = rsa::RsaPublicKey::from_public_key_der(&key.subject_public_key_info()).ok()?;
        return match k.size() * 8 {
            2048 => Some(KeyAlgorithm::Rsa2048),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        };
    }
    None
}

/// Whether `cert_spki` (DER SubjectPublicKeyInfo) is the public half of `key`.
pub fn matches(key: &KeyPair, cert_spki: &[u8]) -> bool {
    key.subject_public_key_info() == cert_spki
}
