//! `clusterctl certs generate` and `certs check-expiration` through the binary.

use std::path::Path;

use assert_cmd::Command;

fn setup(validity: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha-vip.yaml"))
            .unwrap();
    // The example names ~/.ssh/id_ed25519; validation wants a key file that exists.
    std::fs::write(dir.path().join("id_test"), "not read by the PKI\n").unwrap();
    std::fs::write(
        dir.path().join("inventory.yaml"),
        text.replace("certValidity: 50y", &format!("certValidity: {validity}"))
            .replace("~/.ssh/id_ed25519", "id_test"),
    )
    .unwrap();
    dir
}

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("clusterctl").unwrap();
    c.current_dir(dir)
        .env_remove("CLUSTERCTL_STATE_DIR")
        .arg("-i")
        .arg("inventory.yaml")
        .args(args);
    c
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = cmd(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generate_then_check_expiration_table_and_json() {
    let dir = setup("50y");
    let out = cmd(dir.path(), &["certs", "generate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("39 created, 0 re-issued"), "{text}");
    assert!(dir.path().join("clusters/prod/pki/ca.crt").is_file());

    let again = json(dir.path(), &["certs", "generate", "-o", "json"]);
    let items = again["items"].as_array().unwrap();
    assert_eq!(items.len(), 39);
    assert!(items.iter().all(|i| i["action"] == "kept"), "{again}");

    let out = cmd(dir.path(), &["certs", "check-expiration", "--local-only"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    // kubeadm's layout: the leaves, a blank line, the CAs.
    for col in [
        "CERTIFICATE",
        "EXPIRES",
        "RESIDUAL TIME",
        "CERTIFICATE AUTHORITY",
        "EXTERNALLY MANAGED",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    // 23 leaf certificate files (an apiserver certificate per control-plane host) + 17
    // kubeconfigs; then the 3 CAs in their own table.
    assert_eq!(lines.len(), 1 + 23 + 17 + 1 + 1 + 3, "{table}");
    assert_eq!(lines[41], "");
    assert!(lines[42].starts_with("CERTIFICATE AUTHORITY"), "{table}");
    let cas: Vec<&str> = lines[43..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(cas, ["ca", "etcd-ca", "front-proxy-ca"]);
    // Named as renew-certs names them, with the --component that renews them.
    let api = lines
        .iter()
        .find(|l| l.starts_with("apiserver@cp1 "))
        .unwrap();
    assert!(
        api.contains(" ca ")
            && api.contains(" no ")
            && api.trim_end().ends_with("apiserver")
            && (api.contains("49y 364d") || api.contains("50y 0d")),
        "{api}"
    );
    let etcd = lines
        .iter()
        .find(|l| l.starts_with("etcd-server@cp2 "))
        .unwrap();
    assert!(
        etcd.contains(" etcd-ca ") && etcd.trim_end().ends_with("etcd"),
        "{etcd}"
    );
    let admin = lines.iter().find(|l| l.starts_with("admin.conf ")).unwrap();
    assert!(admin.trim_end().ends_with("admin"), "{admin}");
    assert!(!table.contains("nodes/"), "names, not paths: {table}");
    assert!(!table.contains("expires within"), "{table}");

    let v = json(
        dir.path(),
        &["certs", "check-expiration", "--local-only", "-o", "json"],
    );
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 43);
    assert!(certs.iter().all(|c| c["externallyManaged"] == false));
    assert!(certs.iter().all(|c| c["warning"] == false));
    let ca = certs.iter().find(|c| c["name"] == "ca").unwrap();
    assert_eq!(ca["isCa"], true);
    assert!(ca["notAfter"].as_str().unwrap().starts_with("21"), "{ca}");
}

#[test]
fn short_lived_certs_are_flagged() {
    let dir = setup("30d");
    cmd(dir.path(), &["certs", "generate"]).assert().success();
    let out = cmd(dir.path(), &["certs", "check-expiration", "--local-only"])
        .output()
        .unwrap();
    // Documented: certificates inside --warn-within make the exit code 4, for monitoring.
    assert_eq!(out.status.code(), Some(4));
    let table = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let flagged: Vec<&str> = table
        .lines()
        .filter(|l| l.contains("expires within 180d"))
        .collect();
    assert_eq!(
        flagged.len(),
        40,
        "every leaf and kubeconfig, no CA:\n{table}"
    );
    assert!(
        !flagged
            .iter()
            .any(|l| l.starts_with("ca ") || l.starts_with("etcd-ca "))
    );
    assert!(
        stderr.contains("40 certificate(s) expire within 180d"),
        "{stderr}"
    );

    let out = cmd(
        dir.path(),
        &["certs", "check-expiration", "--local-only", "-o", "json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let certs = v["certificates"].as_array().unwrap();
    let api = certs.iter().find(|c| c["name"] == "apiserver@cp1").unwrap();
    assert_eq!(api["warning"], true);
    let left = api["residualSeconds"].as_i64().unwrap();
    assert!((29 * 86400..=30 * 86400).contains(&left), "{left}");

    // A threshold below the lifetime: nothing flagged.
    let out = cmd(
        dir.path(),
        &[
            "certs",
            "check-expiration",
            "--local-only",
            "--warn-within",
            "7d",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8(out.stdout)
            .unwrap()
            .contains("expires within")
    );
}

#[test]
fn bad_threshold_and_missing_pki_are_clear_errors() {
    let dir = setup("50y");
    cmd(dir.path(), &["certs", "check-expiration", "--local-only"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "run `clusterctl certs generate` first",
        ));
    cmd(
        dir.path(),
        &[
            "certs",
            "check-expiration",
            "--local-only",
            "--warn-within",
            "soon",
        ],
    )
    .assert()
    .code(2)
    .stderr(predicates::str::contains("--warn-within"));
}

/// `renew-certs --ca`: stages out of order and a rotation limited to some hosts are refused
/// before any host is contacted, each with what to run instead; an unknown stage is a usage
/// error.
#[test]
fn ca_rotation_stages_out_of_order_are_refused_with_the_next_step() {
    let dir = setup("50y");
    let out = cmd(dir.path(), &["certs", "generate"]).output().unwrap();
    assert!(out.status.success());
    let err = |args: &[&str]| {
        let o = cmd(dir.path(), args).output().unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (_, e) = err(&["renew-certs", "--ca", "finish"]);
    assert!(e.contains("no CA rotation is under way"), "{e}");
    assert!(e.contains("--ca trust"), "{e}");
    let (code, e) = err(&["renew-certs", "--ca", "trust", "--hosts", "cp1"]);
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("cluster-wide"), "{e}");
    let (code, e) = err(&["renew-certs", "--ca", "later"]);
    assert_eq!(code, Some(2), "{e}");
    let (_, e) = err(&["renew-certs", "--ca", "trust", "--component", "etcd"]);
    assert!(e.contains("cannot be used with"), "{e}");
    // Nothing was written: no rotation recorded.
    assert!(
        !dir.path()
            .join("clusters/prod/pki/ca-rotation.json")
            .exists()
    );
}
