//! Helpers of the chaos lab steps (renew_lab, upgrade_lab): a run killed with SIGKILL at a
//! moment polled on the hosts, and what must hold after its plain re-run (units run the files
//! on disk, no backend out of rotation, the journal shows the resumed work).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// The managed units of every host and the files each loads, from `plan -o json`:
/// (host, unit) → paths. Reloaded services (haproxy, keepalived) are left out: a reload does
/// not change a unit's start time.
pub fn unit_files(inv: &str) -> BTreeMap<(String, String), Vec<String>> {
    let o = clusterctl(&["-i", inv, "-o", "json", "plan"]);
    assert!(o.status.success(), "plan: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut m: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut reloaded = std::collections::BTreeSet::new();
    for p in v["phases"].as_array().unwrap() {
        for hp in p["hosts"].as_array().unwrap() {
            let host = hp["host"].as_str().unwrap().to_string();
            for a in hp["actions"].as_array().unwrap() {
                if a["kind"] == "service" && a["reload"] == true {
                    reloaded.insert(a["unit"].as_str().unwrap().to_string());
                }
                if a["kind"] != "file" {
                    continue;
                }
                for u in a["restarts"].as_array().into_iter().flatten() {
                    m.entry((host.clone(), u.as_str().unwrap().to_string()))
                        .or_default()
                        .push(a["path"].as_str().unwrap().to_string());
                }
            }
        }
    }
    m.retain(|(_, u), _| !reloaded.contains(u));
    m
}

/// Every managed unit that runs started after the newest file it loads was written: none
/// runs with an old file loaded. Returns how many units were checked.
pub fn assert_units_run_their_files(
    lab: &Lab,
    files: &BTreeMap<(String, String), Vec<String>>,
) -> usize {
    let mut checked = 0;
    let hosts: std::collections::BTreeSet<&String> = files.keys().map(|(h, _)| h).collect();
    for h in hosts {
        let mut script = String::new();
        for ((_, u), paths) in files
            .range((h.clone(), String::new())..)
            .take_while(|((x, _), _)| x == h)
        {
            script += &format!(
                "echo \"unit {u} $(systemctl is-active {u}) $(date -d \"$(systemctl show -P ActiveEnterTimestamp {u})\" +%s 2>/dev/null || echo 0) $(stat -c %Y {} 2>/dev/null | sort -n | tail -n1)\"; ",
                paths.join(" ")
            );
        }
        let out = lab.exec_ok(h, &script);
        for l in out.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (unit, active, started, newest) = (f[1], f[2], f.get(3), f.get(4));
            if active != "active" {
                continue;
            }
            let started: i64 = started.and_then(|s| s.parse().ok()).unwrap_or(0);
            let newest: i64 = newest.and_then(|s| s.parse().ok()).unwrap_or(0);
            assert!(
                started >= newest,
                "{h}: {unit} started at {started}, before its newest file ({newest}): it runs with an old file loaded"
            );
            checked += 1;
        }
    }
    for h in ["h1", "h2", "h3"] {
        let a = lab.exec(h, "systemctl is-active kube-apiserver");
        assert_eq!(text(&a).trim(), "active", "{h}");
    }
    checked
}

/// `show servers state kube-apiserver` on each balancer, read with the runtime API directly:
/// (balancer, server, srv_admin_state, srv_check_state).
pub fn backends(lab: &Lab) -> Vec<(String, String, u32, u32)> {
    let mut v = Vec::new();
    for b in ["h1", "h2", "h3"] {
        let o = lab.exec(
            b,
            "perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => \"/run/haproxy-admin.sock\") or die; print $s \"show servers state kube-apiserver\\n\"; print <$s>'",
        );
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 13 && f[1] == "kube-apiserver" {
                v.push((
                    b.to_string(),
                    f[3].to_string(),
                    f[6].parse().unwrap(),
                    f[13].parse().unwrap(),
                ));
            }
        }
    }
    v
}

pub fn assert_nothing_drained(lab: &Lab, inv: &str) {
    let b = backends(lab);
    assert_eq!(b.len(), 9, "3 balancers × 3 backends: {b:?}");
    for (lb, server, admin, check) in &b {
        assert!(
            *admin & 0x08 == 0 && *check & 0x04 != 0,
            "balancer {lb}: backend {server} left out of rotation (admin {admin}, check {check})"
        );
    }
    let o = clusterctl(&["-i", inv, "-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(o.status.success(), "status: {}", text(&o));
    let views = v["balancers"].as_array().unwrap();
    assert_eq!(views.len(), 3, "{v}");
    for view in views {
        assert_eq!(view["servers"].as_array().unwrap().len(), 3, "{view}");
    }
}

/// Journal entries written since line `from` that resumed work on `host`.
pub fn resumed_in_journal(journal: &Path, from: usize, host: &str) -> Vec<String> {
    std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .skip(from)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["host"] == host && e["resumed"].is_array())
        .map(|e| format!("{} {}: {}", e["command"], e["phase"], e["resumed"]))
        .collect()
}

/// Starts `clusterctl ARGS` (its output into `log`), waits until `moment` holds (polled every
/// ~50 ms), then kills the run with SIGKILL. Panics when the run ends first.
pub fn kill_when(args: &[&str], log: &Path, what: &str, moment: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    let out = std::fs::File::create(log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(args)
        .env("CI", "true")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    loop {
        if moment() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            eprintln!(
                "chaos: killed {args:?} {what} after {:.1}s",
                t.elapsed().as_secs_f64()
            );
            return t.elapsed();
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "{args:?} ended ({st}) before {what}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(t.elapsed() < Duration::from_secs(900), "{what} never came");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No host of `hosts` owes anything: its pending record is empty.
pub fn assert_nothing_pending(lab: &Lab, hosts: &[&str]) {
    for h in hosts {
        let left = lab.exec_ok(h, "ls -A /var/lib/clusterctl/pending 2>/dev/null; true");
        assert!(left.trim().is_empty(), "{h}: pending record left: {left}");
    }
}
