//! Bundle trust end to end, without hosts: `plan` and `init --dry-run` refuse a bundle whose
//! signature does not verify against `spec.bundle.publicKey`, an unsigned one without
//! `allowUnsigned: true` (and say it in the plan when allowed), and a manifest whose names or
//! versions could reach a shell or escape a path — before any host is contacted (exit 2).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clusterctl"));
    c.env_remove("CI");
    c
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Fx {
    dir: tempfile::TempDir,
}

impl Fx {
    fn new() -> Fx {
        let f = Fx {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(f.p(".ssh")).unwrap();
        std::fs::write(f.p(".ssh/id_ed25519"), "").unwrap();
        f
    }
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    /// A bundle with an etcd binary and a haproxy .deb, unsigned.
    fn bundle(&self) -> PathBuf {
        let etcd = self.p("etcd.bin");
        let deb = self.p("haproxy.deb");
        std::fs::write(&etcd, b"etcd bytes").unwrap();
        std::fs::write(&deb, common::deb_with_xz_data(b"data")).unwrap();
        let tsv = format!(
            "etcd\t3.4.23\tbinary\tetcd\tfile://{}\t/usr/local/bin/etcd\t0755\tcomputed by the test\t-\n\
             haproxy\t2.6.12-1\tdeb\tlb\tfile://{}\t-\t-\tcomputed by the test\t-\n",
            etcd.display(),
            deb.display()
        );
        std::fs::write(self.p("b.tsv"), tsv).unwrap();
        ok(&cc()
            .args([
                "bundle",
                "gen-manifest",
                "--name",
                "b",
                "--version",
                "1",
                "--items",
            ])
            .arg(self.p("b.tsv"))
            .arg("--out")
            .arg(self.p("b.yaml"))
            .output()
            .unwrap());
        let out = self.p("b.tar.zst");
        ok(&cc()
            .args(["bundle", "build", "--manifest"])
            .arg(self.p("b.yaml"))
            .arg("--out")
            .arg(&out)
            .arg("--cache")
            .arg(self.p("cache"))
            .output()
            .unwrap());
        out
    }
    fn keygen(&self, name: &str) {
        ok(&cc()
            .args(["bundle", "keygen", "--out"])
            .arg(self.p(name))
            .output()
            .unwrap());
    }
    fn sign(&self, bundle: &Path, key: &str) {
        ok(&cc()
            .args(["bundle", "sign", "--key"])
            .arg(self.p(key))
            .arg(bundle)
            .output()
            .unwrap());
    }
    /// examples/ha-vip.yaml with `spec.bundle` set to `bundle_yaml`.
    fn inventory(&self, bundle_yaml: &str) -> PathBuf {
        let ex = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha-vip.yaml"),
        )
        .unwrap();
        let p = self.p("inventory.yaml");
        std::fs::write(&p, format!("{}\n  bundle: {bundle_yaml}\n", ex.trim_end())).unwrap();
        p
    }
    fn run(&self, inv: &Path, args: &[&str]) -> Output {
        cc().arg("-i")
            .arg(inv)
            .arg("--state-dir")
            .arg(self.p("state"))
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .unwrap()
    }
}

/// No run was journaled anywhere under `state` (a run that reached a host would have).
fn no_journal(state: &Path) -> bool {
    fn walk(d: &Path) -> bool {
        std::fs::read_dir(d).map_or(true, |rd| {
            rd.flatten().all(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    e.file_name() != "journal.jsonl"
                }
            })
        })
    }
    walk(state)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unsigned_bundles_need_allow_unsigned_and_the_plan_says_so() {
    let f = Fx::new();
    f.bundle();
    // A path alone: an unsigned bundle is refused, with the fix, before any host (exit 2).
    let inv = f.inventory("b.tar.zst");
    // A real `init` too: the example's hosts do not exist, so a run that got past the bundle
    // check would fail on SSH (exit 1), not with exit 2 and an empty state.
    for args in [
        &["plan"][..],
        &["init", "--dry-run"],
        &["join", "--dry-run"],
        &["init"],
    ] {
        let o = f.run(&inv, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("inventory.yaml:") && e.contains("spec.bundle"),
            "{e}"
        );
        assert!(
            e.contains("is unsigned") && e.contains("allowUnsigned: true"),
            "{e}"
        );
        // `init` takes the cluster's local run lock first; no run went further.
        assert!(no_journal(&f.p("state")), "{args:?} ran");
        let _ = std::fs::remove_dir_all(f.p("state"));
    }
    // allowUnsigned: installed, and every plan says it.
    let inv = f.inventory("{path: b.tar.zst, allowUnsigned: true}");
    let out = ok(&f.run(&inv, &["plan", "--only-phase", "prepare"]));
    assert!(
        out.contains(
            "UNSIGNED: installed without a signature because spec.bundle.allowUnsigned is true"
        ),
        "{out}"
    );
    assert!(!f.p("state").exists(), "plan must not write state");
}

#[test]
fn a_named_key_requires_a_signature_that_verifies() {
    let f = Fx::new();
    let b = f.bundle();
    f.keygen("k");
    f.keygen("other");
    let inv = f.inventory("{path: b.tar.zst, publicKey: k.pub}");
    // Unsigned, with a key named: refused even though allowUnsigned is not there to help.
    let o = f.run(&inv, &["plan"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("requires a signature"),
        "{}",
        stderr(&o)
    );
    // Signed by that key: the plan names the key.
    f.sign(&b, "k.key");
    let out = ok(&f.run(&inv, &["plan", "--only-phase", "prepare"]));
    assert!(
        out.contains("signature verified with k.pub (ed25519 "),
        "{out}"
    );
    // Signed by another key: refused.
    let inv_other = f.inventory("{path: b.tar.zst, publicKey: other.pub, allowUnsigned: true}");
    let o = f.run(&inv_other, &["plan"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("signature does not match"),
        "{}",
        stderr(&o)
    );
    // A random 64-byte signature: refused by plan, init --dry-run and bundle verify.
    let random: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    rewrite(&b, |name, data| {
        if name == "manifest.yaml.sig" {
            *data = random.clone();
        }
    });
    for args in [&["plan"][..], &["init", "--dry-run"], &["init"]] {
        let o = f.run(&inv, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("signature does not match"),
            "{}",
            stderr(&o)
        );
        assert!(
            no_journal(&f.p("state")),
            "{args:?} refused after writing state"
        );
    }
    let o = cc()
        .args(["bundle", "verify", "--key"])
        .arg(f.p("k.pub"))
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    // Signed but no key named: refused (nothing to check it with) unless allowed.
    let o = f.run(&f.inventory("b.tar.zst"), &["plan"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("publicKey is not set"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_hostile_manifest_is_refused_at_load_even_under_dry_run() {
    let f = Fx::new();
    let b = f.bundle();
    let marker = f.p("pwned");
    for (from, to, why) in [
        (
            "version: 2.6.12-1",
            format!("version: \"1'; touch {}; '\"", marker.display()),
            "version `1'; touch",
        ),
        (
            "name: etcd",
            "name: ../../etc/cron.d/x".to_string(),
            "name `../../etc/cron.d/x`",
        ),
        (
            "name: haproxy",
            "name: \"$(reboot)\"".to_string(),
            "name `$(reboot)`",
        ),
        (
            "path: /usr/local/bin/etcd",
            "path: /usr/local/bin/../../etc/passwd".to_string(),
            "not normalised",
        ),
    ] {
        let hostile = f.p("hostile.tar.zst");
        std::fs::copy(&b, &hostile).unwrap();
        rewrite(&hostile, |name, data| {
            if name == "manifest.yaml" {
                let text = String::from_utf8(data.clone()).unwrap();
                assert!(text.contains(from), "{from} in {text}");
                *data = text.replacen(from, &to, 1).into_bytes();
            }
        });
        let inv = f.inventory("{path: hostile.tar.zst, allowUnsigned: true}");
        for args in [&["plan"][..], &["init", "--dry-run"]] {
            let o = f.run(&inv, args);
            assert_eq!(o.status.code(), Some(2), "{args:?} {to}: {}", stderr(&o));
            assert!(stderr(&o).contains(why), "{why}: {}", stderr(&o));
        }
        let o = cc()
            .args(["bundle", "verify"])
            .arg(&hostile)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(!marker.exists(), "a manifest value ran a command");
    }
}

#[test]
fn every_item_is_checked_against_its_sha256_as_it_is_read() {
    let f = Fx::new();
    let b = f.bundle();
    let head = clusterctl::bundle::read_head(&b).unwrap();
    rewrite(&b, |name, data| {
        if name.starts_with("blobs/") && data.as_slice() == b"etcd bytes" {
            *data = b"ETCD BYTES".to_vec();
        }
    });
    let etcd = head
        .manifest
        .items
        .iter()
        .find(|i| i.name == "etcd")
        .unwrap();
    let e = format!("{:#}", clusterctl::bundle::read_item(&b, etcd).unwrap_err());
    assert!(
        e.contains("etcd 3.4.23: sha256 mismatch in the bundle"),
        "{e}"
    );
}

/// Rewrites a bundle's entries in place (same order), letting `edit` change any entry's bytes.
fn rewrite(bundle: &Path, mut edit: impl FnMut(&str, &mut Vec<u8>)) {
    let f = std::fs::File::open(bundle).unwrap();
    let mut ar = tar::Archive::new(zstd::Decoder::new(f).unwrap());
    let mut entries = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        edit(&name, &mut data);
        entries.push((name, data));
    }
    let out = std::fs::File::create(bundle).unwrap();
    let mut tw = tar::Builder::new(zstd::Encoder::new(out, 3).unwrap());
    for (name, data) in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tw.append(&h, &data[..]).unwrap();
    }
    tw.into_inner().unwrap().finish().unwrap();
}
