//! `clusterctl plan`: the ordered per-host plan of `init`, as text and JSON, touching nothing.

use std::path::Path;
use std::process::{Command, Output};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn plan(inv: &Path, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/id_ed25519"), "").unwrap();
    let state = home.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .arg("-i")
        .arg(inv)
        .arg("--state-dir")
        .arg(&state)
        .args(extra)
        .env("HOME", home.path())
        .output()
        .unwrap();
    (out, home)
}

fn json(inv: &Path) -> serde_json::Value {
    let (out, home) = plan(inv, &["-o", "json", "plan"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !home.path().join("state").exists(),
        "plan must not write state"
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hosts_of(v: &serde_json::Value, phase: &str) -> Vec<String> {
    let p = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == phase)
        .unwrap();
    p["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_string())
        .collect()
}

/// `plan -o json --command <command> [extra]` on the ha-vip example.
fn command_json(command: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["-o", "json", "plan", "--command", command];
    args.extend(extra);
    let (out, _home) = plan(&example("ha-vip.yaml"), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn phase<'v>(v: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
    v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap()
}

#[test]
fn vip_plan_orders_phases_and_places_work_on_the_right_hosts() {
    let v = json(&example("ha-vip.yaml"));
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "preflight",
            "prepare",
            "pki",
            "etcd",
            "load-balancer",
            "control-plane",
            "kubeconfig",
            "runtime",
            "network",
            "kubelet",
            "kube-proxy",
            "addons",
            "verify"
        ]
    );
    assert_eq!(hosts_of(&v, "preflight"), ["cp1", "cp2", "cp3", "w1", "w2"]);
    // Every control-plane host and worker is a node; add-ons touch no host.
    for p in ["runtime", "network", "kubelet", "kube-proxy"] {
        assert_eq!(hosts_of(&v, p), ["cp1", "cp2", "cp3", "w1", "w2"], "{p}");
    }
    assert!(hosts_of(&v, "addons").is_empty());
    assert_eq!(hosts_of(&v, "etcd"), ["cp1", "cp2", "cp3"]);
    assert_eq!(
        hosts_of(&v, "load-balancer"),
        ["cp1", "cp2", "cp3"],
        "no lb hosts: the control plane holds the VIP"
    );
    assert_eq!(hosts_of(&v, "control-plane"), ["cp1", "cp2", "cp3"]);
    // Files carry their target path, mode, origin and hash.
    let actions = v["phases"][3]["hosts"][0]["actions"].as_array().unwrap();
    // First the guard against an etcd of the other control-plane mode.
    assert_eq!(actions[0]["kind"], "check");
    let etcd = actions
        .iter()
        .find(|a| a["path"] == "/etc/systemd/system/etcd.service")
        .unwrap();
    assert_eq!(etcd["kind"], "file");
    assert_eq!(etcd["path"], "/etc/systemd/system/etcd.service");
    assert_eq!(etcd["mode"], "0644");
    assert_eq!(etcd["source"]["template"], "etcd/etcd.service");
    assert_eq!(etcd["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(etcd["restarts"][0], "etcd.service");
    let kubeconfig = &v["phases"][6];
    assert!(
        kubeconfig["local"][0]
            .as_str()
            .unwrap()
            .contains("https://192.168.56.10:8443"),
        "{kubeconfig}"
    );
}

#[test]
fn pki_rolls_and_workers_get_no_ca_key() {
    let v = json(&example("ha-vip.yaml"));
    let pki = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "pki")
        .unwrap();
    assert_eq!(
        pki["order"], "rolling",
        "fresh hosts together, running ones one at a time"
    );
    let files = |host: &str| -> Vec<String> {
        let h = pki["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap();
        h["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["path"].as_str().unwrap().to_string())
            .collect()
    };
    let cp = files("cp1");
    assert!(
        cp.contains(&"/etc/kubernetes/pki/ca.key".to_string()),
        "{cp:?}"
    );
    assert!(
        cp.contains(&"/etc/kubernetes/pki/etcd/server.crt".to_string()),
        "{cp:?}"
    );
    let w = files("w1");
    assert!(
        w.iter()
            .all(|f| !f.ends_with(".key") || f.contains("kubelet")),
        "a worker got a CA or service key: {w:?}"
    );
    assert!(
        w.contains(&"/etc/kubernetes/pki/ca.crt".to_string()),
        "{w:?}"
    );
}

#[test]
fn keepalived_priorities_make_the_first_lb_host_master_and_nobody_preempts() {
    let (out, _h) = plan(
        &example("ha-vip.yaml"),
        &["plan", "--only-phase", "load-balancer", "--show-files"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sections: Vec<&str> = text.split("\n  cp").collect();
    assert!(
        sections[1].contains("state BACKUP")
            && sections[1].contains("nopreempt")
            && sections[1].contains("priority 150"),
        "{text}"
    );
    assert!(
        sections[2].contains("state BACKUP")
            && sections[2].contains("nopreempt")
            && sections[2].contains("priority 99"),
        "{text}"
    );
    assert!(text.contains("192.168.56.10/24 dev eth1"));
    // A dead haproxy must still give the VIP up: the check has no weight (FAULT on failure).
    let weighted = text
        .lines()
        .filter_map(|l| l.split_once('|'))
        .any(|(_, line)| line.trim_start().starts_with("weight"));
    assert!(!weighted, "{text}");
}

#[test]
fn local_proxy_puts_haproxy_on_every_node_and_moves_the_apiserver_off_loopback() {
    let v = json(&example("local-proxy.yaml"));
    assert_eq!(
        hosts_of(&v, "load-balancer"),
        ["cp1", "cp2", "cp3", "w1", "w2"]
    );
    let (out, _h) = plan(
        &example("local-proxy.yaml"),
        &[
            "plan",
            "--only-phase",
            "load-balancer,control-plane",
            "--hosts",
            "cp1",
            "--show-files",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bind 127.0.0.1:6443"), "{text}");
    assert!(text.contains("--bind-address=192.168.56.11"), "{text}");
    assert!(!text.contains("keepalived.conf"), "{text}");
}

#[test]
fn text_plan_lists_hosts_in_order_with_files_and_services() {
    let (out, _h) = plan(&example("ha-vip.yaml"), &["plan"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let etcd = text.find("phase 4/13 etcd").unwrap();
    let cp = text.find("phase 6/13 control-plane").unwrap();
    assert!(etcd < cp);
    assert!(text.contains("file     /etc/systemd/system/kube-apiserver.service 0644 (template kube-apiserver/kube-apiserver.service"));
    assert!(text.contains("service  kube-scheduler.service enabled + running"));
}

#[test]
fn unknown_phase_or_host_is_bad_input() {
    let (out, _h) = plan(&example("ha-vip.yaml"), &["plan", "--skip-phases", "etdc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("phase `etdc` is not in playbooks/init.yaml")
    );
    let (out, _h) = plan(&example("ha-vip.yaml"), &["plan", "--hosts", "cp9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`cp9` is not a host"));
}

#[test]
fn a_cluster_playbook_override_reorders_phases_and_is_checked() {
    let (_, home) = plan(&example("ha-vip.yaml"), &["plan"]);
    let dir = home.path().join("state/clusters/prod/playbooks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("init.yaml"),
        "command: init\nphases:\n  - preflight\n  - etcd\n",
    )
    .unwrap();
    let run = |home: &Path| {
        Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .arg("-i")
            .arg(example("ha-vip.yaml"))
            .arg("--state-dir")
            .arg(home.join("state"))
            .args(["-o", "json", "plan"])
            .env("HOME", home)
            .output()
            .unwrap()
    };
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(home.path().join(".ssh/id_ed25519"), "").unwrap();
    let out = run(home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phases"].as_array().unwrap().len(), 2);
    std::fs::write(
        dir.join("init.yaml"),
        "command: init\nphases:\n  - preflight\n  - etdc\n",
    )
    .unwrap();
    let out = run(home.path());
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("init.yaml:4:5: error: phases[1]: unknown phase `etdc`"),
        "{e}"
    );
}

/// `reset` deletes data: without --yes and without a terminal to ask on, it refuses before
/// contacting a host; hosts that are not in the inventory are bad input.
#[test]
fn reset_without_yes_or_a_terminal_refuses_and_touches_nothing() {
    let (out, _home) = plan(&example("ha-vip.yaml"), &["reset", "--hosts", "w1"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("pass --yes") && e.contains("Nothing was done"),
        "{e}"
    );
    let (out, _home) = plan(
        &example("ha-vip.yaml"),
        &["reset", "--hosts", "w9", "--yes"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("`w9` is not a host of"), "{e}");
    let (out, _home) = plan(
        &example("ha-vip.yaml"),
        &["reset", "--hosts", "cp1,cp2,cp3", "--yes"],
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("every control-plane host"), "{e}");
}

#[test]
fn status_before_init_says_what_to_do_and_touches_nothing() {
    let (out, home) = plan(&example("ha-vip.yaml"), &["status"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("run `clusterctl init` first"), "{e}");
    assert!(
        !home.path().join("state").join("clusters").exists()
            || std::fs::read_dir(home.path().join("state/clusters"))
                .unwrap()
                .all(|d| !d.unwrap().path().join("kubeconfig/admin.conf").exists()),
        "status created credentials"
    );
}

/// `join` decides from the journal which hosts are already part of the cluster, and refuses
/// what it cannot do before any host is contacted.
#[test]
fn join_refuses_before_init_and_existing_hosts_and_needs_etcd_for_new_members() {
    let (out, _home) = plan(&example("ha-vip.yaml"), &["join"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("run `clusterctl init` first"), "{e}");

    // A journal in which cp1..cp3 and w1 were set up: w2 is new.
    let run = |extra: &[&str], journal_hosts: &[&str]| {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
        std::fs::write(home.path().join(".ssh/id_ed25519"), "").unwrap();
        let dir = home.path().join("state/clusters/prod");
        std::fs::create_dir_all(&dir).unwrap();
        let lines: String = journal_hosts
            .iter()
            .map(|h| {
                format!(
                    "{{\"time\":\"2026-11-24T00:00:00Z\",\"command\":\"init\",\"phase\":\"prepare\",\"host\":\"{h}\",\"inputs\":\"x\",\"ok\":true}}\n"
                )
            })
            .collect();
        std::fs::write(dir.join("journal.jsonl"), lines).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .arg("-i")
            .arg(example("ha-vip.yaml"))
            .arg("--state-dir")
            .arg(home.path().join("state"))
            .arg("join")
            .args(extra)
            .env("HOME", home.path())
            .output()
            .unwrap();
        (out, home)
    };
    let (out, _h) = run(&["--hosts", "cp1"], &["cp1", "cp2", "cp3", "w1"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("`cp1` is already part of the cluster")
            && e.contains("new in")
            && e.contains("w2"),
        "{e}"
    );
    // A new etcd host is a member to add: that needs the running cluster (here: no host
    // answers), and nothing is changed.
    let (out, _h) = run(&[], &["cp1", "cp2", "w1", "w2"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("nothing was changed")
            || e.contains("cannot read etcd's member list to add cp3"),
        "{e}"
    );
    let (out, _h) = run(&[], &["cp1", "cp2", "cp3", "w1", "w2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("join: nothing to do"));
}

#[test]
fn flannel_without_its_manifest_in_a_bundle_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example("ha-vip.yaml"))
        .unwrap()
        .replace("cni: host-routes", "cni: flannel");
    let inv = dir.path().join("inventory.yaml");
    std::fs::write(&inv, text).unwrap();
    let (out, _h) = plan(&inv, &["plan"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("spec.network.cni is flannel") && e.contains("extraManifests"),
        "{e}"
    );
}

/// `plan --command reset` shows what a reset does, per host and in order, touching nothing:
/// the cluster steps when the cluster stays, the balancers that stay, the host's steps.
#[test]
fn reset_plan_shows_cluster_steps_the_staying_balancers_and_each_host_step() {
    let (out, home) = plan(
        &example("ha-vip.yaml"),
        &["plan", "--command", "reset", "--hosts", "cp3"],
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !home.path().join("state").exists(),
        "plan must not write state"
    );
    let order: Vec<&str> = s
        .lines()
        .filter_map(|l| l.strip_prefix("phase "))
        .map(|l| l.split_whitespace().nth(1).unwrap().trim_end_matches(':'))
        .collect();
    assert_eq!(
        order,
        [
            "reset-drain",
            "reset-vip",
            "reset-balancers",
            "reset-control-plane",
            "reset-etcd",
            "reset-host"
        ],
        "{s}"
    );
    assert!(
        s.contains("local: node cp3: cordon, drain (timeout 120 s), delete"),
        "{s}"
    );
    assert!(s.contains("local: etcd member remove cp3"), "{s}");
    // cp3's keepalived stops first, while the other balancers still count it as a peer; they
    // reload without cp3 next; its haproxy and apiserver stop after that.
    let vip = s
        .split("phase 2/6")
        .nth(1)
        .unwrap()
        .split("phase 3/6")
        .next()
        .unwrap();
    assert!(
        vip.contains("cp3 (") && !vip.contains("cp1 (") && vip.contains("stop keepalived.service"),
        "{vip}"
    );
    let lb = s
        .split("phase 3/6")
        .nth(1)
        .unwrap()
        .split("phase 4/6")
        .next()
        .unwrap();
    assert!(
        lb.contains("cp1 (") && lb.contains("cp2 (") && !lb.contains("cp3 ("),
        "{lb}"
    );
    assert!(lb.contains("haproxy.service enabled + running"), "{lb}");
    let host = s.split("phase 6/6").nth(1).unwrap();
    for step in [
        "run      stop the kubelet",
        "run      kill the pods' containers",
        "run      back up the etcd data (/var/lib/etcd)",
        "run      back up /etc/kubernetes",
        "run      remove kube-proxy's KUBE-* chains",
        "run      delete /etc/kubernetes",
    ] {
        assert!(host.contains(step), "{step}:\n{host}");
    }
    // A worker's reset: no member to remove, nothing for the balancers.
    let v = command_json("reset", &["--hosts", "w1"]);
    assert_eq!(hosts_of(&v, "reset-host"), ["w1"]);
    assert!(hosts_of(&v, "reset-control-plane").is_empty());
    assert!(hosts_of(&v, "reset-balancers").is_empty());
    assert!(hosts_of(&v, "reset-vip").is_empty());
    let etcd = phase(&v, "reset-etcd");
    assert!(etcd.get("local").is_none(), "{etcd}");
}

/// `plan --command restore` shows a restore's steps per host without an archive; `restore
/// --dry-run` of a missing archive is bad input before anything else.
#[test]
fn restore_plan_shows_the_steps_per_host_in_order() {
    let v = command_json("restore", &[]);
    assert_eq!(hosts_of(&v, "restore-upload"), ["cp1", "cp2", "cp3"]);
    assert_eq!(hosts_of(&v, "restore-stop"), ["cp1", "cp2", "cp3"]);
    assert_eq!(
        hosts_of(&v, "restore-restart"),
        ["cp1", "cp2", "cp3", "w1", "w2"]
    );
    assert_eq!(phase(&v, "restore-restart")["order"], "one-at-a-time");
    let (out, _home) = plan(
        &example("ha-vip.yaml"),
        &["restore", "--dry-run", "/nonexistent/backup.tar.gz"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}

/// `plan --command backup-schedule` shows the timer files per etcd host.
#[test]
fn backup_schedule_plan_shows_the_timer_on_every_etcd_host() {
    let v = command_json("backup-schedule", &[]);
    assert_eq!(hosts_of(&v, "backup-schedule"), ["cp1", "cp2", "cp3"]);
    let s = v.to_string();
    assert!(s.contains("/etc/systemd/system/etcd-backup.timer"), "{s}");
}
