//! known_hosts files: lookup (plain, wildcard, negated and hashed host patterns, `[host]:port`),
//! verification verdicts and pinning (`accept-new`).
//!
//! Our own small parser rather than russh's matcher (crate notes #5): that one needs single
//! spaces, knows no wildcards or markers, and fails the whole file on one key type it cannot
//! parse. Lines we cannot parse are skipped, like OpenSSH does.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
use sha1::Sha1;

/// One known key for a host: where it was found.
#[derive(Debug, Clone)]
pub struct KnownKey {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub key: PublicKey,
    /// An `@revoked` line: this key must never be accepted.
    pub revoked: bool,
}

/// What the known_hosts files say about a key a host presented.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The key is listed for this host.
    Known(KnownKey),
    /// The host is listed, with other keys: it changed (or someone is in the middle).
    Changed(Vec<KnownKey>),
    /// The key is listed as `@revoked`.
    Revoked(KnownKey),
    /// The host is in no file.
    Unknown,
}

/// The name a host has in known_hosts: `host`, or `[host]:port` when the port is not 22.
pub fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...` like `ssh-keygen -l`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Every key listed for `host`:`port` in `files`, in file order (missing files are empty).
pub fn lookup(files: &[PathBuf], host: &str, port: u16) -> Vec<KnownKey> {
    let name = host_entry_name(host, port);
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        out.extend(lookup_text(&text, file, &name));
    }
    out
}

fn lookup_text(text: &str, file: &Path, name: &str) -> Vec<KnownKey> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                // Host certificates are not supported: such lines never match a plain key.
                _ => continue,
            }
            first = match fields.next() {
                Some(f) => f,
                None => continue,
            };
        }
        let (Some(_algo), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(first, name) {
            continue;
        }
        let Ok(key) = russh::keys::parse_public_key_base64(b64) else {
            continue;
        };
        out.push(KnownKey {
            file: file.to_path_buf(),
            line: i + 1,
            key,
            revoked,
        });
    }
    out
}

/// Matches a comma-separated pattern list against a host entry name (OpenSSH semantics: a
/// negated match wins over any positive one).
pub fn patterns_match(patterns: &str, name: &str) -> bool {
    let mut hit = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if wildcard_match(neg, name) {
                return false;
            }
        } else if p.starts_with("|1|") {
            hit |= hashed_match(p, name);
        } else {
            hit |= wildcard_match(p, name);
        }
    }
    hit
}

/// `*` and `?` globbing, case-insensitive like host names.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let n: Vec<char> = name.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// `|1|salt|hash`: HMAC-SHA1 of the name keyed with the salt (OpenSSH `HashKnownHosts`).
fn hashed_match(entry: &str, name: &str) -> bool {
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let b64 = data_encoding::BASE64;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt.as_bytes()), b64.decode(hash.as_bytes())) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// Decides what to do with the key `host` presented, from the entries found for it.
pub fn verdict(entries: &[KnownKey], presented: &PublicKey) -> Verdict {
    let same = |k: &KnownKey| k.key.key_data() == presented.key_data();
    if let Some(r) = entries.iter().find(|k| k.revoked && same(k)) {
        return Verdict::Revoked(r.clone());
    }
    if let Some(k) = entries.iter().find(|k| !k.revoked && same(k)) {
        return Verdict::Known(k.clone());
    }
    let listed: Vec<KnownKey> = entries.iter().filter(|k| !k.revoked).cloned().collect();
    if listed.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Changed(listed)
    }
}

/// The key algorithms listed for a host, in file order: offered first in the key exchange so the
/// host presents a key we can check (as OpenSSH does).
pub fn known_algorithms(entries: &[KnownKey]) -> Vec<russh::keys::Algorithm> {
    let mut out: Vec<russh::keys::Algorithm> = Vec::new();
    for e in entries.iter().filter(|e| !e.revoked) {
        let a = e.key.algorithm();
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

static PIN_LOCK: Mutex<()> = Mutex::new(());

/// Appends `host`'s key to `file` (created with its directory), one whole line per write so
/// parallel connections never interleave.
pub fn pin(file: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    let _guard = PIN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let openssh = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Drop the comment: known_hosts lines are `name algo base64`.
    let mut parts = openssh.split_whitespace();
    let (algo, b64) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let existing = std::fs::read(file).unwrap_or_default();
    let mut line = String::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        line.push('\n');
    }
    line.push_str(&format!("{} {algo} {b64}\n", host_entry_name(host, port)));
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    f.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    #[test]
    fn wildcards_and_negation() {
        assert!(patterns_match("10.77.*", "10.77.0.11"));
        assert!(patterns_match("h?,other", "h1"));
        assert!(!patterns_match("h?", "h10"));
        assert!(!patterns_match("10.77.*,!10.77.0.11", "10.77.0.11"));
        assert!(patterns_match("[10.0.0.1]:2222", "[10.0.0.1]:2222"));
        assert!(!patterns_match("10.0.0.1", "[10.0.0.1]:2222"));
        assert!(patterns_match("HOST.example", "host.EXAMPLE"));
    }

    #[test]
    fn hashed_entries_match_their_host_only() {
        // Generated here by `ssh-keygen -H` for "localhost".
        let e = "|1|S/D3GI6kG32hB8igt9s/1E3nS5A=|rFWXlAC0Ov2s7JHAr13buvD6K/o=";
        assert!(patterns_match(e, "localhost"));
        assert!(!patterns_match(e, "otherhost"));
    }

    #[test]
    fn lookup_skips_comments_markers_and_junk_and_tolerates_spacing() {
        let text = format!(
            "# comment\n\
             @cert-authority *.example ssh-ed25519 {K2}\n\
             garbage line\n\
             h1,10.0.0.1  ssh-ed25519\t{K1} comment words\n\
             h2 ssh-ed25519 not-base64!\n\
             [h1]:2222 ssh-ed25519 {K2}\n\
             @revoked h1 ssh-ed25519 {K2}\n"
        );
        let f = Path::new("kh");
        let found = lookup_text(&text, f, "h1");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].line, 4);
        assert!(!found[0].revoked);
        assert!(found[1].revoked);
        assert_eq!(lookup_text(&text, f, "[h1]:2222").len(), 1);
        assert!(lookup_text(&text, f, "h2").is_empty());
    }

    #[test]
    fn verdicts() {
        let f = PathBuf::from("kh");
        let e = |b64: &str, revoked| KnownKey {
            file: f.clone(),
            line: 1,
            key: key(b64),
            revoked,
        };
        assert!(matches!(verdict(&[], &key(K1)), Verdict::Unknown));
        assert!(matches!(
            verdict(&[e(K1, false)], &key(K1)),
            Verdict::Known(_)
        ));
        match verdict(&[e(K1, false)], &key(K2)) {
            Verdict::Changed(k) => assert_eq!(fingerprint(&k[0].key), fingerprint(&key(K1))),
            v => panic!("want Changed, got {v:?}"),
        }
        assert!(matches!(
            verdict(&[e(K2, true), e(K2, false)], &key(K2)),
            Verdict::Revoked(_)
        ));
        // Only a revoked entry: the host is otherwise unknown.
        assert!(matches!(
            verdict(&[e(K2, true)], &key(K1)),
            Verdict::Unknown
        ));
    }

    #[test]
    fn pin_appends_a_line_that_lookup_finds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "other ssh-ed25519 AAAA").unwrap(); // no trailing newline
        pin(&file, "10.0.0.1", 22, &key(K1)).unwrap();
        pin(&file, "10.0.0.2", 2222, &key(K2)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let files = [file];
        assert!(matches!(
            verdict(&lookup(&files, "10.0.0.1", 22), &key(K1)),
            Verdict::Known(_)
        ));
        assert!(matches!(
            verdict(&lookup(&files, "10.0.0.2", 2222), &key(K2)),
            Verdict::Known(_)
        ));
        assert!(matches!(
            verdict(&lookup(&files, "10.0.0.2", 22), &key(K2)),
            Verdict::Unknown
        ));
    }

    #[test]
    fn fingerprint_is_openssh_style() {
        assert!(fingerprint(&key(K1)).starts_with("SHA256:"));
    }
}
