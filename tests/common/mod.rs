//! Shared by the tests: bring a lab up and down (tests/lab/lab.sh), read its outputs, run
//! commands inside its hosts, run clusterctl against it; list the repository's YAML files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.yaml` files of a directory of the repository, sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab that is torn down when dropped, even when the test panics.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
}

impl Lab {
    pub fn up(name: &str, n: usize) -> Lab {
        Lab::up_profile(name, n, "plain")
    }

    /// `n` hosts booted with lab.sh's profile (`plain`, or `k8s` for kubelet + containerd).
    pub fn up_profile(name: &str, n: usize, profile: &str) -> Lab {
        let lab = Lab {
            name: name.to_string(),
            dir: PathBuf::from("/var/lib/clusterctl-lab").join(name),
        };
        let _ = lab.sh(&["down", name]); // leftovers of an interrupted run
        let t = Instant::now();
        let out = run(Command::new(root().join("tests/lab/lab.sh"))
            .args(["up", name, &n.to_string()])
            .env("LAB_PROFILE", profile));
        assert!(out.status.success(), "lab up {name} {n}: {}", text(&out));
        eprintln!(
            "lab {name}: {n} hosts up in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        lab
    }

    pub fn sh(&self, args: &[&str]) -> Output {
        run(Command::new(root().join("tests/lab/lab.sh")).args(args))
    }

    /// `KEY=value` from the lab's env file.
    pub fn env(&self, key: &str) -> String {
        let t = std::fs::read_to_string(self.dir.join("env")).expect("lab env file");
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing from the lab env"))
            .trim_matches('"')
            .to_string()
    }

    pub fn ip(&self, host: &str) -> String {
        self.env(&format!("LAB_IP_{host}"))
    }

    /// 10.77.K.<last>
    pub fn addr(&self, last: u8) -> String {
        format!("10.77.{}.{last}", self.env("LAB_SUBNET"))
    }

    /// Runs a shell command inside a host (no SSH); returns the output.
    pub fn exec(&self, host: &str, cmd: &str) -> Output {
        self.sh(&["exec", &self.name, host, "--", "bash", "-c", cmd])
    }

    pub fn exec_ok(&self, host: &str, cmd: &str) -> String {
        let o = self.exec(host, cmd);
        assert!(o.status.success(), "{host}: {cmd}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn stop_host(&self, host: &str) {
        let o = self.sh(&["stop-host", &self.name, host]);
        assert!(o.status.success(), "stop-host {host}: {}", text(&o));
    }

    pub fn start_host(&self, host: &str) {
        let o = self.sh(&["start-host", &self.name, host]);
        assert!(o.status.success(), "start-host {host}: {}", text(&o));
    }

    /// The lab's inventory, parsed, for a test to adjust and write back with `write_inventory`.
    pub fn inventory(&self) -> clusterctl::inventory::Inventory {
        clusterctl::inventory::load(&self.dir.join("inventory.yaml"))
            .expect("lab inventory")
            .inventory
    }

    /// Writes an inventory next to the lab's and returns its path.
    pub fn write_inventory(&self, name: &str, inv: &clusterctl::inventory::Inventory) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_saphyr::to_string(inv).unwrap()).unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("LAB_KEEP_AFTER_TEST").is_some() {
            eprintln!("LAB_KEEP_AFTER_TEST: leaving lab {} up", self.name);
            return;
        }
        let o = self.sh(&["down", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {}: {}", self.name, text(&o));
        }
    }
}

/// The lab bundle (built from Debian's packages by tests/lab/build-bundle.sh, cached).
pub fn lab_bundle() -> PathBuf {
    // Use the clusterctl under test rather than a separate release build.
    let out = run(Command::new("bash")
        .arg(root().join("tests/lab/build-bundle.sh"))
        .env("CLUSTERCTL", env!("CARGO_BIN_EXE_clusterctl")));
    assert!(out.status.success(), "build-bundle.sh: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build-bundle.sh prints the bundle path")
            .trim(),
    );
    assert!(p.is_file(), "{} does not exist", p.display());
    p
}

pub fn clusterctl(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(args)
        .env("CI", "true"))
}

/// Polls `f` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=5s")
        .args(args))
}
