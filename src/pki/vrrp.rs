//! The VRRP password keepalived's instances share: random, generated once into the PKI
//! directory (it was the cluster name's hash, which anyone who knows the name can compute), and
//! sent to the VIP hosts as a 0600 file keepalived.conf includes — so keepalived.conf itself
//! holds no secret.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;

/// `pki/keepalived-auth.conf`: one `auth_pass` line.
pub const VRRP_AUTH: &str = "keepalived-auth.conf";
/// Where the VIP hosts keep it (keepalived.conf's `include`).
pub const REMOTE_VRRP_AUTH: &str = "/etc/keepalived/auth.conf";

/// keepalived's PASS authentication uses the first 8 characters only.
const LEN: usize = 8;

/// Writes `dir/keepalived-auth.conf` with a new random password, unless it exists.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(VRRP_AUTH);
    if path.exists() {
        return Ok(());
    }
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let pass: String = (0..LEN)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{VRRP_AUTH}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        writeln!(
            f,
            "# VRRP password of this cluster's keepalived instances (clusterctl, random)\nauth_pass {pass}"
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn random_private_and_written_once() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        ensure(a.path()).unwrap();
        ensure(b.path()).unwrap();
        let read = |d: &Path| std::fs::read_to_string(d.join(VRRP_AUTH)).unwrap();
        let first = read(a.path());
        let line = first.lines().find(|l| l.starts_with("auth_pass ")).unwrap();
        assert_eq!(line.len(), "auth_pass ".len() + LEN);
        assert_ne!(first, read(b.path()), "random, not derived from anything");
        ensure(a.path()).unwrap();
        assert_eq!(read(a.path()), first, "kept");
        let mode = std::fs::metadata(a.path().join(VRRP_AUTH))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
