//! `clusterctl inventory validate` against every fixture: each broken inventory declares, in
//! `# expect: LINE:COL message` comments at its end, the diagnostics it must produce.

mod common;

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clusterctl"))
}

/// A HOME with the key file the examples name (~/.ssh/id_ed25519), so they validate anywhere.
fn fake_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(
        home.path().join(".ssh/id_ed25519"),
        "not read by validate\n",
    )
    .unwrap();
    home
}

fn validate(file: &Path, home: &Path) -> (i32, String, String) {
    let out = bin()
        .arg("-i")
        .arg(file)
        .args(["inventory", "validate"])
        .env("HOME", home)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_broken_inventory_gets_its_precise_errors_and_exit_2() {
    let home = fake_home();
    let files = common::yaml_files("tests/fixtures/invalid");
    assert!(
        files.len() >= 20,
        "expected 20+ broken fixtures, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} declares no `# expect:`",
            f.display()
        );
        let (code, _, stderr) = validate(f, home.path());
        if code != 2 {
            failures.push(format!("{}: exit {code}, want 2\n{stderr}", f.display()));
            continue;
        }
        for e in expects {
            // "L:C message" -> the diagnostic line must start with FILE:L:C and contain message.
            let (pos, msg) = match e.split_once(' ') {
                Some((p, m))
                    if p.contains(':') && p.split(':').all(|n| n.parse::<u32>().is_ok()) =>
                {
                    (Some(p), m)
                }
                _ => (None, e),
            };
            let found = stderr.lines().any(|l| {
                let place_ok = pos.is_none_or(|p| l.starts_with(&format!("{}:{p}: ", f.display())));
                place_ok && l.contains(msg)
            });
            if !found {
                failures.push(format!(
                    "{}: no diagnostic `{e}` in:\n{stderr}",
                    f.display()
                ));
            }
        }
        assert!(
            stderr.contains("fix: "),
            "{}: every error says how to fix it:\n{stderr}",
            f.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let home = fake_home();
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/many-problems.yaml");
    let (code, _, stderr) = validate(&f, home.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[test]
fn good_inventories_validate() {
    let home = fake_home();
    let mut files = common::yaml_files("tests/fixtures/valid");
    files.extend(common::yaml_files("examples"));
    for f in files {
        let (code, stdout, stderr) = validate(&f, home.path());
        assert_eq!(code, 0, "{}:\n{stderr}", f.display());
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

#[test]
fn even_etcd_is_a_warning_not_an_error() {
    let home = fake_home();
    let f =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid/even-etcd-warning.yaml");
    let (code, _, stderr) = validate(&f, home.path());
    assert_eq!(code, 0);
    assert!(
        stderr.contains("warning: spec.hosts: 4 etcd members"),
        "{stderr}"
    );
}

#[test]
fn json_output_lists_diagnostics() {
    let home = fake_home();
    let f =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid/duplicate-address.yaml");
    let out = bin()
        .arg("-i")
        .arg(&f)
        .args(["-o", "json", "inventory", "validate"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["line"], 18);
    assert_eq!(d["field"], "spec.hosts[3].address");
    assert_eq!(d["host"], "w1");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = bin()
        .args(["-i", "/nonexistent/inv.yaml", "inventory", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/inv.yaml: error: cannot read the inventory"),
        "{e}"
    );
}
