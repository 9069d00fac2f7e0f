//! Lab test of the lab itself (tests/lab/lab.sh): boot 3 nspawn hosts, reach them with plain
//! OpenSSH under strict host key checking, stop and start one, tear down, and check that the
//! lab left no process, mount, netns, veth or bridge behind. Needs root and systemd-nspawn.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LAB: &str = "smoke";

fn lab_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/lab.sh")
}

fn lab_dir() -> PathBuf {
    PathBuf::from("/var/lib/clusterctl-lab").join(LAB)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lab(args: &[&str]) -> Output {
    run(Command::new(lab_sh()).args(args))
}

fn lab_ok(args: &[&str]) -> String {
    let out = lab(args);
    assert!(
        out.status.success(),
        "lab.sh {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// Tears the lab down when the test ends, passed or failed.
struct Teardown;
impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = lab(&["down", LAB]);
    }
}

/// Reads `KEY=value` from the lab's env file (values may be double-quoted).
fn env_value(key: &str) -> String {
    let text = std::fs::read_to_string(lab_dir().join("env")).expect("lab env file");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing from the lab env"))
        .trim_matches('"')
        .to_string()
}

/// OpenSSH with the lab's key and known_hosts, strict checking, no agent, no user config.
fn ssh(user: &str, ip: &str, command: &str) -> Output {
    let dir = lab_dir();
    run(Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(dir.join("id_ed25519"))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{user}@{ip}"))
        .arg(command))
}

fn ssh_ok(user: &str, ip: &str, command: &str) -> String {
    let out = ssh(user, ip, command);
    assert!(
        out.status.success(),
        "ssh {user}@{ip} {command:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).trim().to_string()
}

fn lines_matching(cmd: &mut Command, needle: &str) -> Vec<String> {
    stdout(&run(cmd))
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn inotify_instances() -> String {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .to_string()
}

fn other_labs() -> Vec<String> {
    std::fs::read_dir("/var/lib/clusterctl-lab")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != LAB)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn lab_up_ssh_stop_start_down_leaves_nothing() {
    let _ = lab(&["down", LAB]); // leftovers of an interrupted run
    let labs_before = other_labs();
    let inotify_before = inotify_instances();
    let guard = Teardown;

    let t0 = Instant::now();
    lab_ok(&["up", LAB, "3"]);
    eprintln!("lab up (3 hosts) in {:?}", t0.elapsed());
    assert!(
        inotify_instances().parse::<u64>().unwrap() >= 8192,
        "inotify instances not raised"
    );

    let hosts = env_value("LAB_HOSTS");
    assert_eq!(hosts, "h1 h2 h3");
    let ips: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| env_value(&format!("LAB_IP_{h}")))
        .collect();
    let subnet = env_value("LAB_SUBNET");
    for (i, ip) in ips.iter().enumerate() {
        assert_eq!(ip, &format!("10.77.{subnet}.{}", 11 + i));
    }

    // The inventory is a valid clusterctl inventory naming those hosts.
    let inv = lab_dir().join("inventory.yaml");
    let out = run(Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .arg("-i")
        .arg(&inv)
        .args(["inventory", "validate"]));
    assert!(
        out.status.success(),
        "inventory invalid: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let inv_text = std::fs::read_to_string(&inv).unwrap();
    for ip in &ips {
        assert!(inv_text.contains(ip.as_str()), "inventory lacks {ip}");
    }

    // Real systemd, real sshd, each host its own identity; strict host keys accepted.
    for (i, ip) in ips.iter().enumerate() {
        let got = ssh_ok(
            "root",
            ip,
            "hostname; systemctl is-system-running --wait; cat /etc/machine-id",
        );
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines[0], format!("h{}", i + 1));
        assert_eq!(lines[1], "running", "systemd state on h{}", i + 1);
        assert_eq!(lines[2].len(), 32);
    }
    // A wrong known_hosts entry must be refused (strict checking really is strict).
    let bad_kh = lab_dir().join("known_hosts.swapped");
    let kh = std::fs::read_to_string(lab_dir().join("known_hosts")).unwrap();
    let keys: Vec<&str> = kh.lines().map(|l| l.split_once(' ').unwrap().1).collect();
    std::fs::write(&bad_kh, format!("{} {}\n", ips[0], keys[1])).unwrap();
    let out = run(Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(lab_dir().join("id_ed25519"))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", bad_kh.display()))
        .arg(format!("root@{}", ips[0]))
        .arg("true"));
    assert!(
        !out.status.success(),
        "ssh accepted a host key that is not h1's"
    );

    // deploy: passwordless sudo; nopw: sudo wants a password.
    assert_eq!(ssh_ok("deploy", &ips[0], "sudo -n id -u"), "0");
    let out = ssh("nopw", &ips[0], "sudo -n true");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password is required"));

    // exec without SSH, exit status passed through.
    assert_eq!(lab_ok(&["exec", LAB, "h3", "--", "hostname"]).trim(), "h3");
    assert_eq!(
        lab(&["exec", LAB, "h3", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );

    // stop-host: h2 is down (no answer), the others are not; start-host: back with its state.
    ssh_ok("root", &ips[1], "echo kept > /root/marker");
    lab_ok(&["stop-host", LAB, "h2"]);
    let out = ssh("root", &ips[1], "true");
    assert!(!out.status.success(), "h2 still answers after stop-host");
    assert_eq!(ssh_ok("root", &ips[0], "hostname"), "h1");
    assert!(lab(&["exec", LAB, "h2", "--", "true"]).status.code() != Some(0));
    let t0 = Instant::now();
    lab_ok(&["start-host", LAB, "h2"]);
    eprintln!("h2 start-host in {:?}", t0.elapsed());
    assert_eq!(ssh_ok("root", &ips[1], "cat /root/marker"), "kept");

    // down: nothing of this lab is left.
    let nspawn_pids = lines_matching(
        Command::new("pgrep").args(["-af", "systemd-nspawn"]),
        &format!("-M {LAB}-h"),
    );
    assert_eq!(
        nspawn_pids.len(),
        3,
        "expected 3 nspawn processes: {nspawn_pids:?}"
    );
    drop(guard);
    let t0 = Instant::now();
    lab_ok(&["down", LAB]); // idempotent
    assert!(t0.elapsed() < Duration::from_secs(10));

    assert!(
        lines_matching(
            Command::new("ip").args(["netns", "list"]),
            &format!("clab-{LAB}-")
        )
        .is_empty()
    );
    assert!(
        lines_matching(
            Command::new("ip").args(["-o", "link", "show", "type", "bridge"]),
            &format!("clbr-{LAB}")
        )
        .is_empty()
    );
    assert!(
        lines_matching(
            Command::new("ip").args(["-o", "link", "show"]),
            &format!("clv{LAB}-")
        )
        .is_empty()
    );
    assert!(
        lines_matching(
            Command::new("findmnt").args(["-rn", "-t", "overlay", "-o", "TARGET"]),
            &lab_dir().display().to_string()
        )
        .is_empty()
    );
    assert!(
        lines_matching(
            Command::new("pgrep").args(["-af", "systemd-nspawn"]),
            &format!("-M {LAB}-h")
        )
        .is_empty()
    );
    for pid in nspawn_pids
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
    {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "nspawn {pid} still alive"
        );
    }
    for root in [
        "/sys/fs/cgroup/unified/clusterctl-lab",
        "/sys/fs/cgroup/systemd/clusterctl-lab",
    ] {
        for h in ["h1", "h2", "h3"] {
            assert!(!Path::new(root).join(format!("{LAB}-{h}")).exists());
        }
    }
    for ip in &ips {
        let out = ssh("root", ip, "true");
        assert!(!out.status.success(), "{ip} still answers after down");
    }
    assert!(!lab_dir().exists());
    if labs_before.is_empty() && other_labs().is_empty() {
        assert_eq!(
            inotify_instances(),
            inotify_before,
            "inotify limit not restored by the last down"
        );
    }
}
