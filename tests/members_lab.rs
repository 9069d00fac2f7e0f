//! Growing etcd, `status` and `reset` on real nspawn hosts (k8s profile): h1-h3 control plane
//! and etcd behind a keepalived VIP, h4 a worker; h5 and h6 etcd-only hosts added later with
//! `join` (etcd 3 → 5 members, one at a time) while a probe reads through the VIP; `status`
//! shows five healthy members and one leader; the apiservers then run with five etcd servers.
//! `reset --hosts h4 --yes` removes the worker from the cluster and leaves the host clean;
//! `reset --hosts h6 --yes` removes an etcd member (four left, healthy); h6 added back to etcd
//! but not started (an interrupted join) is started by `join`, not added twice.

mod common;

use std::time::{Duration, Instant};

use clusterctl::inventory::{Host, Inventory, Role};
use common::*;

/// `clusterctl -o json status`: (exit code, report).
fn status(inv: &str) -> (i32, serde_json::Value, f64) {
    let t = Instant::now();
    let o = clusterctl(&["-i", inv, "-o", "json", "status"]);
    let secs = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status -o json: {e}: {}", text(&o)));
    (o.status.code().unwrap_or(-1), v, secs)
}

/// The member names status shows, sorted.
fn member_names(s: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = s["etcd"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn assert_members_healthy(s: &serde_json::Value, n: usize) {
    let ms = s["etcd"]["members"].as_array().unwrap();
    assert_eq!(ms.len(), n, "{s:#}");
    assert!(ms.iter().all(|m| m["healthy"] == true), "{s:#}");
    assert_eq!(
        ms.iter().filter(|m| m["leader"] == true).count(),
        1,
        "one leader: {s:#}"
    );
}

/// The clusterctl units that are active on a host.
fn active_units(lab: &Lab, host: &str) -> String {
    lab.exec_ok(
        host,
        "for u in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy haproxy keepalived clusterctl-pod-routes containerd; do systemctl is-active -q $u && echo $u; done; true",
    )
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn etcd_grows_to_five_status_and_reset() {
    let lab = Lab::up_profile("members", 6, "k8s");
    let bundle = lab_bundle();
    let mut inv: Inventory = lab.vip_inventory(&bundle);
    let mut later: Vec<Host> = inv.spec.hosts.drain(4..).collect();
    for h in &mut later {
        h.roles = vec![Role::Etcd];
    }
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let inv_arg = inv_path.to_str().unwrap();
    let admin = lab.dir.join("clusters/lab-members/admin.conf");
    run_report(&["-i", inv_arg, "-o", "json", "init"]);
    let (code, s, secs) = status(inv_arg);
    eprintln!("status after init ({secs:.1}s): {s:#}");
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 3);

    // Grow etcd to five members while reads go through the VIP.
    let probe = ReadProbe::start(&admin);
    inv.spec.hosts.extend(later.iter().cloned());
    lab.write_inventory("inventory.yaml", &inv);
    let flags_before: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.exec_ok(h, "sha256sum /etc/systemd/system/etcd.service"))
        .collect();
    let t = Instant::now();
    let join = run_report(&["-i", inv_arg, "-o", "json", "join"]);
    let join_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (answered, failures) = probe.finish();
    eprintln!(
        "join of h5, h6 (etcd): {join_secs:.1}s; per member: {}; probe: {answered} reads, {} failed",
        join["etcdJoins"],
        failures.len()
    );
    assert!(answered > 20, "the probe barely ran: {answered}");
    assert!(
        failures.is_empty(),
        "reads failed during join: {failures:?}\n{}",
        balancer_events(&lab, &["h1", "h2", "h3"])
    );
    // The existing members' units did not change (no restart for a grown initial cluster).
    let flags_after: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| lab.exec_ok(h, "sha256sum /etc/systemd/system/etcd.service"))
        .collect();
    assert_eq!(flags_before, flags_after);
    for h in ["h5", "h6"] {
        let unit = lab.exec_ok(h, "cat /etc/systemd/system/etcd.service");
        assert!(unit.contains("--initial-cluster-state=existing"), "{unit}");
    }
    let (code, s, status_secs) = status(inv_arg);
    eprintln!("status after join ({status_secs:.1}s): {s:#}");
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 5);
    assert_eq!(member_names(&s), ["h1", "h2", "h3", "h5", "h6"]);
    // Every apiserver runs with the five etcd servers.
    for h in ["h1", "h2", "h3"] {
        let cmd = lab.exec_ok(h, "tr '\\0' ' ' </proc/$(pgrep -x kube-apiserver)/cmdline");
        let servers = cmd
            .split_whitespace()
            .find_map(|a| a.strip_prefix("--etcd-servers="))
            .unwrap_or_else(|| panic!("{h}: no --etcd-servers: {cmd}"));
        assert_eq!(servers.split(',').count(), 5, "{h}: {servers}");
    }
    // A second join changes nothing.
    let again = clusterctl(&["-i", inv_arg, "join"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));

    // reset the worker: drained (its pods evicted) and deleted through the API, the host left
    // clean.
    apply(
        &admin,
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: sleeper, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: sleeper}}}}
  template:
    metadata: {{labels: {{app: sleeper}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: s
          image: {}
          imagePullPolicy: Never
          command: [sleep, "100000"]
"#,
            busybox_ref(&bundle)
        ),
    );
    eventually(Duration::from_secs(60), || {
        let v = kubectl_json(&admin, &["get", "pods", "-l", "app=sleeper"]);
        let items = v["items"].as_array()?;
        (items.len() == 2 && items.iter().all(|p| p["status"]["phase"] == "Running")).then_some(())
    })
    .expect("the sleeper pods run on h4");
    let t = Instant::now();
    let out = clusterctl(&["-i", inv_arg, "reset", "--hosts", "h4", "--yes"]);
    let reset_secs = t.elapsed().as_secs_f64();
    eprintln!("reset h4 ({reset_secs:.1}s):\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("h4: drained ("), "{}", text(&out));
    let pods = kubectl_json(&admin, &["get", "pods", "-l", "app=sleeper"]);
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["spec"]["nodeName"] != "h4"),
        "a sleeper pod is still bound to h4: {pods}"
    );
    let nodes = kubectl_json(&admin, &["get", "nodes"]);
    assert!(
        !nodes.to_string().contains("\"name\":\"h4\""),
        "h4 is still a node"
    );
    assert_eq!(active_units(&lab, "h4"), "", "units still running on h4");
    let left = lab.exec_ok(
        "h4",
        "ls -d /etc/kubernetes /var/lib/kubelet/pki /etc/cni/net.d/10-clusterctl.conflist /usr/local/bin/kubelet 2>/dev/null; iptables-save | grep -c KUBE- ; true",
    );
    assert_eq!(
        left.trim(),
        "0",
        "h4 keeps clusterctl files or KUBE-* rules: {left}"
    );
    let remains = lab.exec_ok("h4", "ls /var/backups/clusterctl 2>/dev/null; true");
    eprintln!("h4 after reset: backups: {remains}");
    assert!(text(&out).contains("remains on h4"), "{}", text(&out));
    // The cluster still serves; status reports h4 as in the inventory but no node.
    let (_, s, _) = status(inv_arg);
    assert!(
        s["drift"].to_string().contains("h4"),
        "status does not see h4 missing: {s:#}"
    );

    // reset an etcd-only host: its member removed, four left and healthy.
    let out = clusterctl(&["-i", inv_arg, "reset", "--hosts", "h6", "--yes"]);
    eprintln!("reset h6:\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    let (code, s, _) = status(inv_arg);
    eprintln!("status after reset h6: {s:#}");
    assert_members_healthy(&s, 4);
    assert_eq!(member_names(&s), ["h1", "h2", "h3", "h5"]);
    // Still in the inventory: status says so, and (only that) is no health problem.
    assert_eq!(
        s["drift"]["inventoryEtcdHostsNotMembers"],
        serde_json::json!(["h6"])
    );
    assert_eq!(code, 0, "{s:#}");

    // An interrupted join: h6 was added to etcd (here by hand, as a join stopped right after
    // `member add` leaves it) but never started: `join` starts the added member instead of
    // adding it twice.
    let ip6 = lab.ip("h6");
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key";
    lab.exec_ok(
        "h1",
        &format!("{etcdctl} member add h6 --peer-urls=https://{ip6}:2380"),
    );
    let t = Instant::now();
    let rejoin = run_report(&["-i", inv_arg, "-o", "json", "join", "--hosts", "h6"]);
    let rejoin_secs = t.elapsed().as_secs_f64();
    let said = rejoin["etcdJoins"].to_string();
    assert!(said.contains("not adding it again"), "{said}");
    let (code, s, _) = status(inv_arg);
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 5);
    assert_eq!(member_names(&s), ["h1", "h2", "h3", "h5", "h6"]);
    eprintln!("join of the reset h6 (resumed, added by hand before): {rejoin_secs:.1}s");
    eprintln!(
        "timings: join of 2 etcd members {join_secs:.1}s, reset of a worker {reset_secs:.1}s, status {status_secs:.1}s"
    );
}
