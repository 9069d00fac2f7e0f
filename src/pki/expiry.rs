//! `certs check-expiration`: every certificate and kubeconfig with subject, issuer, expiry and
//! residual time, from any `CertSource` (the local state directory today; hosts over SSH and
//! live TLS endpoints plug in later by implementing the trait).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::generate::fmt_time;
use super::inspect;
use super::kubeconfig::Kubeconfig;

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
            let rel = p.strip_prefix(&self.kubeconfig).unwrap_or(&p);
            out.push(Found {
                name: rel.display().to_string(),
                kind: Kind::Kubeconfig,
                location: what,
                pem,
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
}

/// Rows for every certificate of every source; `threshold_secs`: warn when less is left.
pub fn report(sources: &[&dyn CertSource], now: i64, threshold_secs: i64) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for s in sources {
        let label = s.label();
        for f in s.certificates()? {
            let info = inspect::from_pem(&f.pem, &f.location)?;
            let left = info.not_after - now;
            rows.push(Row {
                source: label.clone(),
                name: f.name,
                kind: f.kind,
                location: f.location,
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
            });
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

/// kubeadm's name of the CA whose files sit at `base` (relative to `pki/`, no extension).
pub fn ca_name(base: &str) -> String {
    match base {
        "etcd/ca" => "etcd-ca".into(),
        other => other.replace('/', "-"),
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
    let cas: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.is_ca)
        .map(|r| {
            vec![
                r.name.clone(),
                r.not_after.clone(),
                r.residual.clone(),
                yes_no(r.externally_managed),
                warning_cell(r, threshold),
            ]
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
    out.push_str(&columns(
        &[
            "CERTIFICATE AUTHORITY",
            "EXPIRES",
            "RESIDUAL TIME",
            "EXTERNALLY MANAGED",
            "WARNING",
        ],
        &cas,
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_residual() {
        assert_eq!(super::human(-5), "expired");
        assert_eq!(super::human(60), "1h");
        assert_eq!(super::human(3 * 86400 + 7200), "3d 2h");
        assert_eq!(super::human(50 * 365 * 86400 + 86400), "50y 1d");
    }
}
