//! `upgrade` end to end on real nspawn hosts (k8s profile): 3 control-plane hosts (etcd on
//! them) behind a keepalived VIP + 2 workers, installed at Kubernetes v1.20.2 with etcd 3.4.23
//! (Debian bookworm), then upgraded to etcd 3.5.16 (Debian trixie) alone, then to "v1.20.3" — a
//! RE-STAMPED build of the same v1.20.2 source (tests/lab/build-kubernetes.sh --stamp): it
//! exercises the upgrade's mechanics (order, kept binaries, gates, drain, resume), not a real
//! 1.20.3. A web workload with a PodDisruptionBudget runs and a read probe goes through the
//! VIP all along. The first run is made to fail for real on the second control-plane host (a
//! directory where its kube-apiserver binary should be); the cause is removed, and the next
//! run is killed with SIGKILL between two control-plane hosts (h2 done, h3 out of the
//! balancers): its plain re-run resumes and completes, no node drained twice, every node
//! uncordoned, no backend left drained, no failed read.

mod common;

use std::path::Path;
use std::time::Instant;

use common::chaos::*;
use common::*;

const TARGET: &str = "v1.20.3";

/// Per unit on `host`: the version its running process reports (through /proc/<pid>/exe).
fn running_versions(lab: &Lab, host: &str, units: &[&str]) -> Vec<(String, String)> {
    units
        .iter()
        .map(|u| {
            let v = lab.exec_ok(
                host,
                &format!(
                    "p=$(systemctl show -p MainPID --value {u}); /proc/$p/exe --version 2>&1 | head -1"
                ),
            );
            (u.to_string(), v.trim().to_string())
        })
        .collect()
}

fn apiserver_version(lab: &Lab, admin: &Path, host: &str) -> String {
    let out = kubectl_ok(
        admin,
        &[
            "--server",
            &format!("https://{}:6443", lab.ip(host)),
            "get",
            "--raw",
            "/version",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["gitVersion"].as_str().unwrap().to_string()
}

fn etcd_versions(lab: &Lab) -> Vec<String> {
    let out = lab.exec_ok(
        "h1",
        &format!(
            "ETCDCTL_API=3 etcdctl --endpoints=https://{}:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
             --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
             endpoint status --cluster -w json",
            lab.ip("h1")
        ),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["Status"]["version"].as_str().unwrap().to_string())
        .collect()
}

fn stage_seconds(report: &serde_json::Value) -> Vec<(String, f64)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["seconds"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn upgrade_etcd_and_kubernetes_with_a_failure_and_a_resume() {
    let lab = Lab::up_profile("upgrade", 5, "k8s");
    let bundle = restamped_bundle(TARGET);
    let mut inv = lab.vip_inventory(&bundle);
    assert_eq!(inv.spec.kubernetes_version.to_string(), "v1.20.2");
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let inv_arg = inv_path.to_str().unwrap();
    // (The cluster is named after the lab, whose name CLUSTERCTL_LAB_PREFIX may change.)
    let cluster_dir = lab.dir.join("clusters").join(inv.name());
    let admin = cluster_dir.join("admin.conf");
    run_report(&["-i", inv_arg, "-o", "json", "init"]);

    // The workload, with a PodDisruptionBudget the drains must respect. Its spread constraint
    // (maxSkew 1 over two workers, DoNotSchedule) would keep an evicted pod's replacement
    // Pending while the other worker is cordoned, and `kubectl drain` would wait forever as
    // well: drop it, so the budget is what paces the drain.
    check_web_workload(&lab, &admin, &bundle);
    kubectl_ok(
        &admin,
        &[
            "patch",
            "deployment",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/template/spec/topologySpreadConstraints"}]"#,
        ],
    );
    kubectl_ok(
        &admin,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    apply(
        &admin,
        "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata: {name: web, namespace: default}\nspec:\n  minAvailable: 3\n  selector:\n    matchLabels: {app: web}\n",
    );

    // Only etcd first (3.4.23 -> 3.5.16, Kubernetes stays): members one at a time with the
    // read probe at 0 failures; the control plane and the nodes are neither restarted nor
    // drained; the old etcd is kept on each member; `init` with the old etcd version is refused.
    let old_path = lab.write_inventory("inventory-old.yaml", &inv);
    inv.spec.etcd.version = Some("3.5.16".parse().unwrap());
    lab.write_inventory("inventory.yaml", &inv);
    assert_eq!(etcd_versions(&lab), ["3.4.23"; 3]);
    let plan = clusterctl(&["-i", inv_arg, "upgrade", "plan"]);
    eprintln!("{}", text(&plan));
    assert!(plan.status.success(), "{}", text(&plan));
    let etcd = EtcdProcesses::read(&lab, &["h1", "h2", "h3"]);
    let probe = ReadProbe::start(&admin);
    let (report, _) = upgrade_probed(
        &lab,
        (probe, etcd),
        &["-i", inv_arg, "-o", "json", "upgrade"],
        "etcd-only upgrade",
    );
    assert_eq!(etcd_versions(&lab), ["3.5.16"; 3]);
    for s in report["stages"].as_array().unwrap() {
        for (h, o) in s["hosts"].as_object().unwrap() {
            let restarts = o["restarts"].as_array().unwrap();
            if s["stage"] == "upgrade-etcd" {
                assert_eq!(restarts, &[serde_json::json!("etcd.service")], "{h}: {o}");
            } else {
                assert!(restarts.is_empty(), "{} restarted {h}: {o}", s["stage"]);
            }
        }
    }
    assert!(drains(&report).is_empty(), "drained: {:?}", drains(&report));
    for h in ["h1", "h2", "h3"] {
        lab.exec_ok(h, "test -x /usr/local/lib/clusterctl/previous/etcd-3.4.23");
    }
    init_refused(&old_path, "fix: set spec.etcd.version: 3.5.16");

    // Then Kubernetes. The plan: what runs now, the targets, the skew check, what restarts.
    let plan = clusterctl(&["-i", inv_arg, "upgrade", "plan", "--to", TARGET]);
    let plan_text = text(&plan);
    eprintln!("{plan_text}");
    assert!(plan.status.success(), "{plan_text}");
    for want in [
        "kube-apiserver",
        "replace + restart",
        "skew check: ok",
        "RE-STAMPED",
        "v1.20.2",
    ] {
        assert!(
            plan_text.contains(want),
            "plan lacks {want:?}:\n{plan_text}"
        );
    }
    // A version the bundle does not hold: refused, nothing touched.
    let bad = clusterctl(&["-i", inv_arg, "upgrade", "plan", "--to", "v1.20.7"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // A real failure on the second control-plane host: a directory where the binary goes.
    lab.exec_ok(
        "h2",
        "mv /usr/local/bin/kube-apiserver /usr/local/bin/kube-apiserver.moved-by-test && mkdir /usr/local/bin/kube-apiserver",
    );
    let etcd = EtcdProcesses::read(&lab, &["h1", "h2", "h3"]);
    let probe = ReadProbe::start(&admin);
    let t = Instant::now();
    let failed = clusterctl(&["-i", inv_arg, "-o", "json", "upgrade", "--to", TARGET]);
    let first_secs = t.elapsed().as_secs_f64();
    eprintln!("{}", String::from_utf8_lossy(&failed.stderr));
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("upgrade-control-plane")
            && err.contains("h2")
            && err.contains("not a regular file"),
        "{err}"
    );
    let first: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(first["ok"], false, "{first}");
    eprintln!("failed run {first_secs:.1}s");
    // The cluster serves: etcd all at 3.5.16, h1's apiserver at the target, h2 and h3 not.
    assert_eq!(etcd_versions(&lab), ["3.5.16"; 3]);
    assert_eq!(apiserver_version(&lab, &admin, "h1"), TARGET);
    assert_eq!(apiserver_version(&lab, &admin, "h2"), "v1.20.2");
    assert_eq!(apiserver_version(&lab, &admin, "h3"), "v1.20.2");
    assert!(
        lab.exec(
            "h1",
            "test -f /usr/local/lib/clusterctl/previous/kube-apiserver-v1.20.2"
        )
        .status
        .success(),
        "h1 keeps its previous apiserver"
    );
    // init with the old inventory now: refused (the upgrade is unfinished), nothing touched.
    init_refused(&old_path, "run `clusterctl upgrade` again");
    // No node left cordoned.
    let nodes = kubectl_json(&admin, &["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        assert!(
            n["spec"]["unschedulable"].is_null(),
            "{}",
            n["metadata"]["name"]
        );
    }

    // Remove the cause. The next run is killed between two control-plane hosts: h2 done,
    // h3 out of the balancers for its restart.
    lab.exec_ok(
        "h2",
        "rmdir /usr/local/bin/kube-apiserver && mv /usr/local/bin/kube-apiserver.moved-by-test /usr/local/bin/kube-apiserver",
    );
    let journal = cluster_dir.join("journal.jsonl");
    let from = std::fs::read_to_string(&journal).unwrap().lines().count();
    let killed_log = lab.dir.join("upgrade-killed.log");
    kill_when(
        &["-i", inv_arg, "upgrade", "--to", TARGET],
        &killed_log,
        "while h3 is drained on a balancer",
        || {
            backends(&lab)
                .iter()
                .any(|(_, s, admin, _)| s == "h3" && admin & 0x08 != 0)
        },
    );
    let killed = std::fs::read_to_string(&killed_log).unwrap();
    eprintln!(
        "chaos: the killed run:\n{killed}\nh3's pending record after the kill: {:?}",
        lab.exec_ok("h3", "ls -A /var/lib/clusterctl/pending 2>/dev/null; true")
    );
    assert!(!killed.contains("drained in"), "no node was drained yet");
    assert_eq!(apiserver_version(&lab, &admin, "h2"), TARGET);
    // A plain re-run resumes and completes.
    let (done, ok) = upgrade_probed(
        &lab,
        (probe, etcd),
        &["-i", inv_arg, "-o", "json", "upgrade", "--to", TARGET],
        "re-run after the kill",
    );
    assert!(ok > 100, "the probe ran ({ok})");
    let resumed = resumed_in_journal(&journal, from, "h3");
    eprintln!("chaos: resumed on h3: {resumed:#?}");
    assert!(
        !resumed.is_empty(),
        "the journal shows no resumed work on h3"
    );
    assert_nothing_drained(&lab, inv_arg);
    let units = assert_units_run_their_files(&lab, &unit_files(inv_arg));
    assert!(units >= 15, "units checked: {units}");
    assert_nothing_pending(&lab, &["h1", "h2", "h3", "h4", "h5"]);

    // Every member and component at the target.
    assert_eq!(etcd_versions(&lab), ["3.5.16"; 3]);
    for h in ["h1", "h2", "h3"] {
        assert_eq!(apiserver_version(&lab, &admin, h), TARGET);
        for (u, v) in running_versions(
            &lab,
            h,
            &[
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
            ],
        ) {
            assert_eq!(v, format!("Kubernetes {TARGET}"), "{h} {u}");
        }
        let e = running_versions(&lab, h, &["etcd"]);
        assert!(e[0].1.contains("3.5.16"), "{h}: {e:?}");
    }
    for h in ["h4", "h5"] {
        for (u, v) in running_versions(&lab, h, &["kubelet", "kube-proxy"]) {
            assert_eq!(v, format!("Kubernetes {TARGET}"), "{h} {u}");
        }
    }
    let nodes = kubectl_json(&admin, &["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], TARGET, "{name}");
        assert!(node_ready(n), "{name}");
        assert!(n["spec"]["unschedulable"].is_null(), "{name} left cordoned");
    }
    // Each node was drained once (the workers' web pods evicted, the PDB respected) and
    // uncordoned.
    let d = drains(&done);
    eprintln!("drains: {d:#?}");
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        let n = d.iter().filter(|(x, _)| x == h).count();
        assert_eq!(n, 1, "{h} drained {n} times: {d:?}");
    }
    for h in ["h4", "h5"] {
        assert!(
            d.iter()
                .any(|(x, l)| x == h && l.contains("evicted (") && l.contains("default/web-")),
            "{h} drain: {d:?}"
        );
    }
    // The workload runs again.
    let pods = eventually(std::time::Duration::from_secs(120), || {
        let v = kubectl_json(&admin, &["get", "pods", "-l", "app=web"]);
        let running = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        (running == 4).then_some(v)
    });
    assert!(pods.is_some(), "web pods not Running again");

    // A second run changes nothing.
    let again = run_report_upgrade(&["-i", inv_arg, "-o", "json", "upgrade", "--to", TARGET]);
    for s in again["stages"].as_array().unwrap() {
        for (h, o) in s["hosts"].as_object().unwrap() {
            assert!(
                o["files_written"] == 0 && o["restarts"].as_array().unwrap().is_empty(),
                "re-run changed {h} in {}: {o}",
                s["stage"]
            );
        }
    }
    assert!(
        drains(&again).is_empty(),
        "re-run drained: {:?}",
        drains(&again)
    );
    // Rollback of a worker to the binaries kept on it, then forward again. A dry run first:
    // its report (-o json: nothing else on stdout) says what would change, and nothing does.
    let rollback_h5 = |extra: &[&str]| {
        let mut args = vec![
            "-i",
            inv_arg,
            "-o",
            "json",
            "upgrade",
            "--rollback",
            "--hosts",
            "h5",
        ];
        args.extend_from_slice(extra);
        run_report_upgrade(&args)
    };
    let dry = rollback_h5(&["--dry-run"]);
    assert!(
        dry["wouldChange"]
            .as_array()
            .is_some_and(|w| w.iter().any(|c| c["host"] == "h5")),
        "{dry}"
    );
    for (u, v) in running_versions(&lab, "h5", &["kubelet", "kube-proxy"]) {
        assert_eq!(
            v,
            format!("Kubernetes {TARGET}"),
            "h5 {u} after the dry run"
        );
    }
    let t = Instant::now();
    let rb = rollback_h5(&[]);
    eprintln!(
        "rollback of h5: {:.1}s, stages {:?}",
        t.elapsed().as_secs_f64(),
        stage_seconds(&rb)
    );
    assert!(
        rb["hosts"].as_array().is_some_and(|h| h
            .iter()
            .any(|h| h.as_str().is_some_and(|h| h.starts_with("h5 (")))),
        "{rb}"
    );
    for (u, v) in running_versions(&lab, "h5", &["kubelet", "kube-proxy"]) {
        assert_eq!(v, "Kubernetes v1.20.2", "h5 {u}");
    }
    let n = kubectl_json(&admin, &["get", "node", "h5"]);
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.20.2");
    assert!(
        node_ready(&n) && n["spec"]["unschedulable"].is_null(),
        "{n}"
    );
    let o = clusterctl(&["-i", inv_arg, "init"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "init after a rollback: {}",
        text(&o)
    );
    let fwd = run_report_upgrade(&["-i", inv_arg, "-o", "json", "upgrade", "--to", TARGET]);
    eprintln!("forward again: stages {:?}", stage_seconds(&fwd));
    for (u, v) in running_versions(&lab, "h5", &["kubelet", "kube-proxy"]) {
        assert_eq!(v, format!("Kubernetes {TARGET}"), "h5 {u}");
    }

    // The old inventory is refused by init, with the fix.
    init_refused(&old_path, "fix: set spec.kubernetesVersion: v1.20.3");
}

/// (host, line) for every node drain a report's stages say they did.
fn drains(report: &serde_json::Value) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for s in report["stages"].as_array().unwrap() {
        for (h, o) in s["hosts"].as_object().unwrap() {
            for l in o["report"].as_array().into_iter().flatten() {
                let l = l.as_str().unwrap();
                if l.contains("drained in") {
                    v.push((h.clone(), l.to_string()));
                }
            }
        }
    }
    v
}

/// An upgrade that must succeed while `probe` reads through the VIP: its report and the reads
/// answered; no read may fail but the answers etcd's churn accounts for (one "leader changed"
/// per hand-over the report shows, one per etcd member stopped since `etcd` was read: etcd's
/// own upgrade restarts every member; see `without_etcd_churn`).
fn upgrade_probed(
    lab: &Lab,
    (probe, etcd): (ReadProbe, EtcdProcesses),
    args: &[&str],
    what: &str,
) -> (serde_json::Value, usize) {
    let t = Instant::now();
    let report = run_report_upgrade(args);
    let secs = t.elapsed().as_secs_f64();
    let (ok, failures) = probe.finish_after(&[&report.to_string()], etcd.stops(lab));
    eprintln!(
        "{what} {secs:.1}s, stages {:?}; probe: {ok} answered, {} failed",
        stage_seconds(&report),
        failures.len()
    );
    assert!(failures.is_empty(), "probe failures: {failures:#?}");
    (report, ok)
}

/// `init` with `inventory` is refused (exit 2) with `why` in its message.
fn init_refused(inventory: &Path, why: &str) {
    let o = clusterctl(&["-i", inventory.to_str().unwrap(), "init"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(why), "{}", text(&o));
}

/// `clusterctl ARGS` (an upgrade with `-o json`) that must succeed: its report.
fn run_report_upgrade(args: &[&str]) -> serde_json::Value {
    let out = clusterctl(args);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("-o json prints the report")
}
