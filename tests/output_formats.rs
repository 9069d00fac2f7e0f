//! `-o json` and `-o yaml` of every command that reads: stdout is exactly one document that a
//! JSON / YAML parser reads, and a failure is one object naming the error, host, phase and fix.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(root().join("examples/ha-vip.yaml")).unwrap();
        std::fs::write(dir.path().join("id_test"), "not read\n").unwrap();
        std::fs::write(
            dir.path().join("inventory.yaml"),
            text.replace("~/.ssh/id_ed25519", "id_test"),
        )
        .unwrap();
        let s = Setup { dir };
        // A local PKI for check-expiration, and two manifests for bundle ls/diff.
        let o = s.run(&["certs", "generate"], "text");
        assert_eq!(o.0, Some(0), "{}", o.2);
        for (name, version) in [("a.yaml", "3.4.23"), ("b.yaml", "3.5.16")] {
            let item = s.path().join(format!("etcd-{version}"));
            std::fs::write(&item, version).unwrap();
            let tsv = s.path().join(format!("{name}.tsv"));
            std::fs::write(
                &tsv,
                format!(
                    "etcd\t{version}\tbinary\tall\tfile://{}\t/usr/local/bin/etcd\t0755\tcomputed\t-\n",
                    item.display()
                ),
            )
            .unwrap();
            let o = s.run(
                &[
                    "bundle",
                    "gen-manifest",
                    "--name",
                    "b",
                    "--version",
                    "1",
                    "--items",
                    tsv.to_str().unwrap(),
                    "--out",
                    s.path().join(name).to_str().unwrap(),
                ],
                "text",
            );
            assert_eq!(o.0, Some(0), "{}", o.2);
        }
        s
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (exit code, stdout, stderr)
    fn run(&self, args: &[&str], format: &str) -> (Option<i32>, String, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .current_dir(self.path())
            .env_remove("CLUSTERCTL_STATE_DIR")
            .env_remove("CLUSTERCTL_INVENTORY")
            .env("HOME", self.path())
            .args(["-i", "inventory.yaml", "-o", format])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

fn parse(format: &str, text: &str) -> serde_json::Value {
    match format {
        "json" => serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{text}")),
        _ => serde_saphyr::from_str(text)
            .unwrap_or_else(|e| panic!("not one YAML document ({e}):\n{text}")),
    }
}

#[test]
fn every_read_command_prints_one_parsable_document_in_json_and_yaml() {
    let s = Setup::new();
    let (a, b) = (s.path().join("a.yaml"), s.path().join("b.yaml"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    // Commands that succeed without hosts, with a key their document must have.
    let ok: Vec<(Vec<&str>, &str)> = vec![
        (vec!["plan"], "phases"),
        (vec!["plan", "--command", "reset"], "phases"),
        (vec!["inventory", "validate"], "valid"),
        (
            vec!["certs", "check-expiration", "--local-only"],
            "certificates",
        ),
        (vec!["bundle", "ls", a], "items"),
        (vec!["bundle", "diff", a, b], "change"),
        (vec!["version"], "kubernetesMinors"),
    ];
    for format in ["json", "yaml"] {
        for (args, key) in &ok {
            let (code, out, err) = s.run(args, format);
            assert_eq!(code, Some(0), "{args:?} -o {format}: {err}\n{out}");
            let v = parse(format, &out);
            // An object with the key, or a list whose items have it (bundle diff).
            let has = v.get(key).is_some() || v.get(0).and_then(|i| i.get(key)).is_some();
            assert!(has, "{args:?} -o {format}: no `{key}` in\n{out}");
        }
        // Commands that read hosts or the cluster fail here (nothing listens at the example's
        // addresses, no cluster was created): one failure object, with the reason and a fix.
        // `status` reads what it can and reports an unhealthy cluster in its own document.
        let (code, out, err) = s.run(&["status"], format);
        assert_eq!(code, Some(1), "{out}\n{err}");
        let v = parse(format, &out);
        assert_eq!(v["healthy"], false, "{out}");
        assert!(!v["problems"].as_array().unwrap().is_empty(), "{out}");
        for args in [vec!["upgrade", "plan"], vec!["certs", "check-expiration"]] {
            let (code, out, err) = s.run(&args, format);
            assert_ne!(code, Some(0), "{args:?}: {out}");
            let v = parse(format, &out);
            for key in ["error", "host", "phase", "fix", "exitCode"] {
                assert!(
                    v.get(key).is_some(),
                    "{args:?} -o {format}: no `{key}` in\n{out}\n{err}"
                );
            }
            assert_eq!(v["exitCode"].as_i64(), code.map(i64::from), "{out}");
            assert!(!v["error"].as_str().unwrap().is_empty(), "{out}");
        }
        // Bad input: the failure object carries every diagnostic with its place.
        std::fs::write(s.path().join("bad.yaml"), "apiVersion: nope\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .current_dir(s.path())
            .args(["-i", "bad.yaml", "-o", format, "plan"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let v = parse(format, &String::from_utf8(o.stdout).unwrap());
        assert_eq!(v["exitCode"], 2, "{v}");
        assert!(!v["diagnostics"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["diagnostics"][0].get("line").is_some(), "{v}");
    }
}
