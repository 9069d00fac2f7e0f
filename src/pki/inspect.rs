//! Reading certificates back (x509-parser): what idempotence checks, expiry reports and tests
//! look at.

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::spec::San;

/// The facts of one certificate that clusterctl cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Sorted, deduplicated.
    pub sans: Vec<San>,
    pub is_ca: bool,
    pub server_auth: bool,
    pub client_auth: bool,
    pub digital_signature: bool,
    pub key_encipherment: bool,
    pub key_cert_sign: bool,
    /// Whether the certificate has a keyUsage extension at all (none: every usage allowed).
    pub key_usage_present: bool,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    /// The whole certificate (DER): what a signature check needs.
    pub der: Vec<u8>,
}

/// Whether `ca` signed `cert`: the issuer names the CA and the CA's key verifies the
/// signature. Names and key ids alone cannot tell two CAs of the same name apart when one
/// was made without a subject key id; the signature can (a CA rotation's old and new CAs).
pub fn signed_by(cert: &CertInfo, ca: &CertInfo) -> bool {
    if cert.issuer_raw != ca.subject_raw {
        return false;
    }
    let (Ok((_, c)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(&cert.der),
        x509_parser::parse_x509_certificate(&ca.der),
    ) else {
        return false;
    };
    c.verify_signature(Some(issuer.public_key())).is_ok()
}

/// DER of the first `CERTIFICATE` block of a PEM text.
pub fn pem_to_der(text: &str, what: &str) -> Result<Vec<u8>> {
    let blocks = pem::parse_many(text).map_err(|e| anyhow!("{what}: not PEM: {e}"))?;
    match blocks.into_iter().find(|b| b.tag() == "CERTIFICATE") {
        Some(b) => Ok(b.into_contents()),
        None => bail!("{what}: no CERTIFICATE block"),
    }
}

pub fn from_pem(text: &str, what: &str) -> Result<CertInfo> {
    from_der(&pem_to_der(text, what)?, what)
}

pub fn from_der(der: &[u8], what: &str) -> Result<CertInfo> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("{what}: not an X.509 certificate: {e}"))?;
    let bad = |e: x509_parser::error::X509Error| anyhow!("{what}: malformed extension: {e}");
    let mut sans = Vec::new();
    if let Some(ext) = c.subject_alternative_name().map_err(bad)? {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(San::Dns(d.to_string())),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => sans.push(San::Ip(IpAddr::from(
                        <[u8; 4]>::try_from(*b).expect("4 bytes"),
                    ))),
                    16 => sans.push(San::Ip(IpAddr::from(
                        <[u8; 16]>::try_from(*b).expect("16 bytes"),
                    ))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    sans.sort();
    sans.dedup();
    let (server_auth, client_auth) = match c.extended_key_usage().map_err(bad)? {
        Some(e) => (e.value.server_auth, e.value.client_auth),
        None => (false, false),
    };
    let ku = c.key_usage().map_err(bad)?.map(|k| *k.value);
    let mut ski = None;
    let mut aki = None;
    for ext in c.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    let strs = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    Ok(CertInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        subject_raw: c.subject().as_raw().to_vec(),
        issuer_raw: c.issuer().as_raw().to_vec(),
        common_name: strs(&mut c.subject().iter_common_name()).join(","),
        organizations: strs(&mut c.subject().iter_organization()),
        sans,
        is_ca: c
            .basic_constraints()
            .map_err(bad)?
            .is_some_and(|b| b.value.ca),
        server_auth,
        client_auth,
        digital_signature: ku.is_some_and(|k| k.digital_signature()),
        key_encipherment: ku.is_some_and(|k| k.key_encipherment()),
        key_cert_sign: ku.is_some_and(|k| k.key_cert_sign()),
        key_usage_present: ku.is_some(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        serial: c.raw_serial_as_string(),
        subject_key_id: ski,
        authority_key_id: aki,
        spki: c.public_key().raw.to_vec(),
        der: der.to_vec(),
    })
}
