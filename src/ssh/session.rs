//! One SSH session: TCP (or a direct-tcpip channel through a bastion), host key check against
//! known_hosts (strict or accept-new), then key file / agent authentication.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{cipher, compression};

use super::error::{ErrorKind, HostError};
use super::known_hosts::{self, Verdict};
use super::target::Target;
use crate::inventory::KnownHostsPolicy;

pub type Session = Handle<Client>;

/// Our russh handler: checks the host key and remembers why it refused one.
pub struct Client {
    target: Target,
    accept_new: bool,
    problem: Arc<Mutex<Option<HostError>>>,
    pinned: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let t = &self.target;
        let step = "host key";
        let fail = |kind, msg: String, fix: String| {
            HostError::new(&t.name, &t.endpoint(), step, kind, msg).with_fix(fix)
        };
        let key: &PublicKey = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                *self.problem.lock().unwrap() = Some(fail(
                    ErrorKind::HostKeyUnknown,
                    "the host presented a certificate; host certificates are not supported".into(),
                    "list the host's plain key in known_hosts".into(),
                ));
                return Ok(false);
            }
        };
        let entries = known_hosts::lookup(&t.known_hosts_files, &t.address, t.port);
        let files = t
            .known_hosts_files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let now = known_hosts::fingerprint(key);
        match known_hosts::verdict(&entries, key) {
            Verdict::Known(_) => Ok(true),
            Verdict::Changed(known) => {
                let k = &known[0];
                *self.problem.lock().unwrap() = Some(fail(
                    ErrorKind::HostKeyChanged,
                    format!(
                        "host key changed: known {} ({}:{}) now {now} ({})",
                        known_hosts::fingerprint(&k.key),
                        k.file.display(),
                        k.line,
                        key.algorithm()
                    ),
                    format!(
                        "if the host was reinstalled, remove its line {} from {} and connect again; \
                         otherwise someone may be intercepting the connection: do not go on",
                        k.line,
                        k.file.display()
                    ),
                ));
                Ok(false)
            }
            Verdict::Revoked(k) => {
                *self.problem.lock().unwrap() = Some(fail(
                    ErrorKind::HostKeyChanged,
                    format!(
                        "host key {now} is marked @revoked ({}:{})",
                        k.file.display(),
                        k.line
                    ),
                    "give the host a new host key and list it in known_hosts".into(),
                ));
                Ok(false)
            }
            Verdict::Unknown if self.accept_new || t.known_hosts == KnownHostsPolicy::AcceptNew => {
                if let Err(e) = known_hosts::pin(&t.pin_file, &t.address, t.port, key) {
                    *self.problem.lock().unwrap() = Some(fail(
                        ErrorKind::Local,
                        format!("cannot pin the host key into {}: {e}", t.pin_file.display()),
                        "make the cluster's state directory writable".into(),
                    ));
                    return Ok(false);
                }
                *self.pinned.lock().unwrap() = Some(now);
                Ok(true)
            }
            Verdict::Unknown => {
                *self.problem.lock().unwrap() = Some(fail(
                    ErrorKind::HostKeyUnknown,
                    format!("host key {now} ({}) is not in {files}", key.algorithm()),
                    format!(
                        "check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub) and add it \
                         (ssh-keyscan -p {} {} >> {}), or set spec.ssh.knownHosts: accept-new to trust it on first use",
                        key_file_kind(key.algorithm()),
                        t.port,
                        t.address,
                        t.known_hosts_files.first().unwrap_or(&t.pin_file).display()
                    ),
                ));
                Ok(false)
            }
        }
    }
}

fn key_file_kind(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::Ecdsa { .. } => "ecdsa",
        Algorithm::Rsa { .. } => "rsa",
        _ => "*",
    }
}

/// Private keys, loaded (and decrypted) once per file for the whole run.
#[derive(Default)]
pub struct KeyStore {
    keys: HashMap<PathBuf, Result<Arc<PrivateKey>, String>>,
}

impl KeyStore {
    /// Loads every key file the targets (and their bastions) use; asks for a passphrase once per
    /// encrypted key when it is not in the environment and stdin is a terminal.
    pub fn load(targets: &[Target]) -> KeyStore {
        let mut store = KeyStore::default();
        let mut all: Vec<&Target> = Vec::new();
        for t in targets {
            all.push(t);
            if let Some(b) = &t.bastion {
                all.push(b);
            }
        }
        for t in all {
            for path in key_files(t) {
                let env = t.passphrase_env.as_deref();
                store
                    .keys
                    .entry(path)
                    .or_insert_with_key(|p| load_key(p, env).map(Arc::new));
            }
        }
        store
    }

    fn get(&self, path: &Path) -> Option<&Result<Arc<PrivateKey>, String>> {
        self.keys.get(path)
    }
}

/// The configured key file, else the default identities that exist.
fn key_files(t: &Target) -> Vec<PathBuf> {
    if let Some(k) = &t.key_file {
        return vec![k.clone()];
    }
    let Some(home) = std::env::var_os("HOME") else {
        return vec![];
    };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| PathBuf::from(&home).join(".ssh").join(n))
        .filter(|p| p.exists())
        .collect()
}

/// Reads a private key (OpenSSH, PKCS#8 or PEM; ed25519, ECDSA, RSA), decrypting it with the
/// passphrase from `passphrase_env` or, on a terminal, from a prompt.
pub fn load_key(path: &Path, passphrase_env: Option<&str>) -> Result<PrivateKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(k) => return Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {}
        Err(e) => return Err(format!("cannot use key file {}: {e}", path.display())),
    }
    let pass = match passphrase_env.and_then(|v| std::env::var(v).ok()) {
        Some(p) => p,
        None if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
            let term = console::Term::stderr();
            let _ = term.write_str(&format!("Passphrase for {}: ", path.display()));
            term.read_secure_line()
                .map_err(|e| format!("cannot read the passphrase: {e}"))?
        }
        None => {
            return Err(format!(
                "key file {} is encrypted and no passphrase is available{}",
                path.display(),
                match passphrase_env {
                    Some(v) => format!(" (environment variable {v} is not set)"),
                    None =>
                        " (set spec.ssh.passphraseEnv to an environment variable holding it)".into(),
                }
            ));
        }
    };
    russh::keys::decode_secret_key(&text, Some(&pass)).map_err(|e| {
        format!(
            "cannot decrypt key file {} with the given passphrase: {e}",
            path.display()
        )
    })
}

/// Settings shared by all connections of a run.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Trust unknown host keys on first use even if the inventory says strict (a CLI flag).
    pub accept_new: bool,
    pub keepalive: Duration,
}

fn config_for(t: &Target, settings: &SessionSettings) -> Arc<client::Config> {
    let entries = known_hosts::lookup(&t.known_hosts_files, &t.address, t.port);
    let mut algos = known_hosts::known_algorithms(&entries);
    // An RSA entry covers the SHA-2 signature variants.
    if algos.iter().any(|a| a.clone().is_rsa()) {
        algos.retain(|a| !a.clone().is_rsa());
        algos.push(Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha512),
        });
        algos.push(Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha256),
        });
    }
    for a in russh::Preferred::DEFAULT.key.iter() {
        if !algos.contains(a) {
            algos.push(a.clone());
        }
    }
    let preferred = russh::Preferred {
        key: algos.into(),
        // AES-GCM runs on AES-NI through ring: cheaper than ChaCha20 for big uploads.
        cipher: vec![
            cipher::AES_128_GCM,
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_CTR,
        ]
        .into(),
        compression: vec![compression::NONE].into(),
        ..Default::default()
    };
    Arc::new(client::Config {
        preferred,
        // Crate notes #4: keepalives, never an inactivity timeout (it kills quiet commands).
        inactivity_timeout: None,
        keepalive_interval: Some(settings.keepalive),
        keepalive_max: 4,
        nodelay: true,
        window_size: 8 * 1024 * 1024,
        ..Default::default()
    })
}

/// What a connection attempt gives besides the session: the fingerprint pinned, if any.
pub struct Connected {
    pub session: Session,
    pub pinned: Option<String>,
}

/// Connects and authenticates to `t`, directly or through the already open `bastion` session.
pub async fn connect(
    t: &Target,
    keys: &KeyStore,
    settings: &SessionSettings,
    bastion: Option<&Session>,
) -> Result<Connected, HostError> {
    let problem = Arc::new(Mutex::new(None));
    let pinned = Arc::new(Mutex::new(None));
    let handler = Client {
        target: t.clone(),
        accept_new: settings.accept_new,
        problem: problem.clone(),
        pinned: pinned.clone(),
    };
    let config = config_for(t, settings);
    let conn_err =
        |msg: String| HostError::new(&t.name, &t.describe(), "connect", ErrorKind::Connect, msg);
    let handshake = async {
        match bastion {
            None => client::connect(config, (t.address.as_str(), t.port), handler).await,
            Some(b) => {
                let ch = b
                    .channel_open_direct_tcpip(t.address.to_string(), t.port as u32, "127.0.0.1", 0)
                    .await?;
                client::connect_stream(config, ch.into_stream(), handler).await
            }
        }
    };
    let mut session = match tokio::time::timeout(t.connect_timeout, handshake).await {
        Err(_) => {
            return Err(conn_err(format!("no SSH answer within {}s", t.connect_timeout.as_secs())).with_fix(
                "check that the host is up, the address and port are right, and no firewall drops SSH \
                 (spec.ssh.connectTimeoutSecs sets the wait)",
            ));
        }
        Ok(Err(e)) => {
            if let Some(p) = problem.lock().unwrap().take() {
                return Err(p.with_step("connect"));
            }
            let via = match (&t.bastion, bastion) {
                (Some(b), Some(_)) => {
                    format!(" (bastion {} could not open a tunnel to it)", b.name)
                }
                _ => String::new(),
            };
            return Err(conn_err(format!("{}{via}", describe_russh(&e)))
                .with_fix("check that the host is up and sshd listens on that address and port"));
        }
        Ok(Ok(s)) => s,
    };
    authenticate(&mut session, t, keys).await?;
    let pinned = pinned.lock().unwrap().take();
    Ok(Connected { session, pinned })
}

fn describe_russh(e: &russh::Error) -> String {
    match e {
        russh::Error::IO(io) => format!("cannot connect: {io}"),
        russh::Error::ConnectionTimeout => "connection timed out".into(),
        russh::Error::Disconnect => "the server closed the connection".into(),
        other => format!("SSH handshake failed: {other}"),
    }
}

async fn authenticate(s: &mut Session, t: &Target, keys: &KeyStore) -> Result<(), HostError> {
    let auth_err =
        |msg: String| HostError::new(&t.name, &t.describe(), "authenticate", ErrorKind::Auth, msg);
    let mut tried: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let use_agent =
        t.agent || (t.key_file.is_none() && std::env::var_os("SSH_AUTH_SOCK").is_some());
    if use_agent {
        match AgentClient::connect_env().await {
            Err(e) => problems.push(format!("ssh-agent: {e}")),
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let AgentIdentity::PublicKey { key, comment } = id else {
                        continue;
                    };
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash(s).await
                    } else {
                        None
                    };
                    tried.push(format!("agent key {comment}"));
                    match s
                        .authenticate_publickey_with(&t.user, key, hash, &mut agent)
                        .await
                    {
                        Ok(AuthResult::Success) => return Ok(()),
                        Ok(AuthResult::Failure { .. }) => {}
                        Err(e) => problems.push(format!("ssh-agent: {e}")),
                    }
                }
            }
        }
    }
    for path in key_files(t) {
        match keys.get(&path) {
            None => {}
            Some(Err(e)) => problems.push(e.clone()),
            Some(Ok(k)) => {
                let hash = if k.algorithm().is_rsa() {
                    rsa_hash(s).await
                } else {
                    None
                };
                tried.push(path.display().to_string());
                match s
                    .authenticate_publickey(&t.user, PrivateKeyWithHashAlg::new(k.clone(), hash))
                    .await
                {
                    Ok(AuthResult::Success) => return Ok(()),
                    Ok(AuthResult::Failure { .. }) => {}
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    let mut msg = if tried.is_empty() {
        format!(
            "no key to log in as {} (no key file and no agent identity)",
            t.user
        )
    } else {
        format!("user {} was refused with {}", t.user, tried.join(", "))
    };
    if !problems.is_empty() {
        msg.push_str(&format!("; {}", problems.join("; ")));
    }
    Err(auth_err(msg).with_fix(format!(
        "put the public key into ~{}/.ssh/authorized_keys on the host, or set spec.ssh.keyFile / user \
         (or the host's keyFile / user) in the inventory",
        t.user
    )))
}

/// Crate notes #3: RSA keys must sign with SHA-2 (OpenSSH >= 8.8 refuses SHA-1 `ssh-rsa`).
async fn rsa_hash(s: &Session) -> Option<russh::keys::HashAlg> {
    match s.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        // No server-sig-algs extension: assume a modern server.
        _ => Some(russh::keys::HashAlg::Sha256),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_key_needs_its_passphrase() {
        use russh::keys::ssh_key::LineEnding;
        let mut rng = rand::rng();
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let enc = key.encrypt(&mut rng, "s3cret").unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, enc.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();

        // SAFETY: test-local variable names, read only by this test.
        unsafe { std::env::set_var("CLUSTERCTL_TEST_PASS_OK", "s3cret") };
        unsafe { std::env::set_var("CLUSTERCTL_TEST_PASS_BAD", "wrong") };
        let k = load_key(&path, Some("CLUSTERCTL_TEST_PASS_OK")).expect("decrypts");
        assert_eq!(k.public_key().key_data(), key.public_key().key_data());
        let e = load_key(&path, Some("CLUSTERCTL_TEST_PASS_BAD")).unwrap_err();
        assert!(e.contains("cannot decrypt"), "{e}");
        let e = load_key(&path, Some("CLUSTERCTL_TEST_PASS_UNSET")).unwrap_err();
        assert!(e.contains("CLUSTERCTL_TEST_PASS_UNSET is not set"), "{e}");
    }

    #[test]
    fn plain_keys_of_each_type_load() {
        use russh::keys::EcdsaCurve;
        use russh::keys::ssh_key::LineEnding;
        let mut rng = rand::rng();
        let dir = tempfile::tempdir().unwrap();
        for (i, alg) in [
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let key = PrivateKey::random(&mut rng, alg).unwrap();
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
            assert!(load_key(&path, None).is_ok());
        }
        let e = load_key(&dir.path().join("missing"), None).unwrap_err();
        assert!(e.contains("cannot read key file"), "{e}");
    }
}
