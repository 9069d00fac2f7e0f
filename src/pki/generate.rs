//! Generating, completing and renewing the local PKI from the table in `spec.rs`.
//!
//! Idempotent: existing CAs are kept (never replaced silently); a leaf is kept while it is
//! still valid, signed by the current CA, matches its key, and has the subject, SANs and usages
//! the table asks for; otherwise it is re-issued. Every file replaced is first moved to
//! `clusters/<name>/pki-backup/<timestamp>/` (same relative path).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::inspect::{self, CertInfo};
use super::keys;
use super::kubeconfig::Kubeconfig;
use super::spec::{self, Ca, CertSpec, San};
use crate::inventory::{Inventory, KeyAlgorithm};
use crate::state::StateDir;

/// Where the PKI lives locally.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `clusters/<name>/`
    pub root: PathBuf,
    /// `clusters/<name>/pki/`
    pub pki: PathBuf,
    /// `clusters/<name>/kubeconfig/`
    pub kubeconfig: PathBuf,
    /// `clusters/<name>/pki-backup/`
    pub backup: PathBuf,
}

impl Layout {
    pub fn new(state: &StateDir) -> Layout {
        Layout {
            root: state.root.clone(),
            pki: state.pki(),
            kubeconfig: state.root.join("kubeconfig"),
            backup: state.root.join("pki-backup"),
        }
    }
}

/// PKI settings from the inventory.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster: String,
    pub algorithm: KeyAlgorithm,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// `spec.pki.externalCADir`, resolved against the inventory's directory.
    pub external_ca_dir: Option<PathBuf>,
}

impl Settings {
    /// `resolve` maps a path written in the inventory to a real path (`Loaded::resolve`).
    pub fn from_inventory(inv: &Inventory, resolve: impl Fn(&Path) -> PathBuf) -> Result<Settings> {
        let p = &inv.spec.pki;
        Ok(Settings {
            cluster: inv.name().to_string(),
            algorithm: p.algorithm,
            ca_validity: p.ca_validity.duration(),
            cert_validity: p.cert_validity.duration(),
            external_ca_dir: p.external_ca_dir.as_deref().map(resolve),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Kept,
    /// Replaced (the old file was backed up first).
    Reissued,
    /// Taken from `spec.pki.externalCADir`.
    Adopted,
    /// A kubeconfig rewritten around a kept certificate (e.g. new server URL).
    Rewritten,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub name: String,
    pub kind: &'static str,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Main file, relative to the cluster state directory.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub items: Vec<Item>,
    /// Old files moved away, as their backup paths.
    pub backups: Vec<PathBuf>,
    /// What the user should know: leaves capped at their CA's end, key files re-tightened.
    /// (Also printed on stderr as they happen.)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Outcome {
    pub fn count(&self, a: Action) -> usize {
        self.items.iter().filter(|i| i.action == a).count()
    }
    pub fn action_of(&self, name: &str) -> Option<Action> {
        self.items.iter().find(|i| i.name == name).map(|i| i.action)
    }
}

/// Writes files with modes, backing up what it replaces.
struct Store<'a> {
    layout: &'a Layout,
    stamp: Option<PathBuf>,
    backups: Vec<PathBuf>,
}

/// Writes `bytes` to `path` atomically (a temp file beside it, synced, renamed over it), the
/// file at `mode` from its first byte and its directories 0700: the PKI's one way to write.
pub(crate) fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir_private(parent)?;
    }
    let tmp = path.with_extension("clusterctl-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // An earlier temp file left by a killed run keeps its mode through `open`: set it again.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn mkdir_private(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

impl<'a> Store<'a> {
    fn new(layout: &'a Layout) -> Result<Store<'a>> {
        // The state directory holds the PKI, admin.conf, backups: the operator's alone. (Other
        // steps may have created it first with the default umask.)
        for d in [&layout.root, &layout.pki, &layout.kubeconfig] {
            mkdir_private(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting mode 0700 on {}", d.display()))?;
        }
        Ok(Store {
            layout,
            stamp: None,
            backups: Vec::new(),
        })
    }

    fn rel<'p>(&self, p: &'p Path) -> &'p Path {
        p.strip_prefix(&self.layout.root).unwrap_or(p)
    }

    fn backup_dir(&mut self) -> Result<PathBuf> {
        if let Some(s) = &self.stamp {
            return Ok(s.clone());
        }
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let base = OffsetDateTime::now_utc()
            .format(&fmt)
            .expect("formatting a timestamp");
        let mut dir = self.layout.backup.join(&base);
        let mut n = 1;
        while dir.exists() {
            dir = self.layout.backup.join(format!("{base}-{n}"));
            n += 1;
        }
        mkdir_private(&dir)?;
        self.stamp = Some(dir.clone());
        Ok(dir)
    }

    /// Writes `bytes` to `path` (atomically, with `mode`) unless it already holds them.
    /// An existing different file is moved to the backup directory first. Returns whether
    /// anything was written.
    fn put(&mut self, path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
        if let Ok(old) = std::fs::read(path) {
            if old == bytes {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
                return Ok(false);
            }
            self.backup(path)?;
        }
        write_private(path, bytes, mode)?;
        Ok(true)
    }

    fn backup(&mut self, path: &Path) -> Result<()> {
        let to = self.backup_dir()?.join(self.rel(path));
        if let Some(parent) = to.parent() {
            mkdir_private(parent)?;
        }
        std::fs::rename(path, &to)
            .with_context(|| format!("backing up {} to {}", path.display(), to.display()))?;
        self.backups.push(to);
        Ok(())
    }
}

/// A CA ready to sign.
pub struct CaMaterial {
    pub ca: Ca,
    pub cert_pem: String,
    pub info: CertInfo,
    pub issuer: Issuer<'static, KeyPair>,
}

impl CaMaterial {
    fn load(ca: Ca, cert_pem: String, key_pem: &str, crt: &Path, key: &Path) -> Result<CaMaterial> {
        let der = inspect::pem_to_der(&cert_pem, &crt.display().to_string())?;
        let info = inspect::from_der(&der, &crt.display().to_string())?;
        let kp = keys::from_pem(key_pem, &key.display().to_string())?;
        if !keys::matches(&kp, &info.spki) {
            bail!(
                "{} does not belong to {}: fix: put the CA's own key next to its certificate",
                key.display(),
                crt.display()
            );
        }
        if !info.is_ca || (info.key_usage_present && !info.key_cert_sign) {
            bail!(
                "{} is not a CA certificate (basicConstraints CA:TRUE, and keyCertSign if it has a keyUsage)",
                crt.display()
            );
        }
        let issuer = Issuer::from_ca_cert_der(&der.into(), kp)
            .map_err(|e| anyhow!("{}: cannot sign with this CA: {e}", crt.display()))?;
        Ok(CaMaterial {
            ca,
            cert_pem,
            info,
            issuer,
        })
    }
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] = (b[0] & 0x7f).max(1); // positive, full length
    SerialNumber::from_slice(&b)
}

fn leaf_key_usages(key: &KeyPair) -> Vec<KeyUsagePurpose> {
    if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    }
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, life: Duration) {
    // A little backdating absorbs clock skew between this machine and the hosts.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + life;
}

fn new_ca(ca: Ca, s: &Settings, now: OffsetDateTime) -> Result<(String, String)> {
    let key = keys::generate(s.algorithm)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca.common_name());
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.serial_number = Some(random_serial());
    validity(&mut p, now, s.ca_validity);
    let cert = p
        .self_signed(&key)
        .with_context(|| format!("signing the {} CA", ca.name()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new self-signed CA (certificate PEM, key PEM) valid from now: a CA rotation's new CA.
pub(crate) fn new_ca_now(ca: Ca, s: &Settings) -> Result<(String, String)> {
    new_ca(ca, s, OffsetDateTime::now_utc())
}

/// Issues `spec` from `ca` with a fresh key, never valid beyond the CA.
pub fn issue(
    spec: &CertSpec,
    ca: &CaMaterial,
    s: &Settings,
    now: OffsetDateTime,
) -> Result<Issued> {
    let key = keys::generate(s.algorithm)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.common_name.as_str());
    for o in &spec.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    p.distinguished_name = dn;
    p.subject_alt_names = spec
        .sans
        .iter()
        .map(|san| match san {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(d) => d
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e| anyhow!("{}: SAN `{d}` is not a valid DNS name: {e}", spec.name)),
        })
        .collect::<Result<_>>()?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = leaf_key_usages(&key);
    if spec.usage.server() {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if spec.usage.client() {
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, now, s.cert_validity);
    let capped = cap_at_ca(&mut p, ca);
    let cert = p
        .signed_by(&key, &ca.issuer)
        .with_context(|| format!("signing {}", spec.name))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        capped: capped.then(|| {
            format!(
                "{}: notAfter capped at {}, when the {} CA expires (certValidity {} would outlive it); rotate the CA before then (`renew-certs --ca trust`, `reissue`, `finish`)",
                spec.name,
                fmt_time(ca.info.not_after),
                ca.ca.name(),
                humantime::format_duration(s.cert_validity)
            )
        }),
    })
}

/// A freshly issued leaf.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Set when the leaf's notAfter was cut to its CA's: the warning to show.
    pub capped: Option<String>,
}

/// A certificate is worth nothing after its CA expires (and verifiers disagree on whether
/// such a chain is valid at all): a leaf never ends after its CA. Returns whether it was cut.
fn cap_at_ca(p: &mut CertificateParams, ca: &CaMaterial) -> bool {
    match OffsetDateTime::from_unix_timestamp(ca.info.not_after) {
        Ok(ca_end) if p.not_after > ca_end => {
            p.not_after = ca_end;
            true
        }
        _ => false,
    }
}

/// Why an existing leaf cannot be kept, or None if it can.
pub fn stale_reason(
    spec: &CertSpec,
    ca: &CaMaterial,
    cert: &CertInfo,
    key_pem: &str,
    now: i64,
) -> Option<String> {
    // By signature, not by issuer name and key id: a CA rotation's old and new CAs share the
    // name, and a CA made elsewhere may carry no subject key id.
    if !inspect::signed_by(cert, &ca.info) {
        return Some(format!("not signed by the current {} CA", ca.ca.name()));
    }
    if cert.not_after <= now {
        return Some("expired".into());
    }
    if cert.common_name != spec.common_name || cert.organizations != spec.organizations {
        return Some(format!(
            "subject is `{}`, wanted CN={} O={:?}",
            cert.subject, spec.common_name, spec.organizations
        ));
    }
    if cert.sans != spec.sans {
        let want: Vec<String> = spec.sans.iter().map(|s| s.to_string()).collect();
        return Some(format!("SANs changed (now: {})", want.join(", ")));
    }
    if cert.server_auth != spec.usage.server() || cert.client_auth != spec.usage.client() {
        return Some("extended key usage differs".into());
    }
    match keys::from_pem(key_pem, "key") {
        Ok(k) if keys::matches(&k, &cert.spki) => None,
        _ => Some("private key missing or not matching".into()),
    }
}

fn read_opt(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

struct Engine<'a> {
    s: &'a Settings,
    layout: &'a Layout,
    store: Store<'a>,
    now: OffsetDateTime,
    out: Vec<Item>,
    warnings: Vec<String>,
}

impl Engine<'_> {
    fn warn(&mut self, w: String) {
        eprintln!("warning: pki: {w}");
        self.warnings.push(w);
    }

    /// The PKI's keys were made with one algorithm (sa.key, which every run keeps, and the
    /// CAs clusterctl generated say which); `spec.pki.algorithm` naming another would be
    /// silently ignored for everything kept. Refused with the fix instead.
    fn check_algorithm(&self, what: &Path, key_pem: &str) -> Result<()> {
        let kp = keys::from_pem(key_pem, &what.display().to_string())?;
        match keys::algorithm_of(&kp) {
            Some(have) if have != self.s.algorithm => bail!(
                "spec.pki.algorithm is {}, but the existing PKI's keys are {} ({}): changing the algorithm means new CAs and a new key for every certificate, which clusterctl does not do in place. \
                 fix: set `spec.pki.algorithm: {}` again; to move to {} build a new PKI (move {} away; every host then needs the new CA)",
                self.s.algorithm.as_str(),
                have.as_str(),
                what.display(),
                have.as_str(),
                self.s.algorithm.as_str(),
                self.layout.pki.display()
            ),
            _ => Ok(()),
        }
    }

    /// Private keys and kubeconfigs found readable by others are set back to 0600 (and
    /// directories to 0700), each with a warning: someone or something loosened them.
    fn tighten(&mut self) -> Result<()> {
        let mut stack = vec![self.layout.pki.clone(), self.layout.kubeconfig.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd {
                let e = e?;
                let path = e.path();
                let meta = std::fs::symlink_metadata(&path)?;
                let mode = meta.permissions().mode() & 0o7777;
                let (secret, want) = if meta.is_dir() {
                    stack.push(path.clone());
                    (true, 0o700)
                } else {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let secret = dir.starts_with(&self.layout.kubeconfig)
                        || name.ends_with(".key")
                        || name.ends_with(".yaml")
                        || name.ends_with(".conf");
                    (secret, spec::KEY_MODE)
                };
                if (meta.is_file() || meta.is_dir()) && secret && mode & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
                        .with_context(|| {
                            format!("setting mode {want:04o} on {}", path.display())
                        })?;
                    self.warn(format!(
                        "{} was mode {mode:04o}, readable by others: set back to {want:04o}",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn item(
        &mut self,
        name: &str,
        kind: &'static str,
        action: Action,
        reason: Option<String>,
        path: &Path,
    ) {
        let path = path
            .strip_prefix(&self.layout.root)
            .unwrap_or(path)
            .to_path_buf();
        self.out.push(Item {
            name: name.to_string(),
            kind,
            action,
            reason,
            path,
        });
    }

    /// Loads, adopts or creates one CA.
    fn ca(&mut self, ca: Ca, may_create: bool) -> Result<CaMaterial> {
        let base = self.layout.pki.join(ca.base());
        let (crt, key) = (spec::crt_path(&base), spec::key_path(&base));
        let (lc, lk) = (read_opt(&crt)?, read_opt(&key)?);
        let external = match &self.s.external_ca_dir {
            Some(dir) => {
                let b = dir.join(ca.base());
                let (ec, ek) = (spec::crt_path(&b), spec::key_path(&b));
                match (read_opt(&ec)?, read_opt(&ek)?) {
                    (Some(c), Some(k)) => Some((c, k, ec, ek)),
                    (None, None) if ca != Ca::Cluster => None,
                    (c, _) => bail!(
                        "spec.pki.externalCADir: {} is missing: fix: put both {} and {} there{}",
                        if c.is_none() {
                            ec.display()
                        } else {
                            ek.display()
                        },
                        ec.display(),
                        ek.display(),
                        if ca == Ca::Cluster {
                            ""
                        } else {
                            " (or neither, to have this CA generated)"
                        }
                    ),
                }
            }
            None => None,
        };
        if let Some((ec, ek, ecp, ekp)) = external {
            let m = CaMaterial::load(ca, ec.clone(), &ek, &ecp, &ekp)?;
            self.check_ca_dates(&m, &ecp)?;
            match &lc {
                Some(l) if inspect::pem_to_der(l, "")? != inspect::pem_to_der(&ec, "")? => bail!(
                    "{} differs from the external CA {}: clusterctl never replaces a CA silently. \
                     fix: if you mean to switch CAs, move {} and {} away (every certificate will be re-issued)",
                    crt.display(),
                    ecp.display(),
                    crt.display(),
                    key.display()
                ),
                Some(_) if lk.as_deref() == Some(ek.as_str()) => {
                    self.item(ca.name(), "ca", Action::Kept, None, &crt);
                }
                _ => {
                    self.store.put(&crt, ec.as_bytes(), spec::CERT_MODE)?;
                    self.store.put(&key, ek.as_bytes(), spec::KEY_MODE)?;
                    self.item(
                        ca.name(),
                        "ca",
                        Action::Adopted,
                        Some(format!("from {}", ecp.display())),
                        &crt,
                    );
                }
            }
            return Ok(m);
        }
        match (lc, lk) {
            (Some(c), Some(k)) => {
                let m = CaMaterial::load(ca, c, &k, &crt, &key)?;
                self.check_ca_dates(&m, &crt)?;
                self.item(ca.name(), "ca", Action::Kept, None, &crt);
                Ok(m)
            }
            (None, None) if may_create => {
                let (c, k) = new_ca(ca, self.s, self.now)?;
                self.store.put(&key, k.as_bytes(), spec::KEY_MODE)?;
                self.store.put(&crt, c.as_bytes(), spec::CERT_MODE)?;
                self.item(ca.name(), "ca", Action::Created, None, &crt);
                CaMaterial::load(ca, c, &k, &crt, &key)
            }
            (None, None) => bail!(
                "{} is missing: run `clusterctl certs generate` first",
                crt.display()
            ),
            (c, _) => bail!(
                "{} exists but {} does not: clusterctl never replaces a CA silently. \
                 fix: restore the missing file, or move the other one away to have a new CA generated",
                if c.is_some() {
                    crt.display()
                } else {
                    key.display()
                },
                if c.is_some() {
                    key.display()
                } else {
                    crt.display()
                }
            ),
        }
    }

    fn check_ca_dates(&self, m: &CaMaterial, path: &Path) -> Result<()> {
        if m.info.not_after <= self.now.unix_timestamp() {
            bail!(
                "the {} CA {} expired at {}: renewing a CA is a cluster-wide operation clusterctl does not do here. \
                 fix: supply a new CA (spec.pki.externalCADir) or move the old PKI away",
                m.ca.name(),
                path.display(),
                fmt_time(m.info.not_after)
            );
        }
        Ok(())
    }

    /// The service-account key pair: created once, never replaced (it would invalidate every token).
    fn sa(&mut self) -> Result<()> {
        let key = self.layout.pki.join(spec::SA_KEY);
        let public = self.layout.pki.join(spec::SA_PUB);
        let kp = match read_opt(&key)? {
            Some(k) => {
                self.item("sa", "key", Action::Kept, None, &key);
                keys::from_pem(&k, &key.display().to_string())?
            }
            None => {
                let kp = keys::generate(self.s.algorithm)?;
                self.store
                    .put(&key, kp.serialize_pem().as_bytes(), spec::KEY_MODE)?;
                self.item("sa", "key", Action::Created, None, &key);
                kp
            }
        };
        let existed = public.exists();
        if self
            .store
            .put(&public, kp.public_key_pem().as_bytes(), spec::CERT_MODE)?
            && existed
        {
            self.item(
                "sa.pub",
                "key",
                Action::Rewritten,
                Some("did not match sa.key".into()),
                &public,
            );
        }
        Ok(())
    }

    fn leaf(&mut self, c: &CertSpec, ca: &CaMaterial, force: bool) -> Result<()> {
        let files = c.files.as_ref().map(|b| {
            let base = self.layout.pki.join(b);
            (spec::crt_path(&base), spec::key_path(&base))
        });
        let kc_path = c
            .kubeconfig
            .as_ref()
            .map(|k| self.layout.kubeconfig.join(&k.file));
        // The current cert and key: from the files if the spec has files, else the kubeconfig.
        let existing = match (&files, &kc_path) {
            (Some((crt, key)), _) => read_opt(crt)?.map(|c| {
                (
                    c,
                    read_opt(key).ok().flatten().unwrap_or_default(),
                    crt.clone(),
                )
            }),
            (None, Some(kp)) => match read_opt(kp)? {
                Some(text) => {
                    let k = Kubeconfig::from_yaml(&text, &kp.display().to_string())?;
                    match (k.client_cert_pem(), k.client_key_pem()) {
                        (Ok(Some(c)), Ok(key)) => Some((c, key.unwrap_or_default(), kp.clone())),
                        _ => None,
                    }
                }
                None => None,
            },
            (None, None) => None,
        };
        let main = files
            .as_ref()
            .map(|f| f.0.clone())
            .or(kc_path.clone())
            .expect("a cert has files or a kubeconfig");
        let kind = if files.is_some() {
            "cert"
        } else {
            "kubeconfig"
        };
        let (action, reason) = match &existing {
            None => (Action::Created, None),
            Some(_) if force => (Action::Reissued, Some("renewal".to_string())),
            Some((cert_pem, key_pem, path)) => {
                match inspect::from_pem(cert_pem, &path.display().to_string()) {
                    Err(e) => (Action::Reissued, Some(format!("unreadable: {e:#}"))),
                    Ok(info) => {
                        match stale_reason(c, ca, &info, key_pem, self.now.unix_timestamp()) {
                            None => (Action::Kept, None),
                            Some(r) => (Action::Reissued, Some(r)),
                        }
                    }
                }
            }
        };
        let (cert_pem, key_pem) = match (action, existing) {
            (Action::Kept, Some((c, k, _))) => (c, k),
            _ => {
                let Issued {
                    cert_pem: cp,
                    key_pem: kp,
                    capped,
                } = issue(c, ca, self.s, self.now)?;
                if let Some(w) = capped {
                    self.warn(w);
                }
                if let Some((crt, key)) = &files {
                    self.store.put(key, kp.as_bytes(), spec::KEY_MODE)?;
                    self.store.put(crt, cp.as_bytes(), spec::CERT_MODE)?;
                }
                (cp, kp)
            }
        };
        let mut action = action;
        if let (Some(k), Some(kp)) = (&c.kubeconfig, &kc_path) {
            let yaml = Kubeconfig::new(
                &self.s.cluster,
                &k.server,
                &ca.cert_pem,
                &c.common_name,
                &cert_pem,
                &key_pem,
            )
            .to_yaml()?;
            if self.store.put(kp, yaml.as_bytes(), spec::KEY_MODE)? && action == Action::Kept {
                action = Action::Rewritten;
            }
        }
        self.item(&c.name, kind, action, reason, &main);
        Ok(())
    }
}

/// Which leaves to re-issue in `renew`.
pub enum Select<'a> {
    All,
    /// By `CertSpec::name` (e.g. `apiserver`, `kubelet@w1`).
    Names(&'a [String]),
}

fn run(
    inv: &Inventory,
    s: &Settings,
    layout: &Layout,
    renew: Option<Select>,
    now: OffsetDateTime,
) -> Result<Outcome> {
    let table = spec::cert_list(inv);
    if let Some(Select::Names(names)) = &renew {
        for n in names.iter() {
            if !table.iter().any(|c| &c.name == n) {
                let known: Vec<&str> = table.iter().map(|c| c.name.as_str()).collect();
                bail!("no certificate named `{n}`; known: {}", known.join(", "));
            }
        }
    }
    let mut e = Engine {
        s,
        layout,
        store: Store::new(layout)?,
        now,
        out: Vec::new(),
        warnings: Vec::new(),
    };
    e.tighten()?;
    // An algorithm change is refused before anything is written.
    for k in [
        layout.pki.join(spec::SA_KEY),
        spec::key_path(&layout.pki.join(Ca::Cluster.base())),
    ] {
        if let Some(pem) = read_opt(&k)?
            && (k.ends_with(spec::SA_KEY) || s.external_ca_dir.is_none())
        {
            e.check_algorithm(&k, &pem)?;
        }
    }
    let mut cas = BTreeMap::new();
    for ca in Ca::ALL {
        let m = e.ca(ca, renew.is_none())?;
        cas.insert(ca, m);
    }
    // kube-controller-manager signs with the cluster CA and wants exactly one certificate in
    // its --cluster-signing-cert-file, while `ca.crt` is a bundle of two during a CA rotation
    // (see rotation.rs): the signer alone, always.
    let signer = inspect::pem_to_der(&cas[&Ca::Cluster].cert_pem, "the cluster CA")?;
    e.store.put(
        &layout.pki.join(spec::CA_SIGNING_CRT),
        super::rotation::pem_of(&signer).as_bytes(),
        spec::CERT_MODE,
    )?;
    e.sa()?;
    for c in &table {
        let force = match &renew {
            None => false,
            Some(Select::All) => true,
            Some(Select::Names(n)) => n.contains(&c.name),
        };
        e.leaf(c, &cas[&c.ca], force)?;
    }
    Ok(Outcome {
        items: e.out,
        backups: e.store.backups,
        warnings: e.warnings,
    })
}

/// `certs generate`: creates what is missing, re-issues what changed, keeps the rest.
pub fn generate(inv: &Inventory, s: &Settings, layout: &Layout) -> Result<Outcome> {
    generate_at(inv, s, layout, OffsetDateTime::now_utc())
}

pub fn generate_at(
    inv: &Inventory,
    s: &Settings,
    layout: &Layout,
    now: OffsetDateTime,
) -> Result<Outcome> {
    run(inv, s, layout, None, now)
}

/// Renewal from the existing CAs (for `renew-certs`): the selected leaves get new keys, new
/// serials and new dates with the same subject and SANs; the CAs must exist and are kept.
/// Unselected leaves are handled as by `generate`.
pub fn renew(inv: &Inventory, s: &Settings, layout: &Layout, which: Select) -> Result<Outcome> {
    run(inv, s, layout, Some(which), OffsetDateTime::now_utc())
}

pub fn fmt_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
