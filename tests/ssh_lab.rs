//! Lab end-to-end test of the SSH engine on 3 real nspawn hosts (tests/lab/lab.sh): exec,
//! key types and agent, upload with hash check and skip, strict host-key rejection, accept-new
//! pinning, a non-root user with sudo, a jump through a bastion, and a host that is down.
//! One lab is booted for all scenarios. Needs root and systemd-nspawn.
//!
//! Dev aid: `CLUSTERCTL_SSH_LAB=NAME` runs against an already running lab NAME (not torn down).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use clusterctl::inventory::{self, KnownHostsPolicy};
use clusterctl::ssh::shell::{Cmd, Script, Shell};
use clusterctl::ssh::{
    ConnectOpts, ErrorKind, ExecOpts, HostError, Pool, ProgressMode, Target, UploadItem,
    UploadSource, known_hosts,
};
use clusterctl::state::StateDir;

fn lab_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/lab.sh")
}

fn lab(args: &[&str]) -> Output {
    Command::new(lab_sh())
        .args(args)
        .output()
        .expect("run lab.sh")
}

fn lab_ok(args: &[&str]) -> String {
    let out = lab(args);
    assert!(
        out.status.success(),
        "lab.sh {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tears the lab down when the test ends, passed or failed (not a reused dev lab).
struct Teardown(Option<String>);
impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            let _ = lab(&["down", l]);
        }
    }
}

struct Lab {
    name: String,
    dir: PathBuf,
    /// Scratch space for this run (known_hosts variants, state dir, keys).
    tmp: tempfile::TempDir,
    targets: Vec<Target>,
}

impl Lab {
    fn ip(&self, i: usize) -> &str {
        &self.targets[i].address
    }
    fn quiet(&self) -> ConnectOpts {
        ConnectOpts {
            progress: ProgressMode::Quiet,
            logs_dir: Some(self.tmp.path().join("state/logs")),
            ..Default::default()
        }
    }
    fn exec_in(&self, host: &str, cmd: &str) -> String {
        lab_ok(&["exec", &self.name, host, "--", "sh", "-c", cmd])
    }
}

fn ssh_keygen(path: &Path, args: &[&str]) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg("-q")
        .arg("-N")
        .arg("")
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn names(hosts: &[&str]) -> Vec<String> {
    hosts.iter().map(|s| s.to_string()).collect()
}

async fn connect_ok(targets: &[Target], opts: &ConnectOpts) -> Pool {
    let (pool, errors) = Pool::connect(targets, opts).await;
    assert!(
        errors.is_empty(),
        "connect errors: {}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    pool
}

async fn connect_err(targets: &[Target], opts: &ConnectOpts) -> HostError {
    let (pool, mut errors) = Pool::connect(targets, opts).await;
    assert!(
        pool.hosts().is_empty(),
        "connected although it should not: {:?}",
        pool.hosts()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors.remove(0)
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn ssh_engine_on_a_lab() {
    let reuse = std::env::var("CLUSTERCTL_SSH_LAB").ok();
    let name = reuse.clone().unwrap_or_else(|| "sshlab".to_string());
    let _guard = Teardown(if reuse.is_none() {
        Some(name.clone())
    } else {
        None
    });
    if reuse.is_none() {
        let _ = lab(&["down", &name]);
        let t0 = Instant::now();
        lab_ok(&["up", &name, "3"]);
        eprintln!("lab up in {:?}", t0.elapsed());
    }
    let dir = PathBuf::from("/var/lib/clusterctl-lab").join(&name);
    let tmp = tempfile::tempdir().unwrap();
    let loaded = inventory::load(&dir.join("inventory.yaml")).expect("lab inventory loads");
    let state = StateDir {
        root: tmp.path().join("state"),
    };
    let targets = Target::from_inventory(&loaded, &state);
    assert_eq!(targets.len(), 3);
    assert_eq!(targets[0].known_hosts_files[0], dir.join("known_hosts"));
    let lab = Lab {
        name,
        dir,
        tmp,
        targets,
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(exec(&lab));
    rt.block_on(auth_methods(&lab));
    rt.block_on(upload(&lab));
    rt.block_on(strict_host_keys(&lab));
    rt.block_on(accept_new(&lab));
    rt.block_on(sudo(&lab));
    rt.block_on(bastion(&lab));
    rt.block_on(host_down(&lab));
}

async fn exec(lab: &Lab) {
    let pool = connect_ok(&lab.targets, &lab.quiet()).await;
    assert_eq!(pool.hosts(), names(&["h1", "h2", "h3"]));
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let out = pool
            .exec(h, "hostname; echo to-err >&2; exit 3", ExecOpts::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("h{}\n", i + 1));
        assert_eq!(out.stderr, "to-err\n");
        assert_eq!(out.status, 3);
        assert!(!out.success());
    }
    // `run`: a non-zero exit is an error that names the host and carries stderr.
    let e = pool
        .run("h2", "echo boom >&2; false", ExecOpts::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Command);
    let s = e.to_string();
    assert!(s.starts_with(&format!("host h2 ({}:22)", lab.ip(1))), "{s}");
    assert!(s.contains("exit status 1") && s.contains("boom"), "{s}");

    // Per-command timeout.
    let t0 = Instant::now();
    let e = pool
        .exec(
            "h1",
            "sleep 20",
            ExecOpts::default().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "timeout took {:?}",
        t0.elapsed()
    );

    // One session, many channels: 30 commands at once on h1 (more than sshd's default
    // MaxSessions of 10: the pool queues them), all through the same TCP connection.
    let before = lab.exec_in("h1", "ss -Htn state established '( sport = :22 )' | wc -l");
    let cmds: Vec<Shell> = (0..30)
        .map(|i| Script::new(r#"echo "$1"; sleep 0.2"#).arg(i).into())
        .collect();
    let futs = cmds.iter().map(|c| pool.exec("h1", c, ExecOpts::default()));
    let outs = futures::future::join_all(futs).await;
    for (i, o) in outs.into_iter().enumerate() {
        assert_eq!(o.unwrap().stdout, format!("{i}\n"));
    }
    let after = lab.exec_in("h1", "ss -Htn state established '( sport = :22 )' | wc -l");
    assert_eq!(
        before.trim(),
        after.trim(),
        "extra TCP connections were opened"
    );
    assert_eq!(before.trim(), "1", "one session per host");

    // The stream survives binary-ish output and large output.
    let out = pool
        .exec(
            "h3",
            "head -c 3000000 /dev/zero | tr '\\0' x",
            ExecOpts::default(),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 3_000_000);

    // Full per-host log.
    let log = std::fs::read_to_string(lab.tmp.path().join("state/logs/h2.log")).unwrap();
    assert!(
        log.contains("$ echo boom >&2; false") && log.contains("stderr: boom"),
        "{log}"
    );
    pool.close().await;
}

async fn auth_methods(lab: &Lab) {
    // ECDSA and RSA keys (authorised for root on h1 only), and an encrypted ed25519 key.
    let keys = lab.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    ssh_keygen(&keys.join("ecdsa"), &["-t", "ecdsa", "-b", "256"]);
    ssh_keygen(&keys.join("rsa"), &["-t", "rsa", "-b", "2048"]);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "pass phrase", "-f"])
        .arg(keys.join("enc"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut auth = String::new();
    for k in ["ecdsa", "rsa", "enc"] {
        auth.push_str(&std::fs::read_to_string(keys.join(format!("{k}.pub"))).unwrap());
    }
    lab.exec_in(
        "h1",
        &format!("printf '%s' '{auth}' >> /root/.ssh/authorized_keys"),
    );

    for k in ["ecdsa", "rsa"] {
        let mut t = lab.targets[0].clone();
        t.key_file = Some(keys.join(k));
        let pool = connect_ok(&[t], &lab.quiet()).await;
        assert_eq!(
            pool.run("h1", "whoami", ExecOpts::default())
                .await
                .unwrap()
                .stdout,
            "root\n",
            "{k}"
        );
    }
    // Encrypted key: passphrase from the environment variable named in the inventory.
    let mut t = lab.targets[0].clone();
    t.key_file = Some(keys.join("enc"));
    t.passphrase_env = Some("CLUSTERCTL_LAB_KEY_PASS".into());
    // SAFETY: set before any thread of this test reads the environment for it.
    unsafe { std::env::set_var("CLUSTERCTL_LAB_KEY_PASS", "pass phrase") };
    let pool = connect_ok(std::slice::from_ref(&t), &lab.quiet()).await;
    assert!(pool.run("h1", "true", ExecOpts::default()).await.is_ok());
    // Without the passphrase (no terminal here): an auth error naming the variable.
    t.passphrase_env = Some("CLUSTERCTL_LAB_KEY_PASS_UNSET".into());
    let e = connect_err(&[t], &lab.quiet()).await;
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.to_string()
            .contains("CLUSTERCTL_LAB_KEY_PASS_UNSET is not set"),
        "{e}"
    );

    // A key the host does not know: refused, with a fix.
    let mut t = lab.targets[1].clone();
    t.key_file = Some(keys.join("ecdsa")); // only on h1
    let e = connect_err(&[t], &lab.quiet()).await;
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.to_string().contains("authorized_keys"), "{e}");

    // ssh-agent holding the lab key; no key file.
    let agent_dir = lab.tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let sock = agent_dir.join("sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..50 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("ssh-add")
        .arg(lab.dir.join("id_ed25519"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: as above.
    unsafe { std::env::set_var("SSH_AUTH_SOCK", &sock) };
    let mut t = lab.targets[2].clone();
    t.key_file = None;
    t.agent = true;
    let r = Pool::connect(&[t], &lab.quiet()).await;
    let _ = agent.kill();
    let _ = agent.wait();
    unsafe { std::env::remove_var("SSH_AUTH_SOCK") };
    assert!(r.1.is_empty(), "agent auth: {:?}", r.1);
    assert_eq!(
        r.0.run("h3", "hostname", ExecOpts::default())
            .await
            .unwrap()
            .stdout,
        "h3\n"
    );
}

async fn upload(lab: &Lab) {
    let pool = connect_ok(&lab.targets, &lab.quiet()).await;
    let hosts = names(&["h1", "h2", "h3"]);
    for h in &hosts {
        pool.run(h, "rm -rf /opt/ssh-test", ExecOpts::default())
            .await
            .unwrap();
    }
    let data = b"hello from clusterctl\n".to_vec();
    let src = UploadSource::Bytes(data.clone());
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let dest = "/opt/ssh-test/sub dir/hello.txt";
    for h in &hosts {
        let o = pool
            .upload(h, &src, dest, 0o640, Some("deploy"))
            .await
            .unwrap();
        assert_eq!(
            (o.bytes_sent, o.bytes_skipped, o.skipped),
            (data.len() as u64, 0, false)
        );
        let st = pool
            .run(
                h,
                Script::new(
                    r#"sha256sum "$1"; stat -c '%a %U' "$1"; ls -a "$(dirname "$1")" | wc -l"#,
                )
                .arg(dest),
                ExecOpts::default(),
            )
            .await
            .unwrap();
        let lines: Vec<&str> = st.stdout.lines().collect();
        assert!(lines[0].starts_with(&sha), "{h}: {}", st.stdout);
        assert_eq!(lines[1], "640 deploy");
        assert_eq!(lines[2], "3", "temp file left behind on {h}");
        // Same content: skipped, nothing sent.
        let o = pool
            .upload(h, &src, dest, 0o640, Some("deploy"))
            .await
            .unwrap();
        assert_eq!(
            (o.bytes_sent, o.bytes_skipped, o.skipped),
            (0, data.len() as u64, true)
        );
    }
    // Same content, other mode: skipped, mode fixed.
    let o = pool
        .upload("h1", &src, dest, 0o600, Some("deploy"))
        .await
        .unwrap();
    assert!(o.skipped);
    assert_eq!(
        pool.run(
            "h1",
            Cmd::new("stat").args(["-c", "%a", dest]),
            ExecOpts::default()
        )
        .await
        .unwrap()
        .stdout,
        "600\n"
    );
    // Changed on the far side: sent again.
    pool.run(
        "h2",
        Script::new(r#"echo tampered > "$1""#).arg(dest),
        ExecOpts::default(),
    )
    .await
    .unwrap();
    assert!(
        !pool
            .upload("h2", &src, dest, 0o640, None)
            .await
            .unwrap()
            .skipped
    );

    // A file from disk, several files at once, in a fan-out.
    let big = lab.tmp.path().join("big.bin");
    let blob: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &blob).unwrap();
    let items = vec![
        UploadItem {
            source: UploadSource::Path(big.clone()),
            dest: "/opt/ssh-test/big.bin".into(),
            mode: 0o644,
            owner: None,
        },
        UploadItem {
            source: src.clone(),
            dest: dest.into(),
            mode: 0o640,
            owner: None,
        },
    ];
    let it = items.clone();
    let res = pool.fan_out("upload", &hosts, 64, move |h, p| {
        let it = it.clone();
        async move { p.upload_many(&h, &it).await }
    });
    for r in res.await {
        let o = r.result.unwrap();
        assert_eq!(
            (o[0].bytes_sent, o[0].skipped),
            (4_000_000, false),
            "{}",
            r.host
        );
        assert!(o[1].skipped, "{}", r.host);
    }
    let far = pool
        .run("h3", "sha256sum /opt/ssh-test/big.bin", ExecOpts::default())
        .await
        .unwrap();
    let want = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&blob))
    };
    assert!(far.stdout.starts_with(&want));
    for r in pool
        .fan_out("upload again", &hosts, 2, move |h, p| {
            let it = items.clone();
            async move { p.upload_many(&h, &it).await }
        })
        .await
    {
        let o = r.result.unwrap();
        assert_eq!(o.iter().map(|o| o.bytes_sent).sum::<u64>(), 0, "{}", r.host);
        assert_eq!(o[0].bytes_skipped, 4_000_000);
    }
    // The far side fails before reading its input (cannot create the directory): a clear error,
    // no hang on a stream nobody reads.
    let big_src = UploadSource::Path(big.clone());
    let up = pool.upload("h1", &big_src, "/proc/clusterctl-no/x", 0o644, None);
    let e = tokio::time::timeout(Duration::from_secs(30), up)
        .await
        .expect("upload hung")
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Command, "{e}");
    assert!(e.to_string().contains("mkdir"), "{e}");
    // A missing local file: a local error naming the host and the file.
    let e = pool
        .upload(
            "h1",
            &UploadSource::Path(lab.tmp.path().join("nope")),
            "/tmp/x",
            0o644,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Local);
    assert!(e.to_string().contains("nope"), "{e}");
    pool.run("h1", "rm -rf /opt/ssh-test", ExecOpts::default())
        .await
        .unwrap();
}

/// A known_hosts file where `ip`'s line holds another (freshly generated) key.
fn wrong_known_hosts(lab: &Lab, ip: &str) -> (PathBuf, String) {
    let k = lab.tmp.path().join(format!("wrongkey-{ip}"));
    ssh_keygen(&k, &["-t", "ed25519"]);
    let pub_path = PathBuf::from(format!("{}.pub", k.display()));
    let pubk = std::fs::read_to_string(&pub_path).unwrap();
    let mut parts = pubk.split_whitespace();
    let line = format!("{ip} {} {}\n", parts.next().unwrap(), parts.next().unwrap());
    let file = lab.tmp.path().join(format!("known_hosts.wrong-{ip}"));
    std::fs::write(&file, line).unwrap();
    let fp = known_hosts::fingerprint(&russh::keys::load_public_key(&pub_path).unwrap());
    (file, fp)
}

fn real_fingerprint(lab: &Lab, ip: &str) -> String {
    let found = known_hosts::lookup(&[lab.dir.join("known_hosts")], ip, 22);
    known_hosts::fingerprint(&found[0].key)
}

async fn strict_host_keys(lab: &Lab) {
    let ip = lab.ip(0);
    let (file, wrong_fp) = wrong_known_hosts(lab, ip);
    let mut t = lab.targets[0].clone();
    t.known_hosts_files = vec![file.clone()];
    t.pin_file = lab.tmp.path().join("strict-pins");
    let e = connect_err(std::slice::from_ref(&t), &lab.quiet()).await;
    assert_eq!(e.kind, ErrorKind::HostKeyChanged, "{e}");
    let s = e.to_string();
    let real = real_fingerprint(lab, ip);
    assert!(s.starts_with(&format!("host h1 ({ip}:22)")), "{s}");
    assert!(
        s.contains(&format!("known {wrong_fp}")) && s.contains(&format!("now {real}")),
        "{s}"
    );
    assert!(s.contains(&file.display().to_string()), "{s}");
    // A changed key is a hard error even under accept-new, and nothing gets pinned.
    t.known_hosts = KnownHostsPolicy::AcceptNew;
    let e = connect_err(
        std::slice::from_ref(&t),
        &ConnectOpts {
            accept_new: true,
            ..lab.quiet()
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::HostKeyChanged);
    assert!(!t.pin_file.exists());

    // Unknown host under strict: refused, says how to add it.
    let mut t = lab.targets[1].clone();
    let empty = lab.tmp.path().join("known_hosts.empty");
    std::fs::write(&empty, "").unwrap();
    t.known_hosts_files = vec![empty];
    t.pin_file = lab.tmp.path().join("strict-pins");
    let e = connect_err(&[t], &lab.quiet()).await;
    assert_eq!(e.kind, ErrorKind::HostKeyUnknown);
    assert!(
        e.to_string().contains("accept-new") && e.to_string().contains("ssh-keyscan"),
        "{e}"
    );
}

async fn accept_new(lab: &Lab) {
    let pins = lab.tmp.path().join("state-an/known_hosts");
    let empty = lab.tmp.path().join("known_hosts.empty");
    let mut targets = lab.targets.clone();
    for t in &mut targets {
        t.known_hosts = KnownHostsPolicy::AcceptNew;
        t.known_hosts_files = vec![empty.clone(), pins.clone()];
        t.pin_file = pins.clone();
    }
    let pool = connect_ok(&targets, &lab.quiet()).await;
    assert_eq!(pool.hosts().len(), 3);
    pool.close().await;
    // Pinned: one line per host, each the host's real key.
    let text = std::fs::read_to_string(&pins).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for i in 0..3 {
        let ip = lab.ip(i);
        let got = known_hosts::lookup(std::slice::from_ref(&pins), ip, 22);
        assert_eq!(got.len(), 1);
        assert_eq!(
            known_hosts::fingerprint(&got[0].key),
            real_fingerprint(lab, ip)
        );
    }
    // Now strict against the pins works, and a second accept-new run pins nothing more.
    for t in &mut targets {
        t.known_hosts = KnownHostsPolicy::Strict;
    }
    connect_ok(&targets, &lab.quiet()).await.close().await;
    for t in &mut targets {
        t.known_hosts = KnownHostsPolicy::AcceptNew;
    }
    connect_ok(&targets, &lab.quiet()).await.close().await;
    assert_eq!(std::fs::read_to_string(&pins).unwrap(), text);
    // A pinned key that no longer matches: hard error even with accept-new.
    let (wrong, _) = wrong_known_hosts(lab, lab.ip(1));
    std::fs::write(&pins, std::fs::read_to_string(&wrong).unwrap()).unwrap();
    let (pool, errors) = Pool::connect(&targets, &lab.quiet()).await;
    assert_eq!(pool.hosts(), names(&["h1", "h3"]));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].host.as_str(), errors[0].kind),
        ("h2", ErrorKind::HostKeyChanged)
    );
}

async fn sudo(lab: &Lab) {
    let mut deploy = lab.targets.clone();
    for t in &mut deploy {
        t.user = "deploy".into();
        t.sudo = true;
    }
    let pool = connect_ok(&deploy, &lab.quiet()).await;
    assert_eq!(
        pool.run("h1", "id -un", ExecOpts::default())
            .await
            .unwrap()
            .stdout,
        "deploy\n"
    );
    assert_eq!(
        pool.run("h1", "id -un", ExecOpts::root())
            .await
            .unwrap()
            .stdout,
        "root\n"
    );
    // Pipes and redirections run privileged too.
    pool.run(
        "h2",
        "echo x > /root/sudo-test && cat /root/sudo-test | tr x y",
        ExecOpts::root(),
    )
    .await
    .unwrap();
    let o = pool
        .upload(
            "h2",
            &UploadSource::Bytes(b"root file\n".to_vec()),
            "/etc/clusterctl-sudo-test",
            0o600,
            None,
        )
        .await
        .unwrap();
    assert!(!o.skipped);
    assert_eq!(
        lab.exec_in("h2", "stat -c '%U %a' /etc/clusterctl-sudo-test")
            .trim(),
        "root 600"
    );
    assert!(
        pool.upload(
            "h2",
            &UploadSource::Bytes(b"root file\n".to_vec()),
            "/etc/clusterctl-sudo-test",
            0o600,
            None
        )
        .await
        .unwrap()
        .skipped
    );
    lab.exec_in("h2", "rm -f /etc/clusterctl-sudo-test /root/sudo-test");

    // nopw: sudo wants a password -> a clear error naming host and user, with a fix.
    let mut t = lab.targets[2].clone();
    t.user = "nopw".into();
    t.sudo = true;
    let pool = connect_ok(&[t], &lab.quiet()).await;
    let e = pool.run("h3", "true", ExecOpts::root()).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::SudoPassword, "{e}");
    let s = e.to_string();
    assert!(
        s.starts_with(&format!("host h3 ({}:22)", lab.ip(2)))
            && s.contains("nopw")
            && s.contains("NOPASSWD"),
        "{s}"
    );
    let e = pool
        .upload(
            "h3",
            &UploadSource::Bytes(b"x".to_vec()),
            "/etc/x",
            0o644,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::SudoPassword, "{e}");
}

async fn bastion(lab: &Lab) {
    // h2 and h3 through h1: their sshd sees the connection coming from h1's address.
    let mut targets = vec![lab.targets[1].clone(), lab.targets[2].clone()];
    for t in &mut targets {
        let mut b = lab.targets[0].clone();
        b.name = "jump".into();
        t.bastion = Some(Box::new(b));
    }
    let pool = connect_ok(&targets, &lab.quiet()).await;
    for (h, want) in [("h2", "h2"), ("h3", "h3")] {
        let out = pool
            .run(h, "hostname; echo $SSH_CONNECTION", ExecOpts::default())
            .await
            .unwrap();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], want);
        assert_eq!(
            lines[1].split(' ').next(),
            Some(lab.ip(0)),
            "{h} not reached through h1: {}",
            out.stdout
        );
    }
    // An upload through the jump.
    let o = pool
        .upload(
            "h3",
            &UploadSource::Bytes(vec![7u8; 200_000]),
            "/tmp/via-jump",
            0o644,
            None,
        )
        .await
        .unwrap();
    assert_eq!(o.bytes_sent, 200_000);
    pool.close().await;

    // A bastion that is down: every host behind it fails, naming the bastion.
    let mut t = lab.targets[1].clone();
    let mut b = lab.targets[0].clone();
    b.name = "deadjump".into();
    b.address = format!("{}.250", lab.ip(0).rsplit_once('.').unwrap().0)
        .parse()
        .unwrap();
    b.connect_timeout = Duration::from_secs(2);
    t.bastion = Some(Box::new(b));
    let e = connect_err(
        &[t],
        &ConnectOpts {
            retries: 0,
            ..lab.quiet()
        },
    )
    .await;
    assert_eq!(e.kind, ErrorKind::Connect);
    assert!(e.to_string().contains("bastion deadjump"), "{e}");
}

async fn host_down(lab: &Lab) {
    lab_ok(&["stop-host", &lab.name, "h3"]);
    let mut targets = lab.targets.clone();
    for t in &mut targets {
        t.connect_timeout = Duration::from_secs(3);
    }
    let t0 = Instant::now();
    let (pool, errors) = Pool::connect(&targets, &lab.quiet()).await;
    let took = t0.elapsed();
    assert_eq!(pool.hosts(), names(&["h1", "h2"]));
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert_eq!((e.host.as_str(), e.kind), ("h3", ErrorKind::Connect));
    assert!(
        e.to_string()
            .starts_with(&format!("host h3 ({}:22): connect:", lab.ip(2))),
        "{e}"
    );
    assert!(took < Duration::from_secs(12), "connecting took {took:?}");

    // A fan-out over all three: h1 and h2 do the step; h3 reports its connection error; a command
    // failing on h2 is reported with its stderr while h1 finishes.
    let all = names(&["h1", "h2", "h3"]);
    let res = pool
        .fan_out("marker", &all, 64, |h, p| async move {
            p.run(&h, "if [ \"$(hostname)\" = h2 ]; then echo h2 says no >&2; exit 4; fi; sleep 0.5; echo done > /tmp/marker", ExecOpts::default())
                .await
        })
        .await;
    assert_eq!(
        res.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        ["h1", "h2", "h3"]
    );
    assert!(res[0].result.is_ok());
    let e2 = res[1].result.as_ref().unwrap_err();
    assert_eq!(e2.kind, ErrorKind::Command);
    assert!(
        e2.to_string().contains("h2 says no") && e2.to_string().starts_with("host h2"),
        "{e2}"
    );
    assert!(e2.step.starts_with("marker"), "{e2}");
    let e3 = res[2].result.as_ref().unwrap_err();
    assert_eq!((e3.host.as_str(), e3.kind), ("h3", ErrorKind::Connect));
    assert_eq!(
        lab.exec_in("h1", "cat /tmp/marker").trim(),
        "done",
        "h1 did not finish its step"
    );
    pool.close().await;
    lab_ok(&["start-host", &lab.name, "h3"]);
}
