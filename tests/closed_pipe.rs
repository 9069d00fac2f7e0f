//! A reader that stops early (`clusterctl plan --show-files | head -1`) must not make clusterctl
//! panic (std's `println!` does, exit 101, on a closed pipe). Each command's stdout is a pipe
//! whose read end is closed before the command writes anything, so every write fails with EPIPE.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs clusterctl with stdout closed on the reader's side; returns (exit code, stderr).
fn with_closed_stdout(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(args)
        .env("HOME", home)
        .env_remove("CI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_command_panics_when_its_reader_stops() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/id_ed25519"), "").unwrap();
    let state = home.path().join("state");
    let state = state.to_str().unwrap();
    let inv = root().join("examples/ha-vip.yaml");
    let inv = inv.to_str().unwrap();
    // A small bundle for `bundle ls`.
    let item = home.path().join("etcd-bin");
    std::fs::write(&item, b"etcd bytes").unwrap();
    let tsv = home.path().join("items.tsv");
    std::fs::write(
        &tsv,
        format!(
            "etcd\t3.4.23\tbinary\tall\tfile://{}\t/usr/local/bin/etcd\t0755\tcomputed by the test\t-\n",
            item.display()
        ),
    )
    .unwrap();
    let manifest = home.path().join("m.yaml");
    let bundle = home.path().join("b.tar.zst");
    for args in [
        vec![
            "bundle",
            "gen-manifest",
            "--name",
            "b",
            "--version",
            "1",
            "--items",
        ],
        vec!["bundle", "build", "--manifest"],
    ] {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if a[1] == "gen-manifest" {
            a.extend([
                tsv.display().to_string(),
                "--out".into(),
                manifest.display().to_string(),
            ]);
        } else {
            a.extend([
                manifest.display().to_string(),
                "--out".into(),
                bundle.display().to_string(),
                "--cache".into(),
                home.path().join("cache").display().to_string(),
            ]);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .args(&a)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let bundle = bundle.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["-i", inv, "--state-dir", state, "plan", "--show-files"],
        vec!["-i", inv, "--state-dir", state, "-o", "json", "plan"],
        vec!["-i", inv, "inventory", "validate"],
        vec!["-i", inv, "-o", "json", "inventory", "validate"],
        vec!["completion", "bash"],
        vec!["completion", "zsh"],
        vec!["completion", "fish"],
        vec!["version"],
        vec!["bundle", "ls", bundle],
        vec!["-o", "json", "bundle", "ls", bundle],
        vec!["-o", "yaml", "bundle", "ls", bundle],
        vec!["-i", inv, "--state-dir", state, "-o", "yaml", "plan"],
        vec!["-i", inv, "-o", "yaml", "inventory", "validate"],
        vec!["man"],
        vec!["--help"],
        vec!["plan", "--help"],
    ];
    for args in commands {
        let (code, stderr) = with_closed_stdout(home.path(), &args);
        assert!(
            !stderr.contains("panicked") && code != Some(101),
            "clusterctl {args:?} with its reader gone: exit {code:?}\n{stderr}"
        );
        assert_eq!(code, Some(0), "clusterctl {args:?}: {stderr}");
    }
}

/// The same through a real shell pipe, as a user types it: `clusterctl ARGS | head -1` for every
/// command and subcommand clap knows (`--help` of each, so none needs a cluster), and the read
/// commands that print long output.
#[test]
fn head_1_after_every_command_exits_cleanly() {
    let bin = env!("CARGO_BIN_EXE_clusterctl");
    let home = tempfile::tempdir().unwrap();
    let inv = root().join("examples/ha-vip.yaml");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    // Every subcommand listed under "Commands:", and their own subcommands.
    let mut commands: Vec<Vec<String>> = Vec::new();
    for name in subcommands(&text) {
        commands.push(vec![name.clone()]);
        let sub = Command::new(bin).args([&name, "--help"]).output().unwrap();
        for inner in subcommands(&String::from_utf8(sub.stdout).unwrap()) {
            commands.push(vec![name.clone(), inner]);
        }
    }
    assert!(commands.len() > 20, "{commands:?}");
    let mut lines = Vec::new();
    for c in &commands {
        lines.push(format!("{} --help", c.join(" ")));
    }
    for extra in [
        "completion bash",
        "completion zsh",
        "completion fish",
        "man",
        "version",
        "kubeconfig --help",
    ] {
        lines.push(extra.to_string());
    }
    for line in lines {
        let script = format!(
            "set -o pipefail; \"$0\" -i {} --state-dir {}/state {line} 2>{}/err | head -1 >/dev/null",
            inv.display(),
            home.path().display(),
            home.path().display()
        );
        let st = Command::new("bash")
            .args(["-c", &script, bin])
            .env("HOME", home.path())
            .status()
            .unwrap();
        let err = std::fs::read_to_string(home.path().join("err")).unwrap_or_default();
        assert!(
            !err.contains("panicked"),
            "clusterctl {line} | head -1 panicked:\n{err}"
        );
        assert!(st.success(), "clusterctl {line} | head -1: {st}\n{err}");
    }
}

/// The command names of a clap `--help` page.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Wrapped descriptions are indented further than the names.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(String::from)
        .collect()
}
