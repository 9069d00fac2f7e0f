//! The `clusterctl bundle` commands end to end on small bundles built from local files:
//! gen-manifest, build, verify (good, tampered blob, tampered manifest), keygen/sign and
//! signature good/bad, diff, ls.

use std::io::Read;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn cc() -> Command {
    let mut c = Command::cargo_bin("clusterctl").unwrap();
    c.env_remove("CI");
    c
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Writes files and a TSV, generates a manifest, builds a bundle from it.
    fn bundle(&self, name: &str, files: &[(&str, &str, &[u8])]) -> PathBuf {
        let mut tsv = String::new();
        for (item, ver, bytes) in files {
            let f = self.p(&format!("{name}-{item}-{ver}"));
            std::fs::write(&f, bytes).unwrap();
            tsv += &format!(
                "{item}\t{ver}\tbinary\tall\tfile://{}\t/usr/local/bin/{item}\t0755\tcomputed by the test\t-\n",
                f.display()
            );
        }
        std::fs::write(self.p(&format!("{name}.tsv")), tsv).unwrap();
        let m = self.p(&format!("{name}.yaml"));
        cc().args([
            "bundle",
            "gen-manifest",
            "--name",
            name,
            "--version",
            "1",
            "--items",
        ])
        .arg(self.p(&format!("{name}.tsv")))
        .arg("--out")
        .arg(&m)
        .assert()
        .success();
        let out = self.p(&format!("{name}.tar.zst"));
        cc().args(["bundle", "build", "--manifest"])
            .arg(&m)
            .arg("--out")
            .arg(&out)
            .arg("--cache")
            .arg(self.p("cache"))
            .assert()
            .success()
            .stdout(predicate::str::contains("3 local"));
        out
    }
}

fn entries(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let dec = zstd::Decoder::new(std::fs::File::open(bundle).unwrap()).unwrap();
    let mut ar = tar::Archive::new(dec);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            (p, v)
        })
        .collect()
}

fn write_entries(bundle: &Path, list: &[(String, Vec<u8>)]) {
    let enc = zstd::Encoder::new(std::fs::File::create(bundle).unwrap(), 3).unwrap();
    let mut tw = tar::Builder::new(enc);
    for (p, v) in list {
        let mut h = tar::Header::new_gnu();
        h.set_size(v.len() as u64);
        h.set_mode(0o644);
        tw.append_data(&mut h, p, &v[..]).unwrap();
    }
    tw.into_inner().unwrap().finish().unwrap();
}

fn abc(f: &Fixture) -> PathBuf {
    f.bundle(
        "a",
        &[
            ("etcd", "3.4.23", b"etcd bytes"),
            ("kubectl", "1.20.2", b"kubectl bytes"),
            ("runc", "1.1.5", b"runc bytes"),
        ],
    )
}

#[test]
fn build_verify_and_layout() {
    let f = Fixture::new();
    let b = abc(&f);
    // Intact but unsigned: said plainly, and exit 3 (not authenticated), not 0.
    cc().args(["bundle", "verify"])
        .arg(&b)
        .assert()
        .code(3)
        .stdout(
            predicate::str::contains("3 items, 3 blobs")
                .and(predicate::str::contains("signature unsigned")),
        )
        .stderr(predicate::str::contains("the bundle is UNSIGNED"));
    let es = entries(&b);
    assert_eq!(es[0].0, "manifest.yaml", "manifest first");
    assert!(es[1..].iter().all(|(p, _)| p.starts_with("blobs/sha256/")));
    // JSON report.
    let out = cc()
        .args(["-o", "json", "bundle", "verify"])
        .arg(&b)
        .assert()
        .code(3)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["items"], 3);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["signature"], "unsigned");
    // --manifest-sha256 pins the manifest itself.
    let sha = v["manifestSha256"].as_str().unwrap().to_string();
    cc().args(["bundle", "verify", "--manifest-sha256", &sha])
        .arg(&b)
        .assert()
        .code(3);
    cc().args(["bundle", "verify", "--manifest-sha256", &"0".repeat(64)])
        .arg(&b)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("manifest sha256 is"));
}

#[test]
fn verify_catches_a_tampered_blob_and_a_missing_one() {
    let f = Fixture::new();
    let b = abc(&f);
    let mut es = entries(&b);
    let victim = es.iter().position(|(_, v)| v == b"kubectl bytes").unwrap();
    es[victim].1 = b"kubectl BYTES".to_vec();
    let bad = f.p("bad.tar.zst");
    write_entries(&bad, &es);
    cc().args(["bundle", "verify"])
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "kubectl 1.20.2: sha256 mismatch: expected",
        ));
    es.remove(victim);
    write_entries(&bad, &es);
    cc().args(["bundle", "verify"])
        .arg(&bad)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("kubectl 1.20.2: blob")
                .and(predicate::str::contains("is missing")),
        );
}

#[test]
fn signatures_good_bad_and_tampered_manifest() {
    let f = Fixture::new();
    let b = abc(&f);
    cc().args(["bundle", "keygen", "--out"])
        .arg(f.p("k"))
        .assert()
        .success();
    cc().args(["bundle", "keygen", "--out"])
        .arg(f.p("other"))
        .assert()
        .success();
    cc().args(["bundle", "keygen", "--out"])
        .arg(f.p("k"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("not overwriting"));
    // A key given but no signature in the bundle: fails.
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&b)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unsigned (no manifest.yaml.sig)"));
    cc().args(["bundle", "sign", "--key"])
        .arg(f.p("k.key"))
        .arg(&b)
        .assert()
        .success();
    assert_eq!(entries(&b)[1].0, "manifest.yaml.sig");
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&b)
        .assert()
        .success()
        .stdout(predicate::str::contains("signature verified"));
    // Signed, but no key to check it with: not authenticated (exit 3), never "ok".
    cc().args(["bundle", "verify"])
        .arg(&b)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("signature not-checked"))
        .stderr(predicate::str::contains("NOT checked"));
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("other.pub"))
        .arg(&b)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("signature does not match"));
    // A random 64-byte signature in place of the real one: fails.
    let mut es = entries(&b);
    assert_eq!(es[1].0, "manifest.yaml.sig");
    es[1].1 = (0..64).map(|_| rand::random::<u8>()).collect();
    let r = f.p("random-sig.tar.zst");
    write_entries(&r, &es);
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&r)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("signature bad"))
        .stderr(predicate::str::contains("signature does not match"));
    // Change the manifest (point an item at another URL) and keep the old signature: caught.
    let mut es = entries(&b);
    let text = String::from_utf8(es[0].1.clone())
        .unwrap()
        .replacen("file://", "file:///evil", 1);
    es[0].1 = text.into_bytes();
    let t = f.p("tampered.tar.zst");
    write_entries(&t, &es);
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&t)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("signature does not match"));
    // build --key signs at build time.
    let m = f.p("a.yaml");
    let out = f.p("signed.tar.zst");
    cc().args(["bundle", "build", "--manifest"])
        .arg(&m)
        .arg("--out")
        .arg(&out)
        .arg("--cache")
        .arg(f.p("cache"))
        .arg("--key")
        .arg(f.p("k.key"))
        .assert()
        .success();
    cc().args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("signature verified"));
}

#[test]
fn diff_and_ls() {
    let f = Fixture::new();
    let a = abc(&f);
    let b = f.bundle(
        "b",
        &[
            ("etcd", "3.5.16", b"etcd 3.5 bytes"),
            ("kubectl", "1.20.2", b"kubectl bytes"),
            ("haproxy", "2.6.12", b"haproxy bytes"),
        ],
    );
    let out = cc()
        .args(["bundle", "diff"])
        .arg(&a)
        .arg(&b)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("~ bundle name: a -> b"), "{out}");
    assert!(
        out.contains("~ etcd 3.4.23 -> 3.5.16\n    version: 3.4.23 -> 3.5.16\n    sha256: "),
        "{out}"
    );
    assert!(out.contains("+ haproxy 2.6.12"), "{out}");
    assert!(out.contains("- runc 1.1.5"), "{out}");
    // Same bytes, only the local file name differs: the url change is listed, no hash change.
    let kubectl: Vec<&str> = out
        .split("\n~ ")
        .filter(|b| b.starts_with("kubectl"))
        .collect();
    assert_eq!(kubectl.len(), 1, "{out}");
    assert!(
        kubectl[0].contains("url: file://") && !kubectl[0].contains("sha256"),
        "{out}"
    );
    cc().args(["bundle", "diff"])
        .arg(&a)
        .arg(&a)
        .assert()
        .success()
        .stdout("no differences\n");
    // A manifest file works on either side.
    cc().args(["bundle", "diff"])
        .arg(f.p("a.yaml"))
        .arg(&a)
        .assert()
        .success()
        .stdout(predicate::str::contains("etcd").not());
    cc().args(["bundle", "ls"])
        .arg(&b)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("b 1 (3 items)")
                .and(predicate::str::contains("haproxy"))
                .and(predicate::str::contains("/usr/local/bin/etcd")),
        );
    let j = cc()
        .args(["-o", "json", "bundle", "ls"])
        .arg(&b)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    cc().args(["bundle", "ls"])
        .arg(f.p("nope.tar.zst"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot open"));
}

#[test]
fn stream_selected_items_out_of_a_bundle() {
    let f = Fixture::new();
    let b = abc(&f);
    let head = clusterctl::bundle::read_head(&b).unwrap();
    let want: Vec<&clusterctl::bundle::Item> = head
        .manifest
        .items
        .iter()
        .filter(|i| i.name != "kubectl")
        .collect();
    let mut got = Vec::new();
    clusterctl::bundle::stream_items(&b, &want, |it, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        got.push((it.name.clone(), v));
        Ok(())
    })
    .unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            ("etcd".to_string(), b"etcd bytes".to_vec()),
            ("runc".to_string(), b"runc bytes".to_vec())
        ]
    );
}
