//! `certs check-expiration`: every certificate and kubeconfig with subject, issuer, expiry and
//! residual time, from any `CertSource` (the local state directory today; hosts over SSH and
//! live TLS endpoints plug in later by implementing the trait).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::generate::fmt_time;
use super::inspect;
use super::kubeconfig::Kubeconfig;
use super::spec::Ca;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Certificate,
    Kubeconfig,
}

/// One certificate found somewhere.
#[derive(Debug, Clone)]
pub struct Found {
    /// Display name: path relative to the source root without `.crt` (`apiserver`,
    /// `nodes/cp1/etcd/server`) or the kubeconfig's file name (`admin.conf`).
    pub name: String,
    pub kind: Kind,
    /// Where it was read (file path, `host:/path`, `https://host:port`).
    pub location: String,
    /// The certificate PEM (for a kubeconfig: its client certificate).
    pub pem: String,
    /// For a kubeconfig: its `certificate-authority-data` (old + new during a CA rotation).
    pub trust_pem: Option<String>,
}

/// Somewhere certificates can be read from.
pub trait CertSource {
    /// Short label for reports, e.g. `local` or `cp1`.
    fn label(&self) -> String;
    fn certificates(&self) -> Result<Vec<Found>>;
}

/// The local state directory: `pki/**/*.crt` and `kubeconfig/**/*.conf`.
pub struct LocalDir {
    pub pki: PathBuf,
    pub kubeconfig: PathBuf,
}

fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading directory {}", dir.display())),
    };
    for entry in rd {
        let p = entry
            .with_context(|| format!("reading directory {}", dir.display()))?
            .path();
        if p.is_dir() {
            walk(&p, ext, out)?;
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
    Ok(())
}

impl CertSource for LocalDir {
    fn label(&self) -> String {
        "local".into()
    }

    fn certificates(&self) -> Result<Vec<Found>> {
        let mut out = Vec::new();
        let mut crts = Vec::new();
        walk(&self.pki, "crt", &mut crts)?;
        crts.sort();
        for p in crts {
            let pem =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let rel = p.strip_prefix(&self.pki).unwrap_or(&p).with_extension("");
            out.push(Found {
                name: rel.display().to_string(),
                kind: Kind::Certificate,
                location: p.display().to_string(),
                pem,
                trust_pem: None,
            });
        }
        let mut confs = Vec::new();
        walk(&self.kubeconfig, "conf", &mut confs)?;
        confs.sort();
        for p in confs {
            let what = p.display().to_string();
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {what}"))?;
            let kc = Kubeconfig::from_yaml(&text, &what)?;
            let Some(pem) = kc.client_cert_pem().with_context(|| what.clone())? else {
                continue;
            };
            let trust_pem = kc.ca_pem().with_context(|| what.clone())?;
            let rel = p.strip_prefix(&self.kubeconfig).unwrap_or(&p);
            out.push(Found {
                name: rel.display().to_string(),
                kind: Kind::Kubeconfig,
                location: what,
                pem,
                trust_pem,
            });
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub source: String,
    pub name: String,
    pub kind: Kind,
    pub location: String,
    pub subject: String,
    pub issuer: String,
    pub is_ca: bool,
    /// RFC 3339.
    pub not_after: String,
    /// Seconds left (negative once expired).
    pub residual_seconds: i64,
    pub residual: String,
    /// Expires within the threshold (or has expired).
    pub warning: bool,
    /// The CA that signed it, by kubeadm's name (`ca`, `etcd-ca`, `front-proxy-ca`); for a CA
    /// itself, its own name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub certificate_authority: String,
    /// True when clusterctl does not hold the signing CA's key (kubeadm's external CA): it
    /// cannot renew this certificate.
    pub externally_managed: bool,
    /// What `renew-certs --component` calls the component that renews it (empty for a CA).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub component: String,
    /// A CA of a trust bundle while a CA rotation is under way: `old` or `new`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<&'static str>,
    /// A kubeconfig: the CAs its `certificate-authority-data` holds, named as in the CA
    /// table (`ca (old)`, `ca (new)`; `not a local CA: <subject>` for any other).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusts: Vec<String>,
    /// Their certificates (DER).
    #[serde(skip)]
    pub trust_ders: Vec<Vec<u8>>,
    /// The CA whose certificate (in its bundle) verifies this leaf's signature
    /// ([`authorities`]); None: no local CA signed it.
    #[serde(skip)]
    pub signer: Option<Ca>,
    /// The certificate (DER), for the signature checks.
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// The CA whose bundle is the certificate file `name` (relative to `pki/`, no extension):
/// `ca`, `etcd/ca`, `front-proxy-ca`, each one CA, or the old and new ones during a rotation.
pub fn bundle_of(name: &str) -> Option<Ca> {
    Ca::ALL.into_iter().find(|c| c.base() == name)
}

/// Every CA certificate of the CAs' bundles named after its CA, with `old`/`new`
/// while a rotation is under way (`rotation`: `pki/ca-rotation.json`); and every leaf's
/// CERTIFICATE AUTHORITY decided by the CA whose key verifies its signature, not by the
/// bundle's first certificate (during a rotation both CAs share one name). A leaf no CA of
/// the bundles signed keeps an empty `certificate_authority` and no `signer`. A kubeconfig's
/// `trusts` names the CAs of its `certificate-authority-data` the same way.
pub fn authorities(rows: &mut [Row], rotation: Option<&super::rotation::State>) {
    let mut cas: Vec<(Ca, String, inspect::CertInfo)> = Vec::new();
    for r in rows
        .iter_mut()
        .filter(|r| r.is_ca && r.kind == Kind::Certificate)
    {
        let Some(ca) = bundle_of(&r.name) else {
            continue;
        };
        r.rotation = super::rotation::old_or_new(rotation, ca.name(), &r.der);
        let label = match r.rotation {
            Some(which) => format!("{} ({which})", ca.name()),
            None => ca.name().to_string(),
        };
        if let Ok(info) = inspect::from_der(&r.der, &r.location) {
            cas.push((ca, label, info));
        }
    }
    for r in rows.iter_mut().filter(|r| !r.is_ca) {
        let Ok(leaf) = inspect::from_der(&r.der, &r.location) else {
            continue;
        };
        if let Some((ca, label, _)) = cas.iter().find(|(_, _, c)| inspect::signed_by(&leaf, c)) {
            r.signer = Some(*ca);
            r.certificate_authority = label.clone();
        }
        r.trusts = r
            .trust_ders
            .iter()
            .map(|d| match cas.iter().find(|(_, _, c)| c.der == *d) {
                Some((_, label, _)) => label.clone(),
                None => match inspect::from_der(d, &r.location) {
                    Ok(i) => format!("not a local CA: {}", i.subject),
                    Err(e) => format!("not a certificate: {e}"),
                },
            })
            .collect();
    }
}

/// Rows for every certificate of every source; `threshold_secs`: warn when less is left.
pub fn report(sources: &[&dyn CertSource], now: i64, threshold_secs: i64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for s in sources {
        let label = s.label();
        for f in s.certificates()? {
            // A certificate file may be a trust bundle (old + new CA during a rotation): a row
            // for each of its certificates. A kubeconfig: its client certificate.
            let ders = match f.kind {
                Kind::Certificate => {
                    super::rotation::certificates(&f.pem).with_context(|| f.location.clone())?
                }
                Kind::Kubeconfig => vec![inspect::pem_to_der(&f.pem, &f.location)?],
            };
            if ders.is_empty() {
                anyhow::bail!("{}: no CERTIFICATE block", f.location);
            }
            let trust_ders = match &f.trust_pem {
                Some(t) => super::rotation::certificates(t).with_context(|| f.location.clone())?,
                None => Vec::new(),
            };
            for der in ders {
                let info = inspect::from_der(&der, &f.location)?;
                let left = info.not_after - now;
                rows.push(Row {
                    source: label.clone(),
                    name: f.name.clone(),
                    kind: f.kind,
                    location: f.location.clone(),
                    subject: info.subject,
                    issuer: info.issuer,
                    is_ca: info.is_ca,
                    not_after: fmt_time(info.not_after),
                    residual_seconds: left,
                    residual: human(left),
                    warning: left < threshold_secs,
                    certificate_authority: String::new(),
                    externally_managed: false,
                    component: String::new(),
                    rotation: None,
                    trusts: Vec::new(),
                    trust_ders: trust_ders.clone(),
                    signer: None,
                    der,
                });
            }
        }
    }
    Ok(rows)
}

/// `49y 364d`, `179d 23h`, `5h`, `expired`.
pub fn human(secs: i64) -> String {
    if secs <= 0 {
        return "expired".into();
    }
    let days = secs / 86400;
    let (y, d) = (days / 365, days % 365);
    let h = (secs % 86400) / 3600;
    match (y, d) {
        (0, 0) => format!("{}h", h.max(1)),
        (0, d) => format!("{d}d {h}h"),
        (y, d) => format!("{y}y {d}d"),
    }
}

/// Aligned columns, two spaces apart, trailing blanks trimmed.
fn columns(head: &[&str], cells: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for c in cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: &[String]| {
        let s: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(&head.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for c in cells {
        line(c);
    }
    out
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn warning_cell(r: &Row, threshold: &str) -> String {
    if r.residual_seconds <= 0 {
        "EXPIRED".into()
    } else if r.warning {
        format!("expires within {threshold}")
    } else {
        String::new()
    }
}

/// `kubeadm certs check-expiration`'s layout: the leaf certificates and kubeconfigs (named as
/// `renew-certs` names them, with the `--component` that renews each), then the CAs.
pub fn table(rows: &[Row], threshold: &str) -> String {
    let leaves: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| !r.is_ca)
        .map(|r| {
            vec![
                if r.source == "local" {
                    r.name.clone()
                } else {
                    format!("{}:{}", r.source, r.name)
                },
                r.not_after.clone(),
                r.residual.clone(),
                r.certificate_authority.clone(),
                yes_no(r.externally_managed),
                r.component.clone(),
                warning_cell(r, threshold),
            ]
        })
        .collect();
    // The ROTATION column only while a CA rotation is under way (kubeadm's layout otherwise).
    let rotating = rows.iter().any(|r| r.is_ca && r.rotation.is_some());
    let cas: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.is_ca)
        .map(|r| {
            let mut c = vec![
                r.name.clone(),
                r.subject.clone(),
                r.not_after.clone(),
                r.residual.clone(),
                yes_no(r.externally_managed),
            ];
            if rotating {
                c.push(r.rotation.unwrap_or_default().to_string());
            }
            c.push(warning_cell(r, threshold));
            c
        })
        .collect();
    let mut out = columns(
        &[
            "CERTIFICATE",
            "EXPIRES",
            "RESIDUAL TIME",
            "CERTIFICATE AUTHORITY",
            "EXTERNALLY MANAGED",
            "COMPONENT",
            "WARNING",
        ],
        &leaves,
    );
    out.push('\n');
    let mut head = vec![
        "CERTIFICATE AUTHORITY",
        "SUBJECT",
        "EXPIRES",
        "RESIDUAL TIME",
        "EXTERNALLY MANAGED",
    ];
    if rotating {
        head.push("ROTATION");
    }
    head.push("WARNING");
    out.push_str(&columns(&head, &cas));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::rotation::{self, Stage, State};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// A CA named like the cluster CA (an old and a new one share the name).
    fn ca() -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "kubernetes");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = p.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(p, key))
    }

    /// A leaf without an authority key id: only its signature says which CA made it.
    fn leaf(cn: &str, by: &Issuer<'static, KeyPair>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.signed_by(&key, by).unwrap().pem()
    }

    fn der(pem: &str) -> Vec<u8> {
        inspect::pem_to_der(pem, "test").unwrap()
    }

    /// `pki/` with `ca.crt` = `bundle`, and the given leaves; its rows with their authorities.
    fn rows(bundle: &str, leaves: &[(&str, &str)], state: Option<&State>) -> Vec<Row> {
        let d = tempfile::tempdir().unwrap();
        let pki = d.path().join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("ca.crt"), bundle).unwrap();
        for (name, pem) in leaves {
            std::fs::write(pki.join(format!("{name}.crt")), pem).unwrap();
        }
        let local = LocalDir {
            pki,
            kubeconfig: d.path().join("kubeconfig"),
        };
        let sources: [&dyn CertSource; 1] = [&local];
        let mut rows = report(&sources, 0, 0).unwrap();
        authorities(&mut rows, state);
        rows
    }

    fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn every_ca_of_a_bundle_is_a_row_and_a_leaf_names_the_ca_that_signed_it() {
        let ((old_pem, old), (new_pem, new)) = (ca(), ca());
        // The trust stage's bundle: old first. A leaf of the new CA (a re-issue under way) is
        // the new CA's, though the old one comes first in the file.
        let bundle = format!("{old_pem}{new_pem}");
        let leaves = [
            ("apiserver", leaf("kube-apiserver", &new)),
            (
                "apiserver-kubelet-client",
                leaf("kube-apiserver-kubelet-client", &old),
            ),
            ("stray", leaf("stray", &ca().1)),
        ];
        let leaves: Vec<(&str, &str)> = leaves.iter().map(|(n, p)| (*n, p.as_str())).collect();

        // No rotation recorded: both CAs are `ca`, without old/new.
        let r = rows(&bundle, &leaves, None);
        let cas: Vec<&Row> = r.iter().filter(|r| r.is_ca).collect();
        assert_eq!(cas.len(), 2, "{r:?}");
        assert_eq!(cas[0].der, der(&old_pem));
        assert_eq!(cas[1].der, der(&new_pem));
        assert!(cas.iter().all(|c| c.name == "ca" && c.rotation.is_none()));
        assert!(
            cas[0].subject.contains("CN=kubernetes"),
            "{}",
            cas[0].subject
        );
        assert_eq!(row(&r, "apiserver").signer, Some(Ca::Cluster));
        assert_eq!(row(&r, "apiserver").certificate_authority, "ca");
        assert_eq!(row(&r, "stray").signer, None);
        assert_eq!(row(&r, "stray").certificate_authority, "");

        // A rotation under way: each CA and each leaf says old or new.
        let mut st = State {
            stage: Stage::Trust,
            finished: true,
            started: "t".into(),
            old: [("ca".to_string(), rotation::fingerprint(&der(&old_pem)))].into(),
            new: [("ca".to_string(), rotation::fingerprint(&der(&new_pem)))].into(),
            backup: None,
        };
        let r = rows(&bundle, &leaves, Some(&st));
        let cas: Vec<&Row> = r.iter().filter(|r| r.is_ca).collect();
        assert_eq!(
            cas.iter().map(|c| c.rotation).collect::<Vec<_>>(),
            [Some("old"), Some("new")]
        );
        assert_eq!(row(&r, "apiserver").certificate_authority, "ca (new)");
        assert_eq!(
            row(&r, "apiserver-kubelet-client").certificate_authority,
            "ca (old)"
        );
        let t = table(&r, "180d");
        assert!(t.contains("ROTATION") && t.contains("SUBJECT"), "{t}");
        let json = serde_json::to_value(row(&r, "ca")).unwrap();
        assert_eq!(json["rotation"], "old", "{json}");
        assert!(json.get("der").is_none() && json.get("signer").is_none());

        // After `finish`: the new CA alone, no old/new any more, the old CA's leaf signed by
        // no CA of the bundle.
        st.stage = Stage::Finish;
        let r = rows(&new_pem, &leaves, Some(&st));
        assert_eq!(r.iter().filter(|r| r.is_ca).count(), 1);
        assert!(r.iter().all(|r| r.rotation.is_none()));
        assert_eq!(row(&r, "apiserver").certificate_authority, "ca");
        assert_eq!(row(&r, "apiserver-kubelet-client").signer, None);
        assert!(!table(&r, "180d").contains("ROTATION"));
    }

    #[test]
    fn human_residual() {
        assert_eq!(super::human(-5), "expired");
        assert_eq!(super::human(60), "1h");
        assert_eq!(super::human(3 * 86400 + 7200), "3d 2h");
        assert_eq!(super::human(50 * 365 * 86400 + 86400), "50y 1d");
    }
}
