//! `backup` then `restore` of a running lab cluster, shared by backup_lab (systemd units) and
//! static_pods_lab (static pods): the same checks in both modes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterctl::inventory::Inventory;

use super::*;

pub const ETCD_HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Per etcd/control-plane host, the start stamp and restart count of etcd and the apiserver,
/// and what lies beside the data directory: equal before and after means nothing was touched.
pub fn host_stamps(lab: &Lab) -> Vec<String> {
    ETCD_HOSTS
        .iter()
        .map(|h| {
            lab.exec_ok(
                h,
                "for u in etcd kube-apiserver; do systemctl show -p NRestarts -p ExecMainStartTimestampMonotonic --value $u | tr '\\n' ' '; done; \
                 ls -d /var/lib/etcd* /var/lib/clusterctl/restore/* /etc/kubernetes/manifests*/* 2>/dev/null | tr '\\n' ' '",
            )
        })
        .collect()
}

pub fn clusterctl_in(inv: &Path, args: &[&str]) -> std::process::Output {
    let mut a = vec!["-i", inv.to_str().unwrap()];
    a.extend(args);
    clusterctl(&a)
}

/// The lab's test-only age identity (its public key is in every lab inventory).
pub fn lab_backup_identity() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/backup-identity.txt")
}

/// A namespace with a ConfigMap; `backup`; the namespace deleted; refused restores (a
/// corrupted copy, no --yes without a terminal) touch no host; `restore --yes` brings it back
/// with every member healthy, the nodes Ready and the old data kept. (backup s, restore s)
pub fn backup_delete_restore(
    lab: &Lab,
    inv: &Inventory,
    inv_path: &Path,
    admin: &Path,
) -> (f64, f64) {
    let cluster = inv.name().to_string();
    // Something to lose: a namespace with a ConfigMap.
    kubectl_ok(admin, &["create", "namespace", "keep-me"]);
    kubectl_ok(
        admin,
        &[
            "-n",
            "keep-me",
            "create",
            "configmap",
            "precious",
            "--from-literal=answer=42",
        ],
    );

    // backup
    let t = Instant::now();
    let out = clusterctl_in(inv_path, &["-o", "json", "backup"]);
    let backup_secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "backup: {}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archive = PathBuf::from(r["path"].as_str().unwrap());
    let sum_file = PathBuf::from(format!("{}.sha256", archive.display()));
    assert!(archive.starts_with(lab.dir.join(format!("clusters/{cluster}/backups"))));
    assert!(archive.is_file() && sum_file.is_file());
    let sum = std::fs::read_to_string(&sum_file).unwrap();
    assert!(sum.starts_with(r["sha256"].as_str().unwrap()), "{sum}");
    assert!(r["status"]["totalKey"].as_u64().unwrap() > 100, "{r}");
    eprintln!(
        "TIMING backup: {backup_secs:.1}s, archive {} bytes (snapshot {} bytes)",
        r["size"], r["snapshotBytes"]
    );
    // Encrypted at rest to the lab's recipient: no tar header, no PEM in the file.
    assert_eq!(r["encrypted"], true, "{r}");
    let bytes = std::fs::read(&archive).unwrap();
    for clear in [&b"ustar"[..], b"BEGIN", b"snapshot.db"] {
        assert!(
            !bytes.windows(clear.len()).any(|w| w == clear),
            "{} found in the clear in {}",
            String::from_utf8_lossy(clear),
            archive.display()
        );
    }
    // Signed with the cluster's backup-signing key, which is not in the archive. Opened with
    // the lab identity, it holds the manifest, snapshot, inventory and the PKI.
    let state = clusterctl::state::StateDir::new(&lab.dir, &cluster);
    let key = clusterctl::commands::seal::trusted_key(&state, None).unwrap();
    let ids = clusterctl::commands::seal::load_identities(&lab_backup_identity()).unwrap();
    let check = tempfile::tempdir().unwrap();
    clusterctl::commands::seal::open(&archive, &key)
        .unwrap()
        .unpack(Some(&ids), check.path(), u64::MAX)
        .unwrap();
    for f in [
        "manifest.json",
        "etcd/snapshot.db",
        "inventory.yaml",
        "pki/ca.key",
        "pki/etcd/ca.crt",
    ] {
        assert!(check.path().join(f).is_file(), "{f} not in the archive");
    }
    assert!(
        !check.path().join("backup-signing.key").exists()
            && !check.path().join("pki/backup-signing.key").exists()
    );
    drop(check);
    // A second backup in the same second would get the same name: it is refused, never replaces.
    let again = clusterctl_in(inv_path, &["backup", "--out", archive.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));

    // Gone: the namespace is deleted. The lab cannot run metrics-server, so init registered no
    // metrics APIService (an aggregated API that does not answer would keep every namespace
    // Terminating): the deletion needs no help.
    let o = kubectl(admin, &["get", "apiservice", "v1beta1.metrics.k8s.io"]);
    assert!(
        !o.status.success() && text(&o).contains("NotFound"),
        "an APIService nothing serves: {}",
        text(&o)
    );
    kubectl_ok(admin, &["delete", "namespace", "keep-me", "--wait=true"]);
    let gone = eventually(Duration::from_secs(60), || {
        let o = kubectl(admin, &["get", "namespace", "keep-me"]);
        (!o.status.success() && text(&o).contains("NotFound")).then_some(())
    });
    assert!(gone.is_some(), "namespace keep-me still there");

    // Refused before any host is touched: a corrupted copy (its .sha256 re-made to match), a
    // restore without the identity to decrypt it, one with a stranger's identity, and one with
    // no terminal and no --yes.
    let identity = lab_backup_identity();
    let identity = identity.to_str().unwrap();
    let before = host_stamps(lab);
    let bad = lab.dir.join("corrupt.backup");
    let mut bytes = std::fs::read(&archive).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0x5a;
    std::fs::write(&bad, &bytes).unwrap();
    let o = clusterctl_in(
        inv_path,
        &[
            "--yes",
            "restore",
            "--identity",
            identity,
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not the one signed") && text(&o).contains("nothing was touched"),
        "{}",
        text(&o)
    );
    let o = clusterctl_in(inv_path, &["--yes", "restore", archive.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--identity"), "{}", text(&o));
    let stranger = lab.dir.join("stranger.key");
    std::fs::write(
        &stranger,
        "AGE-SECRET-KEY-154W9H4MVZPSMCDM50W5M386C998V3W0SXWGN9FVQNFRMJCHFW2JS3838W3\n",
    )
    .unwrap();
    let o = clusterctl_in(
        inv_path,
        &[
            "--yes",
            "restore",
            "--identity",
            stranger.to_str().unwrap(),
            archive.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot decrypt"), "{}", text(&o));
    let o = clusterctl_in(
        inv_path,
        &["restore", "--identity", identity, archive.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--yes"), "{}", text(&o));
    assert_eq!(before, host_stamps(lab), "a refused restore touched a host");

    // restore
    // The archive is unpacked on this machine into a temp dir: watched while restore runs, it
    // is private (0700, files 0600) and gone when restore ends.
    let tmp_root = lab.dir.join("restore-tmp");
    std::fs::create_dir_all(&tmp_root).unwrap();
    let t = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args([
            "-i",
            inv_path.to_str().unwrap(),
            "--yes",
            "-o",
            "json",
            "restore",
            "--identity",
            identity,
            archive.to_str().unwrap(),
        ])
        .env("CI", "true")
        .env("TMPDIR", &tmp_root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let modes = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            use std::os::unix::fs::PermissionsExt as _;
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir(&tmp_root).unwrap().flatten() {
                    let (Ok(m), Ok(key)) =
                        (e.metadata(), std::fs::metadata(e.path().join("pki/ca.key")))
                    else {
                        continue;
                    };
                    seen.insert((
                        e.file_name().to_string_lossy().into_owned(),
                        m.permissions().mode() & 0o7777,
                        key.permissions().mode() & 0o7777,
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let out = child.wait_with_output().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, watcher.join().unwrap())
    });
    let (out, modes) = modes;
    let restore_secs = t.elapsed().as_secs_f64();
    eprintln!("restore's temp dirs seen: {modes:?}");
    assert!(!modes.is_empty(), "restore's temp dir was never seen");
    for (name, dir, key) in &modes {
        assert!(name.starts_with("clusterctl-restore-"), "{name}");
        assert_eq!((*dir, *key), (0o700, 0o600), "{name}");
    }
    let left: Vec<_> = std::fs::read_dir(&tmp_root).unwrap().flatten().collect();
    assert!(left.is_empty(), "left behind by restore: {left:?}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "restore: {}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("TIMING restore: {restore_secs:.1}s; steps:");
    for s in r["steps"].as_array().unwrap() {
        eprintln!(
            "  {:<44} {:>6.1}s",
            s[0].as_str().unwrap(),
            s[1].as_f64().unwrap()
        );
    }
    assert!(
        r["token"]
            .as_str()
            .unwrap()
            .starts_with(&format!("etcd-{cluster}-restore-"))
    );

    // Back: the namespace and its ConfigMap.
    let cm = kubectl_json(admin, &["-n", "keep-me", "get", "configmap", "precious"]);
    assert_eq!(cm["data"]["answer"], "42");
    // Every member healthy, one cluster of three, the old data kept on every host.
    for h in ETCD_HOSTS {
        let host = inv.host(h).unwrap();
        lab.exec_ok(h, clusterctl::phases::etcd::health_command(host).as_str());
        let old = lab.exec_ok(h, "ls -d /var/lib/etcd.before-restore-*/member/snap");
        assert_eq!(old.lines().count(), 1, "{h}: {old}");
        let mode = lab.exec_ok(h, "stat -c %a /var/lib/etcd");
        assert_eq!(mode, "700", "{h}");
        // The snapshot copies are gone.
        lab.exec_ok(h, "[ -z \"$(ls -A /var/lib/clusterctl/restore)\" ]");
    }
    let members = lab.exec_ok(
        "h2",
        &clusterctl::phases::etcd::etcdctl(inv.host("h2").unwrap())
            .args(["member", "list"])
            .to_string(),
    );
    assert_eq!(members.lines().count(), 3, "{members}");
    // Nodes Ready again, workloads can be created.
    let ready = eventually(Duration::from_secs(120), || {
        let r = ready_nodes(admin);
        (r.len() == inv.spec.hosts.len()).then_some(r)
    });
    assert!(
        ready.is_some(),
        "nodes not all Ready after restore: {}",
        kubectl_ok(admin, &["get", "nodes"])
    );
    kubectl_ok(
        admin,
        &["-n", "keep-me", "create", "configmap", "after-restore"],
    );
    (backup_secs, restore_secs)
}
