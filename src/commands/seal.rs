//! A sealed backup: the `.tar.gz` of [`super::archive`], encrypted with `age` to the
//! inventory's `spec.backup.recipients` and signed with the cluster's backup-signing key.
//!
//! The archive holds every CA key, so two things are needed and neither is enough alone:
//! - encryption, so a copy of the file reveals nothing to whoever holds it;
//! - authentication with a key that is NOT in the archive and NOT public: anyone holding a
//!   recipient's public key can write a valid age file, and anyone can re-hash a file and its
//!   `.sha256`. So the whole payload (the ciphertext as stored) is signed with an ed25519 key
//!   kept in the cluster's local state (`clusters/<name>/backup-signing.key`, 0600, never put
//!   into an archive: archives take only `pki/`). Restore checks that signature against the
//!   local key (or a public key the user names) before a byte is decrypted or unpacked.
//!
//! Layout (one file, so it cannot lose its signature on the way to off-site storage):
//! `MAGIC`, then a fixed-size header (JSON, space-padded, ending in a newline) naming the
//! cluster, whether the payload is encrypted, the payload's size and sha256, the sha256 of the
//! `.tar.gz` inside, the signer's public key and the signature over all of these; then the
//! payload. The header is written last (the hashes are known only then) into the space
//! reserved for it, and the file is renamed into place: never half written.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::hashing::{HashingReader, hash_file};
use crate::inventory::AgeRecipient;
use crate::state::StateDir;

pub const MAGIC: &[u8] = b"clusterctl-sealed-backup/1\n";
/// Bytes reserved for the header after `MAGIC` (its JSON is ~500 bytes).
const HEADER_LEN: usize = 1024;

/// What the signature covers (everything but the signature itself), in this field order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sealed {
    pub cluster: String,
    pub encrypted: bool,
    /// Size and sha256 of the payload as stored (the ciphertext when encrypted).
    pub payload_size: u64,
    pub payload_sha256: String,
    /// sha256 of the `.tar.gz` inside (checked again after decryption).
    pub archive_sha256: String,
    /// The signer's ed25519 public key, hex.
    pub signer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    #[serde(flatten)]
    sealed: Sealed,
    /// ed25519 signature over `signed_bytes(sealed)`, hex.
    signature: String,
}

/// The exact bytes signed: a domain prefix, so a signature made for anything else (a bundle
/// manifest signed with the same kind of key) can never pass as a backup's.
fn signed_bytes(s: &Sealed) -> Vec<u8> {
    let mut m = MAGIC.to_vec();
    m.extend(serde_json::to_vec(s).expect("serialises"));
    m
}

/// `clusters/<name>/backup-signing.key`
pub fn signing_key_path(state: &StateDir) -> PathBuf {
    state.root.join("backup-signing.key")
}

/// `clusters/<name>/backup-signing.pub`: copy it off-site with the backups, to restore on a
/// machine that lost the state (`restore --signer FILE`).
pub fn signing_pub_path(state: &StateDir) -> PathBuf {
    state.root.join("backup-signing.pub")
}

/// The cluster's backup-signing key, created (0600) at the first backup. Crash-safe: the key
/// is written to a temporary name and renamed; its `.pub` is (re)written when missing.
pub fn signing_key(state: &StateDir) -> anyhow::Result<SigningKey> {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    let path = signing_key_path(state);
    let key = if path.is_file() {
        crate::bundle::keys::load_signing(&path)?
    } else {
        std::fs::create_dir_all(&state.root)
            .with_context(|| format!("creating {}", state.root.display()))?;
        let key = crate::bundle::keys::generate();
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the backup-signing key: {e}"))?;
        // tempfile creates 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".backup-signing-")
            .tempfile_in(&state.root)?;
        tmp.write_all(pem.as_bytes())?;
        tmp.as_file().sync_all()?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => key,
            // Another run made one in between: use that one.
            Err(_) => crate::bundle::keys::load_signing(&path)?,
        }
    };
    let public = signing_pub_path(state);
    if !public.is_file() {
        let pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the backup-signing key: {e}"))?;
        std::fs::write(&public, pem).with_context(|| format!("writing {}", public.display()))?;
    }
    Ok(key)
}

/// The key a backup must be signed with: `signer` (a public key file, `restore --signer`) or
/// else this cluster's own backup-signing key from the local state.
pub fn trusted_key(state: &StateDir, signer: Option<&Path>) -> anyhow::Result<VerifyingKey> {
    if let Some(p) = signer {
        return crate::bundle::keys::load_verifying(p);
    }
    for p in [signing_pub_path(state), signing_key_path(state)] {
        if p.is_file() {
            return crate::bundle::keys::load_verifying(&p);
        }
    }
    bail!(
        "no backup-signing key in {} to check the archive's signature with: name the public key \
         the backup was signed with (`restore --signer backup-signing.pub`, copied from the \
         clusters/<name>/ directory of the machine that took it)",
        state.root.display()
    )
}

/// sha256 (hex) of everything written through it, and how many bytes.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Seals the `.tar.gz` at `plain` into `out` (which must not exist): encrypted to `recipients`
/// (None: stored in the clear, the user's explicit choice) and signed with `key`.
pub fn seal(
    plain: &Path,
    out: &Path,
    cluster: &str,
    recipients: Option<&[AgeRecipient]>,
    key: &SigningKey,
) -> anyhow::Result<Sealed> {
    let (archive_sha256, _) = hash_file(plain)?;
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates 0600: the payload may be the clear archive.
    let tmp = tempfile::Builder::new()
        .prefix(".backup-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let (encrypted, payload_size, payload_sha256) = {
        let mut file = tmp.as_file();
        file.write_all(MAGIC)?;
        file.write_all(&[b' '; HEADER_LEN])?;
        let mut sink = HashingWriter {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
            count: 0,
        };
        let mut src = File::open(plain).with_context(|| format!("reading {}", plain.display()))?;
        let encrypted = match recipients {
            Some(rs) if !rs.is_empty() => {
                let enc =
                    age::Encryptor::with_recipients(rs.iter().map(|r| &r.0 as &dyn age::Recipient))
                        .map_err(|e| anyhow::anyhow!("age: {e}"))?;
                let mut w = enc.wrap_output(&mut sink)?;
                std::io::copy(&mut src, &mut w)?;
                w.finish()?;
                true
            }
            Some(_) => bail!("no backup recipient to encrypt to"),
            None => {
                std::io::copy(&mut src, &mut sink)?;
                false
            }
        };
        sink.flush()?;
        (encrypted, sink.count, hex::encode(sink.hasher.finalize()))
    };
    let sealed = Sealed {
        cluster: cluster.to_string(),
        encrypted,
        payload_size,
        payload_sha256,
        archive_sha256,
        signer: hex::encode(key.verifying_key().as_bytes()),
    };
    let header = Header {
        signature: hex::encode(key.sign(&signed_bytes(&sealed)).to_bytes()),
        sealed: sealed.clone(),
    };
    let mut json = serde_json::to_vec(&header)?;
    if json.len() >= HEADER_LEN {
        bail!("backup header too long ({} bytes)", json.len());
    }
    json.resize(HEADER_LEN - 1, b' ');
    json.push(b'\n');
    let mut file = tmp.as_file();
    file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    file.write_all(&json)?;
    file.sync_all()?;
    tmp.into_temp_path()
        .persist_noclobber(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(sealed)
}

/// A sealed backup whose signature and payload hash were checked; positioned at its payload.
pub struct Opened {
    pub sealed: Sealed,
    file: File,
    path: PathBuf,
}

/// Opens `path` and checks, before anything is decrypted or unpacked: it is a sealed backup,
/// signed by `trusted`, and its payload is the one signed (size and sha256, read through the
/// same open file that will be decrypted, so a file swapped by name in between changes
/// nothing).
pub fn open(path: &Path, trusted: &VerifyingKey) -> anyhow::Result<Opened> {
    let show = path.display();
    let mut file = File::open(path).with_context(|| format!("opening {show}"))?;
    let mut magic = vec![0u8; MAGIC.len()];
    if file.read_exact(&mut magic).is_err() || magic != MAGIC {
        bail!(
            "{show}: not a sealed clusterctl backup (no `{}` header): refused; only archives \
             written by `clusterctl backup` are restored",
            String::from_utf8_lossy(&MAGIC[..MAGIC.len() - 1])
        );
    }
    let mut head = vec![0u8; HEADER_LEN];
    file.read_exact(&mut head)
        .with_context(|| format!("{show}: the header is cut short"))?;
    let header: Header = serde_json::from_slice(head.trim_ascii_end())
        .with_context(|| format!("{show}: the header is damaged"))?;
    let want = hex::encode(trusted.as_bytes());
    if header.sealed.signer != want {
        bail!(
            "{show}: signed by key {}, not by this cluster's backup-signing key {want}: refused \
             (if another machine took it, name its key with `restore --signer FILE`)",
            header.sealed.signer
        );
    }
    let sig: [u8; 64] = hex::decode(&header.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{show}: the signature is not 64 hex-encoded bytes"))?;
    trusted
        .verify_strict(&signed_bytes(&header.sealed), &Signature::from_bytes(&sig))
        .map_err(|_| {
            anyhow::anyhow!(
                "{show}: the signature does not match its header: the archive was altered; refused"
            )
        })?;
    let start = file.stream_position()?;
    let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, &mut file));
    std::io::copy(&mut r, &mut std::io::sink()).with_context(|| format!("reading {show}"))?;
    let (sha, size) = r.finish();
    if sha != header.sealed.payload_sha256 || size != header.sealed.payload_size {
        bail!(
            "{show}: the payload ({size} bytes, sha256 {sha}) is not the one signed ({} bytes, \
             sha256 {}): the archive was altered or damaged; refused",
            header.sealed.payload_size,
            header.sealed.payload_sha256
        );
    }
    file.seek(SeekFrom::Start(start))?;
    Ok(Opened {
        sealed: header.sealed,
        file,
        path: path.to_path_buf(),
    })
}

/// Reads an age identity file (as `age-keygen -o FILE` writes).
pub fn load_identities(path: &Path) -> anyhow::Result<Vec<Box<dyn age::Identity>>> {
    let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
        .with_context(|| format!("reading the identity file {}", path.display()))?;
    let ids = file
        .into_identities()
        .map_err(|e| anyhow::anyhow!("{}: not an age identity file ({e})", path.display()))?;
    if ids.is_empty() {
        bail!("{}: no age identity in it", path.display());
    }
    Ok(ids)
}

impl Opened {
    /// Unpacks the archive inside into `into` (see [`super::backup_archive::unpack`]): decrypted with
    /// `identities` when it is encrypted; the `.tar.gz` read must be the one signed.
    pub fn unpack(
        self,
        identities: Option<&[Box<dyn age::Identity>]>,
        into: &Path,
        limit: u64,
    ) -> anyhow::Result<super::backup_archive::Manifest> {
        let show = self.path.display().to_string();
        let payload = BufReader::with_capacity(1 << 20, self.file);
        let inner: Box<dyn Read> = if self.sealed.encrypted {
            let ids = identities.with_context(|| {
                format!(
                    "{show} is encrypted: name an age identity file of one of its recipients \
                     (`--identity FILE`)"
                )
            })?;
            let d = age::Decryptor::new(payload)
                .map_err(|e| anyhow::anyhow!("{show}: not an age payload ({e})"))?;
            Box::new(d.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| {
                anyhow::anyhow!(
                    "{show}: cannot decrypt with the given identity ({e}): is it one of the \
                     recipients in spec.backup.recipients when the backup was taken?"
                )
            })?)
        } else {
            Box::new(payload)
        };
        let mut r = HashingReader::new(inner);
        let manifest = super::backup_archive::unpack(&mut r, &show, into, limit)?;
        std::io::copy(&mut r, &mut std::io::sink())
            .with_context(|| format!("{show}: damaged archive"))?;
        let (sha, _) = r.finish();
        if sha != self.sealed.archive_sha256 {
            bail!(
                "{show}: the archive inside has sha256 {sha}, the signed header says {}",
                self.sealed.archive_sha256
            );
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::backup_archive::{
        self as archive, EtcdInfo, FORMAT, Manifest, Member, SNAPSHOT, SnapshotStatus,
    };

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            cluster: "c1".into(),
            created: "2026-12-05T00:00:00Z".into(),
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

    struct Fixture {
        dir: tempfile::TempDir,
        plain: PathBuf,
        identity: age::x25519::Identity,
        key: SigningKey,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir_all(src.join("pki")).unwrap();
            std::fs::write(src.join("snap.db"), vec![7u8; 50_000]).unwrap();
            std::fs::write(src.join("pki/ca.key"), "CA KEY").unwrap();
            let mut files = vec![(SNAPSHOT.to_string(), src.join("snap.db"))];
            files.extend(archive::tree(&src.join("pki"), "pki").unwrap());
            let plain = dir.path().join("plain.tar.gz");
            archive::write(&plain, &mut manifest(), &files).unwrap();
            Fixture {
                dir,
                plain,
                identity: age::x25519::Identity::generate(),
                key: crate::bundle::keys::generate(),
            }
        }
        fn recipients(&self) -> Vec<AgeRecipient> {
            vec![AgeRecipient(self.identity.to_public())]
        }
        fn sealed(&self, name: &str) -> PathBuf {
            let out = self.dir.path().join(name);
            seal(&self.plain, &out, "c1", Some(&self.recipients()), &self.key).unwrap();
            out
        }
        fn ids(&self) -> Vec<Box<dyn age::Identity>> {
            vec![Box::new(self.identity.clone())]
        }
        /// open + unpack with the right keys; the error text, or None when it restored.
        fn restore(&self, path: &Path, into: &str) -> Result<Manifest, String> {
            let into = self.dir.path().join(into);
            let r = open(path, &self.key.verifying_key())
                .and_then(|o| o.unpack(Some(&self.ids()), &into, archive::MAX_UNPACKED));
            if r.is_err() {
                assert!(!into.exists(), "unpacked before it was refused");
            }
            r.map_err(|e| format!("{e:#}"))
        }
    }

    #[test]
    fn a_sealed_backup_round_trips_encrypted_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let f = Fixture::new();
        let out = f.sealed("a.backup");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o600);
        // Encrypted: the CA key's bytes are nowhere in the file.
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert!(!bytes.windows(6).any(|w| w == b"CA KEY"));
        assert!(!bytes.windows(8).any(|w| w == b"ustar\0\x30\x30"));
        let m = f.restore(&out, "x").unwrap();
        assert_eq!(m.cluster, "c1");
        let into = f.dir.path().join("x");
        assert_eq!(mode(&into), 0o700);
        assert_eq!(std::fs::read(into.join("pki/ca.key")).unwrap(), b"CA KEY");
        assert_eq!(mode(&into.join("pki/ca.key")), 0o600);
        // An existing file is never replaced.
        assert!(seal(&f.plain, &out, "c1", Some(&f.recipients()), &f.key).is_err());
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused_before_unpacking() {
        let f = Fixture::new();
        let out = f.sealed("a.backup");
        let good = std::fs::read(&out).unwrap();
        // In the payload, in the header's hashes, in the signature.
        let header = std::str::from_utf8(&good[MAGIC.len()..MAGIC.len() + HEADER_LEN]).unwrap();
        let at = |s: &str| MAGIC.len() + header.find(s).unwrap() + s.len() + 3;
        for (i, pos) in [
            good.len() - 10,
            MAGIC.len() + HEADER_LEN + 200,
            at("\"payloadSha256\""),
            at("\"signature\""),
        ]
        .into_iter()
        .enumerate()
        {
            let mut bad = good.clone();
            bad[pos] = if bad[pos] == b'0' { b'1' } else { b'0' };
            let p = f.dir.path().join(format!("bad{i}.backup"));
            std::fs::write(&p, &bad).unwrap();
            let e = f.restore(&p, &format!("y{i}")).unwrap_err();
            assert!(e.contains("altered") || e.contains("damaged"), "{i}: {e}");
        }
    }

    #[test]
    fn a_re_hashed_archive_is_refused() {
        // An attacker replaces the payload and writes the new hashes into the header (and
        // a fresh .sha256): without the signing key the signature no longer matches.
        let f = Fixture::new();
        let out = f.sealed("a.backup");
        let other = Fixture::new();
        let theirs = other.sealed("theirs.backup");
        let mine = std::fs::read(&out).unwrap();
        let body = std::fs::read(&theirs).unwrap();
        let their_header: Header =
            serde_json::from_slice(body[MAGIC.len()..MAGIC.len() + HEADER_LEN].trim_ascii_end())
                .unwrap();
        let mut header: Header =
            serde_json::from_slice(mine[MAGIC.len()..MAGIC.len() + HEADER_LEN].trim_ascii_end())
                .unwrap();
        header.sealed.payload_sha256 = their_header.sealed.payload_sha256;
        header.sealed.payload_size = their_header.sealed.payload_size;
        header.sealed.archive_sha256 = their_header.sealed.archive_sha256;
        let mut json = serde_json::to_vec(&header).unwrap();
        json.resize(HEADER_LEN - 1, b' ');
        json.push(b'\n');
        let mut forged = MAGIC.to_vec();
        forged.extend(json);
        forged.extend(&body[MAGIC.len() + HEADER_LEN..]);
        let p = f.dir.path().join("forged.backup");
        std::fs::write(&p, forged).unwrap();
        let e = f.restore(&p, "y").unwrap_err();
        assert!(e.contains("signature does not match"), "{e}");
    }

    #[test]
    fn only_the_clusters_signing_key_is_trusted() {
        // Someone holding only the recipient's public key seals an archive of their own
        // (with their own signing key): encrypted correctly, signed by the wrong key.
        let f = Fixture::new();
        let p = f.dir.path().join("evil.backup");
        let evil = crate::bundle::keys::generate();
        seal(&f.plain, &p, "c1", Some(&f.recipients()), &evil).unwrap();
        let e = f.restore(&p, "y").unwrap_err();
        assert!(
            e.contains("not by this cluster's backup-signing key"),
            "{e}"
        );
        // A plain .tar.gz (the old format, or anyone's) is not a sealed backup.
        let e = f.restore(&f.plain, "z").unwrap_err();
        assert!(e.contains("not a sealed clusterctl backup"), "{e}");
    }

    #[test]
    fn the_wrong_identity_or_none_cannot_decrypt() {
        let f = Fixture::new();
        let out = f.sealed("a.backup");
        let into = f.dir.path().join("y");
        let wrong: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
        let e = open(&out, &f.key.verifying_key())
            .unwrap()
            .unpack(Some(&wrong), &into, archive::MAX_UNPACKED)
            .unwrap_err();
        assert!(format!("{e:#}").contains("cannot decrypt"), "{e:#}");
        let e = open(&out, &f.key.verifying_key())
            .unwrap()
            .unpack(None, &into, archive::MAX_UNPACKED)
            .unwrap_err();
        assert!(format!("{e:#}").contains("--identity"), "{e:#}");
    }

    #[test]
    fn a_signed_archive_with_a_duplicate_entry_is_still_refused() {
        // Even signed (by the right key), an archive that names a file twice is refused.
        let f = Fixture::new();
        let dup = f.dir.path().join("dup.tar.gz");
        {
            let mut m = manifest();
            m.files = vec![archive::FileEntry {
                path: SNAPSHOT.into(),
                size: 4,
                sha256: crate::hashing::sha256_hex(b"good"),
            }];
            let file = std::fs::File::create(&dup).unwrap();
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            ));
            let json = serde_json::to_vec(&m).unwrap();
            for (n, b) in [
                (archive::MANIFEST, json.as_slice()),
                (SNAPSHOT, b"good".as_slice()),
                (SNAPSHOT, b"evil".as_slice()),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(b.len() as u64);
                h.set_mode(0o600);
                h.set_cksum();
                tar.append_data(&mut h, n, b).unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap();
        }
        let p = f.dir.path().join("dup.backup");
        seal(&dup, &p, "c1", Some(&f.recipients()), &f.key).unwrap();
        let e = open(&p, &f.key.verifying_key())
            .unwrap()
            .unpack(
                Some(&f.ids()),
                &f.dir.path().join("y"),
                archive::MAX_UNPACKED,
            )
            .unwrap_err();
        assert!(format!("{e:#}").contains("appears twice"), "{e:#}");
    }

    #[test]
    fn unencrypted_only_when_asked_and_still_signed() {
        let f = Fixture::new();
        let p = f.dir.path().join("clear.backup");
        let s = seal(&f.plain, &p, "c1", None, &f.key).unwrap();
        assert!(!s.encrypted);
        let m = open(&p, &f.key.verifying_key())
            .unwrap()
            .unpack(None, &f.dir.path().join("x"), archive::MAX_UNPACKED)
            .unwrap();
        assert_eq!(m.cluster, "c1");
        assert!(seal(&f.plain, &f.dir.path().join("e"), "c1", Some(&[]), &f.key).is_err());
    }

    #[test]
    fn the_signing_key_is_made_once_private_and_outside_the_pki() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path(), "c1");
        assert!(trusted_key(&state, None).is_err());
        let k1 = signing_key(&state).unwrap();
        let k2 = signing_key(&state).unwrap();
        assert_eq!(k1.to_bytes(), k2.to_bytes());
        let path = signing_key_path(&state);
        assert!(!path.starts_with(state.pki()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(trusted_key(&state, None).unwrap(), k1.verifying_key());
        let other = d.path().join("other.pub");
        let k3 = crate::bundle::keys::generate();
        crate::bundle::keys::write_pair(&k3, &d.path().join("other.key"), &other).unwrap();
        assert_eq!(
            trusted_key(&state, Some(&other)).unwrap(),
            k3.verifying_key()
        );
    }
}
