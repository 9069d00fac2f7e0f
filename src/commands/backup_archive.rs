//! The backup archive: one `.tar.gz` holding `manifest.json` (what the archive is, which
//! cluster and etcd members it belongs to, and the size and sha256 of every other file),
//! `etcd/snapshot.db`, `inventory.yaml` and `pki/…`; beside it `<archive>.sha256` in
//! `sha256sum` format. `verify` checks both before anything uses the contents.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::hashing::hash_file;

pub const FORMAT: &str = "clusterctl-backup/1";
pub const MANIFEST: &str = "manifest.json";
pub const SNAPSHOT: &str = "etcd/snapshot.db";
pub const INVENTORY: &str = "inventory.yaml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub cluster: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub clusterctl_version: String,
    /// The inventory file the backup was taken with (as given on the command line).
    pub inventory_file: String,
    pub etcd: EtcdInfo,
    /// Every other file of the archive, with its size and sha256.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdInfo {
    pub members: Vec<Member>,
    /// The member the snapshot was read from.
    pub snapshot_from: String,
    /// `etcd --version` there, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub data_dir: String,
    pub status: SnapshotStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    pub address: String,
}

/// `etcdctl snapshot status -w json`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    pub hash: u64,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

impl SnapshotStatus {
    /// Parses etcdctl's/etcdutl's JSON line (other lines, e.g. a deprecation warning, skipped).
    pub fn parse(out: &str) -> anyhow::Result<SnapshotStatus> {
        out.lines()
            .rev()
            .find_map(|l| serde_json::from_str::<SnapshotStatus>(l.trim()).ok())
            .with_context(|| format!("no snapshot status in `{}`", out.trim()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `<archive>.sha256`
pub fn checksum_path(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// The hash of a `sha256sum` line (`<hex>  <name>`).
pub fn parse_checksum(text: &str) -> Option<String> {
    let h = text.split_whitespace().next()?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// Every file under `dir` (recursive), as (path in the archive under `prefix`, local path),
/// sorted.
pub fn tree(dir: &Path, prefix: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                let rel = p.strip_prefix(dir).expect("under dir");
                out.push((format!("{prefix}/{}", rel.to_string_lossy()), p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the archive `out` (mode 0600: it holds private keys) with `manifest` (its `files`
/// filled in here) and `files` (path in the archive, local path), then `<out>.sha256`. The
/// archive is written to a temporary name and renamed, so `out` is never half written.
/// Returns (size, sha256) of the archive.
pub fn write(
    out: &Path,
    manifest: &mut Manifest,
    files: &[(String, PathBuf)],
) -> anyhow::Result<(u64, String)> {
    manifest.files = files
        .iter()
        .map(|(name, p)| {
            let (sha256, size) = hash_file(p)?;
            Ok(FileEntry {
                path: name.clone(),
                size,
                sha256,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".backup-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let json = serde_json::to_vec_pretty(manifest)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(json.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(time::OffsetDateTime::now_utc().unix_timestamp() as u64);
        h.set_cksum();
        tar.append_data(&mut h, MANIFEST, json.as_slice())?;
        for (name, p) in files {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
            tar.append_file(name, &mut f)
                .with_context(|| format!("adding {}", p.display()))?;
        }
        tar.into_inner()?.finish()?.flush()?;
    }
    tmp.as_file().sync_all()?;
    let tmp = tmp.into_temp_path();
    // tempfile makes it 0600 already; the rename keeps the mode.
    tmp.persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let (sha, size) = hash_file(out)?;
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    write_private(&checksum_path(out), format!("{sha}  {name}\n").as_bytes())
        .with_context(|| format!("writing {}", checksum_path(out).display()))?;
    Ok((size, sha))
}

/// Writes `bytes` to `path` created 0600 (replacing it): nothing of a backup is for others.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

/// Most bytes `verify` unpacks: etcd's largest recommended database (8 GiB) plus room for the
/// PKI and inventory. A gzip bomb stops here instead of filling the disk.
pub const MAX_UNPACKED: u64 = 9 << 30;

/// What `verify` found.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    /// Where the files were unpacked (`into`).
    pub dir: PathBuf,
    /// The archive's sha256, and whether a `.sha256` beside it confirmed it.
    pub sha256: String,
    pub checksum_file: bool,
}

/// Checks `archive` and unpacks it into `into`: the `.sha256` beside it (when there is one)
/// must match the archive, the manifest must be this format, and every file listed must be
/// there with its size and sha256 (and no other file). Any mismatch is an error naming it.
pub fn verify(archive: &Path, into: &Path) -> anyhow::Result<Verified> {
    verify_bounded(archive, into, MAX_UNPACKED)
}

/// [`verify`] with the unpacked size limited to `limit` bytes. The archive holds CA keys: it is
/// unpacked into `into` made 0700, with directories 0700 and files 0600; an entry that appears
/// twice is refused (the second copy would silently win).
pub fn verify_bounded(archive: &Path, into: &Path, limit: u64) -> anyhow::Result<Verified> {
    let (sha256, _) =
        hash_file(archive).with_context(|| format!("reading {}", archive.display()))?;
    let sum_path = checksum_path(archive);
    let checksum_file = sum_path.is_file();
    if checksum_file {
        let text = std::fs::read_to_string(&sum_path)
            .with_context(|| format!("reading {}", sum_path.display()))?;
        let want = parse_checksum(&text)
            .with_context(|| format!("{}: no sha256 in it", sum_path.display()))?;
        if want != sha256 {
            bail!(
                "{}: sha256 {sha256} differs from {} ({want}): the archive is damaged or not the one the checksum was written for",
                archive.display(),
                sum_path.display()
            );
        }
    }
    let mut f = std::fs::File::open(archive)?;
    let manifest = unpack(&mut f, &archive.display().to_string(), into, limit)?;
    Ok(Verified {
        manifest,
        dir: into.to_path_buf(),
        sha256,
        checksum_file,
    })
}

/// Unpacks the `.tar.gz` read from `src` (named `label` in errors) into `into` and checks it
/// against its manifest: at most `limit` bytes; `into` made 0700, directories 0700, files
/// 0600 (it holds CA keys); an entry that appears twice is refused (the second copy would
/// silently win); every file listed must be there with its size and sha256, and no other.
pub fn unpack<R: Read>(
    src: &mut R,
    label: &str,
    into: &Path,
    limit: u64,
) -> anyhow::Result<Manifest> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(into)
        .with_context(|| format!("creating {}", into.display()))?;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700))?;
    let mut total = 0u64;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(src));
    let mut seen = Vec::new();
    for e in tar
        .entries()
        .with_context(|| format!("{label}: not a .tar.gz"))?
    {
        let mut e = e.with_context(|| format!("{label}: damaged archive"))?;
        let name = e.path()?.to_string_lossy().into_owned();
        let p = Path::new(&name);
        if p.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("{label}: unsafe path {name} in the archive");
        }
        if !e.header().entry_type().is_file() {
            continue;
        }
        if seen.iter().any(|s: &FileEntry| s.path == name) {
            bail!(
                "{label}: {name} appears twice in the archive: refused (which copy is the backup?)"
            );
        }
        let dest = into.join(p);
        if let Some(d) = dest.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        let mut r = crate::hashing::HashingReader::new(&mut e);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r
                .read(&mut buf)
                .with_context(|| format!("{label}: damaged archive (in {name})"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                bail!(
                    "{label}: unpacks to more than {limit} bytes: refused (not a backup clusterctl wrote)"
                );
            }
            out.write_all(&buf[..n])?;
        }
        let (sha, size) = r.finish();
        seen.push(FileEntry {
            path: name,
            size,
            sha256: sha,
        });
    }
    let manifest_path = into.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("{label}: no {MANIFEST} in it"))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{label}: {MANIFEST} is not a backup manifest"))?;
    if manifest.format != FORMAT {
        bail!(
            "{label}: format {:?}, this clusterctl reads {FORMAT:?}",
            manifest.format
        );
    }
    let mut problems = Vec::new();
    for want in &manifest.files {
        match seen.iter().find(|s| s.path == want.path) {
            None => problems.push(format!("{} is missing", want.path)),
            Some(got) if got != want => problems.push(format!(
                "{}: {} bytes with sha256 {}, the manifest says {} bytes with sha256 {}",
                want.path, got.size, got.sha256, want.size, want.sha256
            )),
            Some(_) => {}
        }
    }
    for s in &seen {
        if s.path != MANIFEST && !manifest.files.iter().any(|f| f.path == s.path) {
            problems.push(format!("{} is not in the manifest", s.path));
        }
    }
    if !manifest.files.iter().any(|f| f.path == SNAPSHOT) {
        problems.push(format!("no {SNAPSHOT} in the manifest"));
    }
    if !problems.is_empty() {
        bail!(
            "{label}: the contents do not match its manifest: {}",
            problems.join("; ")
        );
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            cluster: "c1".into(),
            created: "2026-11-24T22:00:00Z".into(),
            clusterctl_version: "0".into(),
            inventory_file: "inventory.yaml".into(),
            etcd: EtcdInfo {
                members: vec![Member {
                    name: "h1".into(),
                    address: "10.0.0.1".into(),
                }],
                snapshot_from: "h1".into(),
                version: None,
                data_dir: "/var/lib/etcd".into(),
                status: SnapshotStatus {
                    hash: 1,
                    revision: 2,
                    total_key: 3,
                    total_size: 4,
                },
            },
            files: vec![],
        }
    }

    fn sample(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("pki/etcd")).unwrap();
        std::fs::write(src.join("snap.db"), vec![7u8; 100_000]).unwrap();
        std::fs::write(src.join("pki/ca.key"), "key").unwrap();
        std::fs::write(src.join("pki/etcd/ca.crt"), "crt").unwrap();
        let mut files = vec![(SNAPSHOT.to_string(), src.join("snap.db"))];
        files.extend(tree(&src.join("pki"), "pki").unwrap());
        let out = dir.join("a.tar.gz");
        let mut m = manifest();
        write(&out, &mut m, &files).unwrap();
        assert_eq!(m.files.len(), 3);
        out
    }

    #[test]
    fn a_written_archive_verifies_and_unpacks() {
        let d = tempfile::tempdir().unwrap();
        let out = sample(d.path());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let into = d.path().join("x");
        let v = verify(&out, &into).unwrap();
        assert!(v.checksum_file);
        assert_eq!(v.manifest.cluster, "c1");
        assert_eq!(
            std::fs::read(into.join(SNAPSHOT)).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(
            std::fs::read_to_string(into.join("pki/etcd/ca.crt")).unwrap(),
            "crt"
        );
    }

    #[test]
    fn a_changed_byte_or_a_wrong_checksum_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = sample(d.path());
        // One byte changed: the .sha256 beside it no longer matches.
        let mut bytes = std::fs::read(&out).unwrap();
        let n = bytes.len() / 2;
        bytes[n] ^= 0xff;
        let bad = d.path().join("bad.tar.gz");
        std::fs::write(&bad, &bytes).unwrap();
        std::fs::copy(checksum_path(&out), checksum_path(&bad)).unwrap();
        let e = verify(&bad, &d.path().join("y")).unwrap_err().to_string();
        assert!(e.contains("differs from"), "{e}");
        // Without a .sha256 the damage is still found (gzip CRC, or the manifest's hashes).
        std::fs::remove_file(checksum_path(&bad)).unwrap();
        let e = format!("{:#}", verify(&bad, &d.path().join("z")).unwrap_err());
        assert!(
            e.contains("damaged") || e.contains("do not match") || e.contains("manifest"),
            "{e}"
        );
    }

    #[test]
    fn a_file_that_differs_from_the_manifest_is_named() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("snap.db");
        std::fs::write(&src, "snapshot").unwrap();
        let mut m = manifest();
        let out = d.path().join("a.tar.gz");
        write(&out, &mut m, &[(SNAPSHOT.into(), src.clone())]).unwrap();
        // Rewrite the archive with a manifest whose hash is wrong (and a fresh .sha256).
        m.files[0].sha256 = "0".repeat(64);
        let out2 = d.path().join("b.tar.gz");
        {
            let f = std::fs::File::create(&out2).unwrap();
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            let json = serde_json::to_vec(&m).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(json.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, MANIFEST, json.as_slice()).unwrap();
            tar.append_path_with_name(&src, SNAPSHOT).unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let e = verify(&out2, &d.path().join("y")).unwrap_err().to_string();
        assert!(e.contains("etcd/snapshot.db: 8 bytes with sha256"), "{e}");
    }

    #[test]
    fn snapshot_status_and_checksum_lines_parse() {
        let s = SnapshotStatus::parse(
            "Deprecated: Use `etcdutl snapshot status` instead.\n\n{\"hash\":3541817545,\"revision\":1529,\"totalKey\":1170,\"totalSize\":2592768}\n",
        )
        .unwrap();
        assert_eq!(s.revision, 1529);
        assert_eq!(s.total_key, 1170);
        assert!(SnapshotStatus::parse("Error: bad").is_err());
        let h = "ab".repeat(32);
        assert_eq!(parse_checksum(&format!("{h}  x.tar.gz\n")), Some(h));
        assert_eq!(parse_checksum("nothing"), None);
    }

    /// A tar of `entries` (name, bytes), gzipped, with a manifest listing them first.
    fn raw_archive(out: &Path, entries: &[(&str, &[u8])]) {
        let mut m = manifest();
        m.files = entries
            .iter()
            .map(|(n, b)| FileEntry {
                path: n.to_string(),
                size: b.len() as u64,
                sha256: crate::hashing::sha256_hex(b),
            })
            .collect();
        let f = std::fs::File::create(out).unwrap();
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::default(),
        ));
        let json = serde_json::to_vec(&m).unwrap();
        let mut all = vec![(MANIFEST, json.as_slice())];
        all.extend(entries.iter().map(|(n, b)| (*n, *b)));
        for (n, b) in all {
            let mut h = tar::Header::new_gnu();
            h.set_size(b.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, n, b).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn unpacked_privately_duplicates_refused_and_size_bounded() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.tar.gz");
        raw_archive(&a, &[(SNAPSHOT, b"snapshot"), ("pki/ca.key", b"KEY")]);
        let into = d.path().join("x");
        verify(&a, &into).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&into), 0o700);
        assert_eq!(mode(&into.join("pki")), 0o700);
        assert_eq!(mode(&into.join("pki/ca.key")), 0o600);
        // The same entry twice (a re-packed archive whose second copy would win): refused.
        let b = d.path().join("b.tar.gz");
        raw_archive(&b, &[(SNAPSHOT, b"snapshot"), (SNAPSHOT, b"evil")]);
        let e = verify(&b, &d.path().join("y")).unwrap_err().to_string();
        assert!(e.contains("etcd/snapshot.db appears twice"), "{e}");
        // More bytes than the limit: refused while unpacking.
        let e = verify_bounded(&a, &d.path().join("z"), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unpacks to more than 4 bytes"), "{e}");
    }

    #[test]
    fn the_checksum_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("snap.db");
        std::fs::write(&src, "snapshot").unwrap();
        let out = d.path().join("a.tar.gz");
        write(&out, &mut manifest(), &[(SNAPSHOT.into(), src)]).unwrap();
        for p in [out.clone(), checksum_path(&out)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
}
