//! CA rotation on the operator's machine: the files and the recorded state of the three
//! stages of `renew-certs --ca` (the hosts' side is the renew-certs roll).
//!
//! A CA's file `pki/<base>.crt` is its *trust bundle*: one certificate normally, two during a
//! rotation. The first one is always the CA that signs (its key is `pki/<base>.key`), so
//! everything that reads "the CA" (issuing, `stale_reason`, the kube-controller-manager's
//! `pki/ca-signing.crt`) sees the signer, and everything that trusts (the hosts' `ca.crt`
//! files, the kubeconfigs' `certificate-authority-data`) gets the whole bundle:
//!
//! | stage     | `<base>.crt`  | `<base>.key` | leaves from |
//! |-----------|---------------|--------------|-------------|
//! | (before)  | old           | old          | old         |
//! | `trust`   | old + new     | old          | old         |
//! | `reissue` | new + old     | new          | new         |
//! | `finish`  | new           | new          | new         |
//!
//! The old and new CAs are kept in `pki/ca-rotation/{old,new}/` for the whole rotation, so
//! every stage's files are a pure function of (stage, old, new): a stage killed half way
//! writes the same files again when re-run, and `generate` then re-issues exactly the leaves
//! not yet signed by the signer. When the last stage's roll passed, that directory moves to
//! `pki-backup/ca-rotation-<time>/` (the old CA is never lost).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::generate::{Layout, Settings};
use super::inspect;
use super::spec::{self, Ca};

/// One stage of a CA rotation, in the order they must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A new CA beside each old one; every trust bundle becomes old + new.
    Trust,
    /// Every leaf re-issued from the new CAs.
    Reissue,
    /// The old CAs dropped from every bundle.
    Finish,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Trust, Stage::Reissue, Stage::Finish];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Trust => "trust",
            Stage::Reissue => "reissue",
            Stage::Finish => "finish",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|x| x.name() == s)
    }

    fn next(self) -> Option<Stage> {
        Stage::ALL.into_iter().find(|x| x.previous() == Some(self))
    }

    fn previous(self) -> Option<Stage> {
        match self {
            Stage::Trust => None,
            Stage::Reissue => Some(Stage::Trust),
            Stage::Finish => Some(Stage::Reissue),
        }
    }
}

/// `pki/ca-rotation.json`: the rotation under way (or the last one, finished).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The stage started last.
    pub stage: Stage,
    /// Its roll passed its last check (every endpoint serves the local PKI).
    pub finished: bool,
    /// When the rotation's `trust` stage started.
    pub started: String,
    /// sha256 of each CA's certificate (DER), by CA name (`ca`, `etcd-ca`, `front-proxy-ca`).
    pub old: BTreeMap<String, String>,
    pub new: BTreeMap<String, String>,
    /// Where the old and new CAs went once `finish` passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<PathBuf>,
}

impl State {
    /// The rotation is over: its `finish` stage's roll passed.
    pub fn done(&self) -> bool {
        self.stage == Stage::Finish && self.finished
    }
}

pub fn state_path(pki: &Path) -> PathBuf {
    pki.join("ca-rotation.json")
}

/// `pki/ca-rotation/`: the old and new CAs while a rotation runs.
pub fn work_dir(pki: &Path) -> PathBuf {
    pki.join("ca-rotation")
}

pub fn read_state(pki: &Path) -> Result<Option<State>> {
    let p = state_path(pki);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{}: not a CA rotation record", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub fn write_state(pki: &Path, s: &State) -> Result<()> {
    let p = state_path(pki);
    super::generate::write_private(&p, &serde_json::to_vec_pretty(s)?, spec::CERT_MODE)
}

/// What a run of `stage` does with the recorded state: start it, or go through it again
/// (resume an unfinished one, or converge a finished one); or why it cannot run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Start,
    Resume,
    Converge,
}

pub fn step(state: Option<&State>, stage: Stage) -> Result<Step> {
    let done_rotation = State::done;
    match (state, stage.previous()) {
        (None, None) => Ok(Step::Start),
        (Some(s), None) if done_rotation(s) => Ok(Step::Start),
        (Some(s), _) if s.stage == stage => Ok(if s.finished {
            Step::Converge
        } else {
            Step::Resume
        }),
        (Some(s), Some(prev)) if s.stage == prev && s.finished => Ok(Step::Start),
        (Some(s), _) if done_rotation(s) => bail!(
            "no CA rotation is under way (the last one finished): start one with `renew-certs --ca trust`"
        ),
        (None, Some(_)) => bail!(
            "no CA rotation is under way: start one with `renew-certs --ca trust`, then `--ca reissue`, then `--ca finish`"
        ),
        (Some(s), _) if !s.finished => bail!(
            "the CA rotation's `{}` stage has not finished: run `renew-certs --ca {}` again first",
            s.stage.name(),
            s.stage.name()
        ),
        (Some(s), _) => bail!(
            "the CA rotation is past `{}`: the next stage is `renew-certs --ca {}`",
            s.stage.name(),
            s.stage.next().map(Stage::name).unwrap_or("trust")
        ),
    }
}

/// Where a rotation under way stands (`status`); none once its `finish` passed.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// When its `trust` stage started.
    pub started: String,
    /// The stages whose roll passed, in order.
    pub done: Vec<Stage>,
    /// The stage started last and not finished (its run stopped or was killed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<Stage>,
    /// What to run next: the following stage, or the unfinished one again (it resumes).
    pub next: String,
}

pub fn progress(state: Option<&State>) -> Option<Progress> {
    let s = under_way(state)?;
    let next = if s.finished { s.stage.next()? } else { s.stage };
    Some(Progress {
        started: s.started.clone(),
        done: Stage::ALL
            .into_iter()
            .filter(|x| *x < s.stage || (*x == s.stage && s.finished))
            .collect(),
        unfinished: (!s.finished).then_some(s.stage),
        next: format!("clusterctl renew-certs --ca {}", next.name()),
    })
}

/// One line for plans: where the rotation stands.
pub fn describe(state: Option<&State>) -> String {
    match state {
        None => "no CA rotation recorded".into(),
        Some(s) if s.done() => format!(
            "last CA rotation finished (started {}); old CAs kept in {}",
            s.started,
            s.backup
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        Some(s) => format!(
            "CA rotation started {}: stage `{}` {}",
            s.started,
            s.stage.name(),
            if s.finished {
                "done"
            } else {
                "not finished (re-run it to resume)"
            }
        ),
    }
}

/// DER of every certificate in a PEM text, in order.
pub fn certificates(text: &str) -> Result<Vec<Vec<u8>>> {
    Ok(pem::parse_many(text)
        .map_err(|e| anyhow!("not PEM: {e}"))?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect())
}

/// The PEM of one certificate.
pub fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A trust bundle: the signer first, then the other CA (if any), one PEM block each.
pub fn bundle(signer: &[u8], other: Option<&[u8]>) -> String {
    let mut s = pem_of(signer);
    if let Some(o) = other {
        s.push_str(&pem_of(o));
    }
    s
}

pub fn fingerprint(der: &[u8]) -> String {
    crate::hashing::sha256_hex(der)
}

/// The files of one CA in a directory laid out like `pki/`.
fn ca_files(dir: &Path, ca: Ca) -> (PathBuf, PathBuf) {
    let base = dir.join(ca.base());
    (spec::crt_path(&base), spec::key_path(&base))
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// One CA of the rotation: its certificate's DER and its key's PEM.
struct Pair {
    der: Vec<u8>,
    key: String,
}

fn load_pair(dir: &Path, ca: Ca) -> Result<Pair> {
    let (crt, key) = ca_files(dir, ca);
    let certs = certificates(&read(&crt)?)?;
    let [der] = <[Vec<u8>; 1]>::try_from(certs)
        .map_err(|v| anyhow!("{}: {} certificates, expected one", crt.display(), v.len()))?;
    Ok(Pair {
        der,
        key: read(&key)?,
    })
}

fn save_pair(dir: &Path, ca: Ca, p: &Pair) -> Result<()> {
    let (crt, key) = ca_files(dir, ca);
    super::generate::write_private(&key, p.key.as_bytes(), spec::KEY_MODE)?;
    super::generate::write_private(&crt, pem_of(&p.der).as_bytes(), spec::CERT_MODE)
}

/// The local files of `stage`: on `Start` of `trust` the old CAs are copied aside and new ones
/// generated (kept if a killed run already made them); then each CA's bundle and key are
/// written as the stage's row of the table above. The caller then runs `generate`, which
/// re-issues every leaf the signer did not sign and rewrites every kubeconfig's CA data.
/// Returns the new state (already written).
pub fn apply_local(
    layout: &Layout,
    settings: &Settings,
    stage: Stage,
    state: Option<&State>,
    now: &str,
) -> Result<State> {
    if settings.external_ca_dir.is_some() {
        bail!(
            "spec.pki.externalCADir is set: the CAs are yours, and clusterctl does not replace them. \
             fix: rotate them outside clusterctl (a new CA in externalCADir means a new PKI)"
        );
    }
    let how = step(state, stage)?;
    let work = work_dir(&layout.pki);
    let (old_dir, new_dir) = (work.join("old"), work.join("new"));
    if stage == Stage::Trust && how == Step::Start {
        // The last rotation's CAs, if a run was killed between recording it finished and
        // moving them: moved now, or they would pass for this rotation's.
        if let Some(s) = state
            && let Some(to) = &s.backup
            && work.exists()
        {
            std::fs::create_dir_all(&layout.backup)?;
            std::fs::rename(&work, to)
                .with_context(|| format!("moving {} to {}", work.display(), to.display()))?;
        }
        // A rotation finished earlier left nothing here (its directory moved to the backups);
        // what is here is this rotation's, from a run killed before it recorded its start.
        for ca in Ca::ALL {
            if !ca_files(&old_dir, ca).0.exists() {
                let (crt, key) = ca_files(&layout.pki, ca);
                let certs = certificates(&read(&crt)?)?;
                if certs.len() != 1 {
                    bail!(
                        "{} holds {} certificates, and no CA rotation is under way: fix: keep only the CA's own certificate in it",
                        crt.display(),
                        certs.len()
                    );
                }
                save_pair(
                    &old_dir,
                    ca,
                    &Pair {
                        der: certs.into_iter().next().expect("one"),
                        key: read(&key)?,
                    },
                )?;
            }
            if !ca_files(&new_dir, ca).0.exists() {
                let (c, k) = super::generate::new_ca_now(ca, settings)?;
                save_pair(
                    &new_dir,
                    ca,
                    &Pair {
                        der: inspect::pem_to_der(&c, ca.name())?,
                        key: k,
                    },
                )?;
            }
        }
    }
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    let mut pairs = Vec::new();
    for ca in Ca::ALL {
        let (o, n) = (load_pair(&old_dir, ca), load_pair(&new_dir, ca));
        let (o, n) = match (o, n) {
            (Ok(o), Ok(n)) => (o, n),
            (o, n) => {
                let e = o.err().or(n.err()).expect("one failed");
                return Err(e.context(format!(
                    "the CA rotation's old and new CAs in {} are incomplete",
                    work.display()
                )));
            }
        };
        old.insert(ca.name().to_string(), fingerprint(&o.der));
        new.insert(ca.name().to_string(), fingerprint(&n.der));
        pairs.push((ca, o, n));
    }
    if let Some(s) = state
        && how != Step::Start
        && (s.old != old || s.new != new)
    {
        bail!(
            "the CAs in {} are not the ones {} recorded: fix: put back the rotation's CAs",
            work.display(),
            state_path(&layout.pki).display()
        );
    }
    let record = State {
        stage,
        finished: how == Step::Converge,
        started: match (stage, how, state) {
            (Stage::Trust, Step::Start, _) | (_, _, None) => now.to_string(),
            (_, _, Some(s)) => s.started.clone(),
        },
        old,
        new,
        backup: None,
    };
    // Recorded before the files change: a run killed in between resumes this stage.
    write_state(&layout.pki, &record)?;
    for (ca, o, n) in &pairs {
        let (crt, key) = ca_files(&layout.pki, *ca);
        let (text, signer_key) = files_for(stage, o, n);
        // The key first: the bundle's first certificate must never name a key not yet there.
        replace(&key, signer_key.as_bytes(), spec::KEY_MODE)?;
        replace(&crt, text.as_bytes(), spec::CERT_MODE)?;
    }
    Ok(record)
}

/// A stage's bundle text and signing key for one CA.
fn files_for<'a>(stage: Stage, old: &'a Pair, new: &'a Pair) -> (String, &'a str) {
    match stage {
        Stage::Trust => (bundle(&old.der, Some(&new.der)), &old.key),
        Stage::Reissue => (bundle(&new.der, Some(&old.der)), &new.key),
        Stage::Finish => (bundle(&new.der, None), &new.key),
    }
}

/// Writes `bytes` unless the file holds them already.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    super::generate::write_private(path, bytes, mode)
}

/// After `stage`'s roll passed: recorded as finished; after `finish`, the rotation's CAs go to
/// `pki-backup/ca-rotation-<stamp>/` (recorded first, so a run killed in between still moves
/// them when re-run).
pub fn mark_finished(layout: &Layout, stamp: &str) -> Result<Option<State>> {
    let Some(mut s) = read_state(&layout.pki)? else {
        return Ok(None);
    };
    s.finished = true;
    let work = work_dir(&layout.pki);
    if s.stage == Stage::Finish {
        if s.backup.is_none() {
            s.backup = Some(layout.backup.join(format!("ca-rotation-{stamp}")));
        }
        write_state(&layout.pki, &s)?;
        let to = s.backup.clone().expect("set above");
        if work.exists() {
            std::fs::create_dir_all(&layout.backup)?;
            std::fs::rename(&work, &to)
                .with_context(|| format!("moving {} to {}", work.display(), to.display()))?;
        }
    } else {
        write_state(&layout.pki, &s)?;
    }
    Ok(Some(s))
}

/// The new CA's certificate of `ca` during a rotation (None when none is under way).
pub fn new_ca(pki: &Path, ca: Ca) -> Option<inspect::CertInfo> {
    let (crt, _) = ca_files(&work_dir(pki).join("new"), ca);
    let text = std::fs::read_to_string(crt).ok()?;
    inspect::from_pem(&text, ca.name()).ok()
}

/// Whether `leaf` was signed by `ca` (a signature check): how an old-CA leaf is told from a
/// new-CA one (both CAs have the same name).
pub use super::inspect::signed_by;

/// Whether a rotation is under way: recorded, and not past a finished `finish`.
pub fn under_way(state: Option<&State>) -> Option<&State> {
    state.filter(|s| !s.done())
}

/// During a rotation, whether the CA certificate `der` of `ca` (`ca`, `etcd-ca`,
/// `front-proxy-ca`) is the rotation's old or new one; None when no rotation is under way
/// or it is neither.
pub fn old_or_new(state: Option<&State>, ca: &str, der: &[u8]) -> Option<&'static str> {
    let s = under_way(state)?;
    let f = fingerprint(der);
    if s.new.get(ca) == Some(&f) {
        Some("new")
    } else if s.old.get(ca) == Some(&f) {
        Some("old")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(stage: Stage, finished: bool) -> State {
        State {
            stage,
            finished,
            started: "t".into(),
            old: BTreeMap::new(),
            new: BTreeMap::new(),
            backup: None,
        }
    }

    #[test]
    fn stages_go_in_order_and_each_resumes_or_converges() {
        use Stage::*;
        assert_eq!(step(None, Trust).unwrap(), Step::Start);
        assert!(step(None, Reissue).is_err());
        assert!(step(None, Finish).is_err());
        let t = st(Trust, false);
        assert_eq!(step(Some(&t), Trust).unwrap(), Step::Resume);
        let e = step(Some(&t), Reissue).unwrap_err().to_string();
        assert!(e.contains("`trust` stage has not finished"), "{e}");
        let t = st(Trust, true);
        assert_eq!(step(Some(&t), Trust).unwrap(), Step::Converge);
        assert_eq!(step(Some(&t), Reissue).unwrap(), Step::Start);
        assert!(step(Some(&t), Finish).is_err());
        let r = st(Reissue, true);
        assert!(step(Some(&r), Trust).is_err());
        assert_eq!(step(Some(&r), Finish).unwrap(), Step::Start);
        let f = st(Finish, false);
        assert_eq!(step(Some(&f), Finish).unwrap(), Step::Resume);
        assert!(step(Some(&f), Trust).is_err());
        let f = st(Finish, true);
        assert_eq!(step(Some(&f), Finish).unwrap(), Step::Converge);
        // A finished rotation: the next one may start.
        assert_eq!(step(Some(&f), Trust).unwrap(), Step::Start);
        let e = step(Some(&f), Reissue).unwrap_err().to_string();
        assert!(e.contains("no CA rotation is under way"), "{e}");
    }

    #[test]
    fn progress_names_the_stages_done_and_the_next_command_until_finish_passed() {
        use Stage::*;
        assert_eq!(progress(None), None);
        let p = progress(Some(&st(Trust, false))).unwrap();
        assert_eq!((p.done, p.unfinished), (vec![], Some(Trust)));
        assert_eq!(p.next, "clusterctl renew-certs --ca trust");
        let p = progress(Some(&st(Trust, true))).unwrap();
        assert_eq!((p.done, p.unfinished), (vec![Trust], None));
        assert_eq!(p.next, "clusterctl renew-certs --ca reissue");
        let p = progress(Some(&st(Reissue, false))).unwrap();
        assert_eq!((p.done, p.unfinished), (vec![Trust], Some(Reissue)));
        assert_eq!(p.next, "clusterctl renew-certs --ca reissue");
        let p = progress(Some(&st(Reissue, true))).unwrap();
        assert_eq!(p.next, "clusterctl renew-certs --ca finish");
        let p = progress(Some(&st(Finish, false))).unwrap();
        assert_eq!((p.done, p.unfinished), (vec![Trust, Reissue], Some(Finish)));
        assert_eq!(progress(Some(&st(Finish, true))), None, "finished: nothing");
        let json = serde_json::to_value(progress(Some(&st(Trust, true)))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"started": "t", "done": ["trust"], "next": "clusterctl renew-certs --ca reissue"})
        );
    }

    #[test]
    fn bundles_put_the_signer_first() {
        let (o, n) = (
            Pair {
                der: vec![1, 2, 3],
                key: "old-key".into(),
            },
            Pair {
                der: vec![4, 5, 6],
                key: "new-key".into(),
            },
        );
        let ders = |t: &str| certificates(t).unwrap();
        let (t, k) = files_for(Stage::Trust, &o, &n);
        assert_eq!(
            (ders(&t), k),
            (vec![o.der.clone(), n.der.clone()], "old-key")
        );
        let (t, k) = files_for(Stage::Reissue, &o, &n);
        assert_eq!(
            (ders(&t), k),
            (vec![n.der.clone(), o.der.clone()], "new-key")
        );
        let (t, k) = files_for(Stage::Finish, &o, &n);
        assert_eq!((ders(&t), k), (vec![n.der.clone()], "new-key"));
        assert!(t.ends_with("-----END CERTIFICATE-----\n"), "{t}");
    }
}
