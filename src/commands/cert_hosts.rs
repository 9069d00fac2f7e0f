//! What the hosts hold and what their endpoints serve, for `certs check-expiration`: every
//! certificate file and kubeconfig a host should have (read over SSH; private keys are never
//! read), compared with the local PKI, and every TLS endpoint's served certificate compared with
//! the file on its host. A file that differs from the local PKI was not distributed; an endpoint
//! that serves something else than its file has not loaded a renewal yet.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::inventory::{Inventory, Loaded};
use crate::phases::certs::{Endpoint, check_served, endpoints};
use crate::pki::inspect::{self, CertInfo};
use crate::pki::kubeconfig::Kubeconfig;
use crate::state::StateDir;

/// One certificate file or kubeconfig on a host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFileRow {
    pub host: String,
    pub path: String,
    pub serial: Option<String>,
    pub not_after: Option<String>,
    pub residual: Option<String>,
    /// Expires within the threshold (or has expired).
    pub warning: bool,
    /// The same certificate as the local PKI's copy.
    pub matches_local: bool,
    /// Issued by the cluster to a TLS-bootstrap worker's kubelet, which renews it (the local
    /// PKI has no copy): its issuer is checked instead, and it warns only once past the
    /// kubelet's renewal window (90 % of its lifetime), when the renewal did not happen.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cluster_rotated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A TLS-bootstrap worker's kubelet certificates (each file holds the key too: only its
/// CERTIFICATE blocks are read).
pub const ROTATED: [&str; 2] = [
    "/var/lib/kubelet/pki/kubelet-client-current.pem",
    "/var/lib/kubelet/pki/kubelet-server-current.pem",
];

/// Like [`read_script`] for files that hold a key after their certificate: only the
/// CERTIFICATE blocks are printed.
fn read_certs_only_script(paths: &[&str]) -> crate::ssh::shell::Shell {
    crate::ssh::shell::Script::new(
        r#"for f in "$@"; do if [ -r "$f" ]; then echo "==> $f"; sed -n '/^-----BEGIN CERTIFICATE-----$/,/^-----END CERTIFICATE-----$/p' "$f"; echo; else echo "==> $f MISSING"; fi; done"#,
    )
    .args(paths)
    .into()
}

/// The row of a cluster-rotated certificate read from `text` (see [`HostFileRow::cluster_rotated`]).
fn rotated_row(
    host: &str,
    path: &str,
    text: Option<&str>,
    ca: Option<&CertInfo>,
    now: i64,
) -> HostFileRow {
    let mut row = HostFileRow {
        host: host.to_string(),
        path: path.to_string(),
        serial: None,
        not_after: None,
        residual: None,
        warning: false,
        matches_local: false,
        cluster_rotated: true,
        error: None,
    };
    let Some(text) = text else {
        row.error = Some("missing on the host".into());
        return row;
    };
    match inspect::from_pem(text, path) {
        Ok(c) => {
            let left = c.not_after - now;
            let lifetime = (c.not_after - c.not_before).max(1);
            row.warning = left < lifetime / 10;
            row.residual = Some(crate::pki::expiry::human(left));
            row.not_after = Some(crate::pki::generate::fmt_time(c.not_after));
            // Its issuer's name and key: the CA's (a CA being rotated in has the same name).
            if let Some(ca) = ca
                && !crate::pki::rotation::signed_by(&c, ca)
            {
                row.error = Some(format!("not issued by the cluster CA ({})", c.issuer));
            }
            row.serial = Some(c.serial);
        }
        Err(e) => row.error = Some(format!("{e:#}")),
    }
    row
}

/// One TLS endpoint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedRow {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub what: String,
    pub certificate: String,
    pub served_serial: Option<String>,
    pub served_not_after: Option<String>,
    /// The local PKI's certificate.
    pub file_serial: Option<String>,
    /// The file the endpoint serves from, on its host.
    pub file_on_host_serial: Option<String>,
    /// Serves the file on its host (false: a renewal not loaded yet).
    pub loaded: bool,
    /// Serves the local PKI's certificate.
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The certificate in a file's text: a PEM certificate, or a kubeconfig's client certificate.
fn cert_of(path: &str, text: &str) -> Result<CertInfo> {
    if path.ends_with(".conf") {
        let kc = Kubeconfig::from_yaml(text, path)?;
        let pem = kc
            .client_cert_pem()?
            .ok_or_else(|| anyhow::anyhow!("{path}: no client certificate"))?;
        inspect::from_pem(&pem, path)
    } else {
        inspect::from_pem(text, path)
    }
}

/// Every certificate a file holds, in order (DER): a PEM file's, or a kubeconfig's client
/// certificate and CA data. What "the same as the local PKI's copy" compares: a trust bundle
/// (old + new CA during a rotation) or a kubeconfig's CA data differs from its local copy even
/// where the first certificate (or the client certificate) is the same. None: unreadable.
fn certificates_of(path: &str, text: &str) -> Option<Vec<Vec<u8>>> {
    if path.ends_with(".conf") {
        let kc = Kubeconfig::from_yaml(text, path).ok()?;
        let mut all = Vec::new();
        for pem in [kc.client_cert_pem().ok()?, kc.ca_pem().ok()?]
            .into_iter()
            .flatten()
        {
            all.extend(crate::pki::rotation::certificates(&pem).ok()?);
        }
        Some(all)
    } else {
        crate::pki::rotation::certificates(text).ok()
    }
}

/// A shell script printing each file under a `==> path` header (`==> path MISSING` when
/// absent); kubeconfigs without their `client-key-data` line.
fn read_script(paths: &[String]) -> crate::ssh::shell::Shell {
    crate::ssh::shell::Script::new(
        r#"for f in "$@"; do if [ -r "$f" ]; then echo "==> $f"; grep -v 'client-key-data' "$f"; echo; else echo "==> $f MISSING"; fi; done"#,
    )
    .args(paths)
    .into()
}

/// Splits `read_script`'s output into path → text (None: missing).
fn parse_sections(out: &str) -> BTreeMap<String, Option<String>> {
    let mut m = BTreeMap::new();
    let mut cur: Option<(String, String, bool)> = None;
    for line in out.lines() {
        if let Some(h) = line.strip_prefix("==> ") {
            if let Some((p, t, missing)) = cur.take() {
                m.insert(p, (!missing).then_some(t));
            }
            let (p, missing) = match h.strip_suffix(" MISSING") {
                Some(p) => (p.to_string(), true),
                None => (h.to_string(), false),
            };
            cur = Some((p, String::new(), missing));
        } else if let Some((_, t, _)) = cur.as_mut() {
            t.push_str(line);
            t.push('\n');
        }
    }
    if let Some((p, t, missing)) = cur {
        m.insert(p, (!missing).then_some(t));
    }
    m
}

/// Reads the hosts (`hosts`: names; empty: all) over SSH and their endpoints over TLS.
pub async fn inspect_hosts(
    loaded: &Loaded,
    state: &StateDir,
    hosts: &[String],
    now: i64,
    threshold_secs: i64,
) -> Result<(Vec<HostFileRow>, Vec<ServedRow>)> {
    let inv: &Inventory = &loaded.inventory;
    let chosen = |name: &str| hosts.is_empty() || hosts.iter().any(|h| h == name);
    let chosen_hosts: Vec<&crate::inventory::Host> =
        inv.spec.hosts.iter().filter(|h| chosen(&h.name)).collect();
    let pool = crate::engine::ssh_exec::connect_hosts(loaded, state, &chosen_hosts).await?;
    // Per host: its certificate files and kubeconfigs (not keys), local and remote.
    let per_host: Vec<(String, Vec<(String, std::path::PathBuf)>)> = chosen_hosts
        .iter()
        .map(|h| {
            let files = crate::pki::files_for_host(inv, h)
                .into_iter()
                .filter_map(|f| {
                    let r = f.remote.to_string_lossy().into_owned();
                    (r.ends_with(".crt") || r.ends_with(".conf"))
                        .then(|| (r, state.root.join(&f.local)))
                })
                .collect();
            (h.name.to_string(), files)
        })
        .collect();
    let reads = futures::future::join_all(per_host.iter().map(|(h, files)| {
        let pool = &pool;
        async move {
            let paths: Vec<String> = files.iter().map(|(r, _)| r.clone()).collect();
            let o = pool
                .run(h, &read_script(&paths), crate::ssh::ExecOpts::root())
                .await;
            (h.clone(), o)
        }
    }))
    .await;
    // TLS-bootstrap workers: the certificates their kubelet requested and renews.
    let rotated_hosts: Vec<String> = chosen_hosts
        .iter()
        .filter(|h| inv.kubelet_bootstraps(h))
        .map(|h| h.name.to_string())
        .collect();
    let rotated_reads = futures::future::join_all(rotated_hosts.iter().map(|h| {
        let pool = &pool;
        async move {
            let o = pool
                .run(
                    h,
                    &read_certs_only_script(&ROTATED),
                    crate::ssh::ExecOpts::root(),
                )
                .await;
            (h.clone(), o)
        }
    }))
    .await;
    pool.close().await;
    let ca = std::fs::read_to_string(state.pki().join("ca.crt"))
        .ok()
        .and_then(|t| inspect::from_pem(&t, "ca.crt").ok());
    let mut rows = Vec::new();
    for (host, out) in rotated_reads {
        let sections = match out {
            Ok(o) => parse_sections(&o.stdout),
            Err(e) => anyhow::bail!("{host}: reading its kubelet certificates: {e}"),
        };
        for path in ROTATED {
            let text = sections.get(path).cloned().flatten();
            rows.push(rotated_row(&host, path, text.as_deref(), ca.as_ref(), now));
        }
    }
    let mut on_host: BTreeMap<(String, String), String> = BTreeMap::new();
    for ((host, files), (_, out)) in per_host.iter().zip(reads) {
        let sections = match out {
            Ok(o) => parse_sections(&o.stdout),
            Err(e) => anyhow::bail!("{host}: reading its certificates: {e}"),
        };
        for (remote, local) in files {
            // The local copy, read once, when it holds a certificate.
            let local_path = local.to_string_lossy();
            let local_text = std::fs::read_to_string(local)
                .ok()
                .filter(|t| cert_of(&local_path, t).is_ok());
            let mut row = HostFileRow {
                host: host.clone(),
                path: remote.clone(),
                serial: None,
                not_after: None,
                residual: None,
                warning: false,
                matches_local: false,
                cluster_rotated: false,
                error: None,
            };
            match sections.get(remote) {
                Some(Some(text)) => match cert_of(remote, text) {
                    Ok(c) => {
                        let left = c.not_after - now;
                        row.warning = left < threshold_secs;
                        row.residual = Some(crate::pki::expiry::human(left));
                        row.not_after = Some(crate::pki::generate::fmt_time(c.not_after));
                        row.matches_local = local_text.as_deref().is_some_and(|l| {
                            certificates_of(remote, text) == certificates_of(&local_path, l)
                        });
                        on_host.insert((host.clone(), remote.clone()), c.serial.clone());
                        row.serial = Some(c.serial);
                    }
                    Err(e) => row.error = Some(format!("{e:#}")),
                },
                _ => row.error = Some("missing on the host".into()),
            }
            rows.push(row);
        }
    }
    let eps: Vec<Endpoint> = endpoints(inv, &state.pki())
        .into_iter()
        .filter(|e| chosen(&e.host))
        .collect();
    let served = futures::future::join_all(eps.iter().map(check_served))
        .await
        .into_iter()
        .map(|c| {
            let file_on_host = on_host
                .get(&(c.endpoint.host.clone(), c.endpoint.remote.to_string()))
                .cloned();
            ServedRow {
                loaded: c.served_serial.is_some() && c.served_serial == file_on_host,
                current: c.current,
                host: c.endpoint.host,
                address: c.endpoint.address,
                port: c.endpoint.port,
                what: c.endpoint.what.to_string(),
                certificate: c.endpoint.certificate,
                served_serial: c.served_serial,
                served_not_after: c.served_not_after,
                file_serial: c.file_serial,
                file_on_host_serial: file_on_host,
                error: c.error,
            }
        })
        .collect();
    Ok((rows, served))
}

/// The human form: host files that differ or expire soon, then every endpoint.
pub fn table(rows: &[HostFileRow], served: &[ServedRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "\nON THE HOSTS ({} files)", rows.len());
    let _ = writeln!(
        s,
        "{:<8} {:<48} {:<22} {:<10} STATE",
        "HOST", "FILE", "EXPIRES", "RESIDUAL"
    );
    for r in rows {
        let state = match (&r.error, r.matches_local) {
            (Some(e), _) => format!("ERROR: {e}"),
            (None, _) if r.cluster_rotated && r.warning => {
                "cluster-rotated, but past the kubelet's renewal window (see its journal)".into()
            }
            (None, _) if r.cluster_rotated => "cluster-rotated (the kubelet renews it)".into(),
            (None, false) => "DIFFERS from the local PKI (not distributed)".into(),
            (None, true) if r.warning => "expires soon".into(),
            _ => "ok".into(),
        };
        let _ = writeln!(
            s,
            "{:<8} {:<48} {:<22} {:<10} {state}",
            r.host,
            r.path,
            r.not_after.as_deref().unwrap_or("-"),
            r.residual.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(s, "\nSERVED OVER TLS ({} endpoints)", served.len());
    let _ = writeln!(
        s,
        "{:<8} {:<6} {:<15} {:<22} STATE",
        "HOST", "PORT", "WHAT", "EXPIRES"
    );
    for e in served {
        let state = match (&e.error, e.loaded, e.current) {
            (Some(err), _, _) if e.served_serial.is_none() => format!("ERROR: {err}"),
            (_, false, _) => {
                "NOT LOADED: serves another certificate than the file on its host (restart it)"
                    .into()
            }
            (_, true, false) => "serves its file, which differs from the local PKI".into(),
            _ => "ok".into(),
        };
        let _ = writeln!(
            s,
            "{:<8} {:<6} {:<15} {:<22} {state}",
            e.host,
            e.port,
            e.what,
            e.served_not_after.as_deref().unwrap_or("-")
        );
    }
    s
}

/// Problems worth a non-zero exit: files not distributed or unreadable, renewals not loaded,
/// endpoints that did not answer.
pub fn problems(rows: &[HostFileRow], served: &[ServedRow]) -> usize {
    rows.iter()
        .filter(|r| r.error.is_some() || !(r.matches_local || r.cluster_rotated))
        .count()
        + served.iter().filter(|s| !s.loaded).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a leaf it signed valid from `from` to `to` (Unix seconds), as PEM.
    fn ca_and_leaf(from: i64, to: i64) -> (String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
        let mut l = rcgen::CertificateParams::new(vec!["h6".to_string()]).unwrap();
        l.distinguished_name
            .push(rcgen::DnType::CommonName, "system:node:h6");
        l.not_before = time::OffsetDateTime::from_unix_timestamp(from).unwrap();
        l.not_after = time::OffsetDateTime::from_unix_timestamp(to).unwrap();
        // As Go's x509 (the controller-manager's signer) does.
        l.use_authority_key_identifier_extension = true;
        let leaf = l
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        (ca.pem(), leaf.pem())
    }

    /// A kubelet-rotated certificate is no problem while the kubelet can still renew it
    /// (even within --warn-within), warns once past 90 % of its lifetime, and is an error
    /// when another CA issued it or it is missing.
    #[test]
    fn cluster_rotated_certificates_warn_only_past_the_renewal_window() {
        let day = 86_400;
        let now = 1_800_000_000;
        let (ca, leaf) = ca_and_leaf(now - 200 * day, now + 165 * day);
        let ca_info = inspect::from_pem(&ca, "ca").unwrap();
        let r = rotated_row("h6", ROTATED[0], Some(&leaf), Some(&ca_info), now);
        assert!(
            r.cluster_rotated && !r.warning && r.error.is_none(),
            "{r:?}"
        );
        assert_eq!(problems(std::slice::from_ref(&r), &[]), 0);
        assert!(table(&[r], &[]).contains("cluster-rotated (the kubelet renews it)"));
        let (_, late) = ca_and_leaf(now - 340 * day, now + 25 * day);
        let (other_ca, _) = ca_and_leaf(now, now + day);
        let r = rotated_row("h6", ROTATED[0], Some(&late), Some(&ca_info), now);
        assert!(r.warning, "{r:?}");
        let other = inspect::from_pem(&other_ca, "other").unwrap();
        let r = rotated_row("h6", ROTATED[0], Some(&leaf), Some(&other), now);
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("not issued by the cluster CA")
        );
        assert_eq!(problems(&[r], &[]), 1);
        let r = rotated_row("h6", ROTATED[1], None, Some(&ca_info), now);
        assert_eq!(r.error.as_deref(), Some("missing on the host"));
    }

    #[test]
    fn the_rotated_read_prints_certificates_never_the_key() {
        let d = tempfile::tempdir().unwrap();
        let (_, leaf) = ca_and_leaf(0, 2_000_000_000);
        let f = d.path().join("kubelet-client-current.pem");
        std::fs::write(
            &f,
            format!(
                "{leaf}-----BEGIN EC PRIVATE KEY-----\nc2VjcmV0\n-----END EC PRIVATE KEY-----\n"
            ),
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let script = read_certs_only_script(&[path]);
        let o = script.local().output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("BEGIN CERTIFICATE"), "{out}");
        assert!(
            !out.contains("PRIVATE KEY") && !out.contains("c2VjcmV0"),
            "{out}"
        );
    }

    /// A trust bundle or a kubeconfig's CA data is "the local copy" only with every
    /// certificate the same: a host still on the old CA alone differs from old + new.
    #[test]
    fn a_bundle_matches_its_local_copy_only_with_every_certificate() {
        let (old, _) = ca_and_leaf(0, 2_000_000_000);
        let (new, leaf) = ca_and_leaf(0, 2_000_000_000);
        let both = format!("{old}{new}");
        assert_eq!(
            certificates_of("/etc/kubernetes/pki/ca.crt", &both),
            certificates_of("ca.crt", &both)
        );
        assert_ne!(
            certificates_of("/etc/kubernetes/pki/ca.crt", &old),
            certificates_of("ca.crt", &both)
        );
        let conf = |ca: &str| {
            Kubeconfig::new("c", "https://10.0.0.1:6443", ca, "u", &leaf, "key")
                .to_yaml()
                .unwrap()
        };
        let (on_host, local) = (conf(&old), conf(&both));
        let client = |t: &str| cert_of("kubelet.conf", t).unwrap().serial;
        assert_eq!(
            client(&on_host),
            client(&local),
            "the same client certificate"
        );
        assert_ne!(
            certificates_of("kubelet.conf", &on_host),
            certificates_of("kubelet.conf", &local)
        );
    }

    #[test]
    fn sections_split_files_and_mark_missing_ones() {
        let out = "==> /a.crt\n-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n\n==> /b.conf MISSING\n==> /c.conf\napiVersion: v1\n";
        let m = parse_sections(out);
        assert_eq!(m.len(), 3);
        assert!(
            m["/a.crt"]
                .as_deref()
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert_eq!(m["/b.conf"], None);
        assert_eq!(m["/c.conf"].as_deref(), Some("apiVersion: v1\n"));
    }

    #[test]
    fn the_read_script_never_prints_a_private_key() {
        // Run for real on a kubeconfig with a key and on a missing file.
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("kubelet.conf");
        std::fs::write(
            &conf,
            "users:\n- user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n",
        )
        .unwrap();
        let paths = [
            conf.to_str().unwrap().to_string(),
            "/nonexistent/x.conf".to_string(),
        ];
        let s = read_script(&paths);
        let o = s.local().output().unwrap();
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(out.contains("client-certificate-data: Q0VSVA=="), "{out}");
        assert!(
            !out.contains("client-key-data") && !out.contains("S0VZ"),
            "{out}"
        );
        let m = parse_sections(&out);
        assert_eq!(m["/nonexistent/x.conf"], None);
        assert!(m[&paths[0]].is_some());
    }

    #[test]
    fn a_kubeconfig_yields_its_client_certificate() {
        let e = cert_of(
            "x.conf",
            "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.conf"), "{e}");
    }
}
