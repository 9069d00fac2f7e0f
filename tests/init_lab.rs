//! `clusterctl init` on real nspawn hosts with the real programs from the lab bundle (etcd
//! 3.4.23, haproxy, keepalived from Debian; Kubernetes v1.20.2 built from Debian's source).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use clusterctl::inventory::{HaMode, Inventory, ProtectKernelDefaults, Role};
use common::*;

fn init(inv: &Path) -> serde_json::Value {
    run_report(&["-i", inv.to_str().unwrap(), "-o", "json", "init"])
}

fn vip_inventory(lab: &Lab, lb_hosts: &[&str]) -> Inventory {
    let mut inv = lab.vip_inventory(&lab_bundle());
    for h in &mut inv.spec.hosts {
        if lb_hosts.contains(&h.name.as_str()) {
            h.roles = vec![Role::Lb];
        }
    }
    inv
}

fn readyz(admin: &Path) -> bool {
    let o = kubectl(admin, &["get", "--raw", "/readyz"]);
    o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok"
}

fn vip_holder(lab: &Lab, hosts: &[&str], vip: &str) -> Option<String> {
    hosts
        .iter()
        .find(|h| {
            lab.exec(h, "ip -o -4 addr show dev eth0").status.success()
                && text(&lab.exec(h, "ip -o -4 addr show dev eth0")).contains(&format!(" {vip}/"))
        })
        .map(|h| h.to_string())
}

/// Every check of a freshly initialised cluster, through its HA endpoint.
fn check_cluster(lab: &Lab, admin: &Path) {
    assert!(
        readyz(admin),
        "readyz through the endpoint: {}",
        text(&kubectl(admin, &["get", "--raw", "/readyz"]))
    );
    // componentstatuses (deprecated since 1.19) reads the scheduler's and controller-manager's
    // insecure HTTP ports, which clusterctl closes (--port=0, as kubeadm): only etcd is
    // Healthy there, and those two must be refused; their secure ports are checked instead.
    let cs = eventually(Duration::from_secs(60), || {
        let o = kubectl(admin, &["get", "componentstatuses"]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let etcd = t
            .lines()
            .filter(|l| l.starts_with("etcd-") && l.contains("Healthy"))
            .count();
        (etcd >= 3).then_some(t)
    });
    let cs = cs.unwrap_or_else(|| {
        panic!(
            "componentstatuses: etcd not healthy: {}",
            text(&kubectl(admin, &["get", "componentstatuses"]))
        )
    });
    for (name, insecure) in [("scheduler", 10251), ("controller-manager", 10252)] {
        let line = cs.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        assert!(
            line.contains("Unhealthy") && line.contains(&format!("127.0.0.1:{insecure}")),
            "{name}'s insecure port must be closed: {cs}"
        );
    }
    let listening = lab.exec_ok("h1", "ss -ltnH");
    for port in [10257, 10259] {
        assert!(
            listening.contains(&format!("127.0.0.1:{port} ")),
            "secure port {port} not listening: {listening}"
        );
    }
    assert!(
        !listening.contains(":10251 ") && !listening.contains(":10252 "),
        "insecure ports open: {listening}"
    );
    let health = lab.exec_ok(
        "h1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
         endpoint health --cluster 2>&1",
    );
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn init_vip_on_the_control_plane_survives_vip_holder_and_apiserver_loss() {
    let lab = Lab::up_profile("initvip", 3, "k8s");
    let inv = vip_inventory(&lab, &[]);
    let inv_path = lab.write_inventory("inventory-vip.yaml", &inv);
    let admin = lab.dir.join(format!("clusters/{}/admin.conf", inv.name()));
    let nodes = ["h1", "h2", "h3"];

    // kubelet.protectKernelDefaults forced on hosts that are containers: preflight reads each
    // host's kernel settings back, refuses every one of them (exit 2) and nothing is written.
    let mut forced = inv.clone();
    forced.spec.kubelet.protect_kernel_defaults = ProtectKernelDefaults::On;
    let forced_path = lab.write_inventory("inventory-vip-pkd.yaml", &forced);
    let o = clusterctl(&["-i", forced_path.to_str().unwrap(), "init"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for h in nodes {
        assert!(
            text(&o).contains(&format!(
                "host {h}: kubelet.protectKernelDefaults is true, but it is a container (systemd-nspawn)"
            )),
            "{}",
            text(&o)
        );
        assert!(
            lab.exec(
                h,
                "[ ! -e /etc/kubernetes ] && [ ! -e /etc/sysctl.d/90-kubelet.conf ]"
            )
            .status
            .success(),
            "{h} was changed by a refused init"
        );
    }

    // Every file appearing under the secrets' directories is watched through the first init
    // (see common::modes for why this catches an upload that chmods after creating).
    let watch = modes::ModeWatch::start(&lab, &nodes);
    let first = init(&inv_path);
    watch.control("h1");
    modes::assert_uploads_private(&watch.finish(), 20, "h1");
    assert!(totals(&first).0 > 0);
    check_cluster(&lab, &admin);
    // protectKernelDefaults (auto): read back per host, off in these containers, and the
    // kubelets run.
    let kubelet = first["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "kubelet")
        .expect("a kubelet phase");
    for h in nodes {
        let report = kubelet["hosts"][h]["report"].to_string();
        assert!(
            report.contains(&format!(
                "{h}: protectKernelDefaults off: auto, and it is a container (systemd-nspawn)"
            )),
            "{h}: {report}"
        );
        assert_eq!(lab.exec_ok(h, "systemctl is-active kubelet"), "active");
        assert_eq!(
            lab.exec_ok(
                h,
                "grep -c protectKernelDefaults /var/lib/kubelet/config.yaml; [ ! -e /etc/sysctl.d/90-kubelet.conf ]"
            ),
            "0",
            "{h}"
        );
    }
    // The verify phase's report: every etcd member agreeing on one leader, every apiserver
    // and the VIP ready, both leader leases held by a control-plane host.
    let verify = first["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "verify")
        .expect("a verify phase");
    let lines: Vec<&str> = verify["hosts"]["h1"]["report"]
        .as_array()
        .expect("verify reports lines")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let leaders: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l.starts_with("etcd h"))
        .map(|l| {
            l.split("leader ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("etcd h")).count(),
        3,
        "{lines:?}"
    );
    assert_eq!(leaders.len(), 1, "{lines:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(": readyz ok; cert expires"))
            .count(),
        4,
        "{lines:?}"
    );
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("lease {lease}: held by h"))),
            "{lines:?}"
        );
    }
    let vip = lab.addr(100);
    let server = std::fs::read_to_string(&admin).unwrap();
    assert!(
        server.contains(&format!("https://{vip}:8443")),
        "admin.conf must point at the VIP"
    );

    // A second init changes nothing: no byte sent, no restart.
    let again = init(&inv_path);
    assert_eq!(
        totals(&again),
        (0, 0, 0),
        "second init was not a no-op: {}",
        again["totals"]
    );

    // Another apiserver flag: `plan --diff` shows it on each host and changes nothing; `init`
    // then rewrites only that unit and restarts the apiservers one at a time, while requests
    // through the VIP keep being answered.
    let mut changed = inv.clone();
    changed
        .spec
        .control_plane
        .apiserver_extra_args
        .insert("default-watch-cache-size".into(), "200".into());
    let changed_path = lab.write_inventory("inventory-vip-flag.yaml", &changed);
    let diff = clusterctl(&["-i", changed_path.to_str().unwrap(), "plan", "--diff"]);
    assert!(diff.status.success(), "plan --diff: {}", text(&diff));
    let shown = String::from_utf8_lossy(&diff.stdout);
    for h in ["h1", "h2", "h3"] {
        assert!(
            shown.contains(&format!(
                "--- {h}:/etc/systemd/system/kube-apiserver.service"
            )),
            "{shown}"
        );
    }
    assert_eq!(
        shown.matches("+  --default-watch-cache-size=200").count(),
        3,
        "{shown}"
    );
    let unit = lab.exec_ok("h1", "cat /etc/systemd/system/kube-apiserver.service");
    assert!(!unit.contains("watch-cache"), "plan --diff changed a host");

    let probe = ReadProbe::start(&admin);
    let rolled = init(&changed_path);
    let (ok, failed) = probe.finish();
    eprintln!(
        "rolling apiserver restart: {ok} requests answered, {} failed",
        failed.len()
    );
    let (files, _, restarts) = totals(&rolled);
    assert_eq!((files, restarts), (3, 3), "{}", rolled["totals"]);
    assert!(
        failed.is_empty(),
        "requests failed during the roll: {failed:?}"
    );
    assert!(ok >= 10, "only {ok} probes ran during the roll");

    // `status` reads the same report at any time; healthy now.
    let inv_arg = inv_path.to_str().unwrap();
    let st = clusterctl(&["-i", inv_arg, "status"]);
    assert!(st.status.success(), "status: {}", text(&st));
    let t = text(&st);
    assert!(
        t.lines().any(|l| l.trim_start().starts_with("h1 ")
            && l.contains("healthy")
            && l.contains("v3.4.23")),
        "{t}"
    );

    // One apiserver stops: haproxy takes it out; requests keep working.
    lab.exec_ok("h2", "systemctl stop kube-apiserver");
    let st = clusterctl(&["-i", inv_arg, "status"]);
    assert_eq!(
        st.status.code(),
        Some(1),
        "status with h2 down: {}",
        text(&st)
    );
    let t = text(&st);
    assert!(
        t.lines()
            .any(|l| l.trim_start().starts_with("h2 ") && l.contains("NOT READY")),
        "{t}"
    );
    for i in 0..20 {
        assert!(
            readyz(&admin),
            "request {i} failed with h2's apiserver down"
        );
    }
    lab.exec_ok("h2", "systemctl start kube-apiserver");

    // The VIP holder goes down: the VIP moves and kubectl through it keeps working.
    let holder = vip_holder(&lab, &["h1", "h2", "h3"], &vip).expect("someone holds the VIP");
    let t = Instant::now();
    lab.stop_host(&holder);
    let others: Vec<&str> = ["h1", "h2", "h3"]
        .into_iter()
        .filter(|h| *h != holder)
        .collect();
    let new = eventually(Duration::from_secs(15), || vip_holder(&lab, &others, &vip))
        .expect("the VIP did not move");
    let served = eventually(Duration::from_secs(30), || readyz(&admin).then_some(()));
    eprintln!(
        "VIP moved from {holder} to {new}; API answered again after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        served.is_some(),
        "no answer through the VIP after {holder} went down"
    );
    for i in 0..10 {
        assert!(readyz(&admin), "request {i} through the moved VIP failed");
    }
    lab.start_host(&holder);
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn init_vip_on_two_separate_lb_hosts() {
    let lab = Lab::up_profile("initlb", 5, "k8s");
    let inv = vip_inventory(&lab, &["h4", "h5"]);
    let inv_path = lab.write_inventory("inventory-lb.yaml", &inv);
    init(&inv_path);
    let admin = lab.dir.join("clusters/lab-initlb/admin.conf");
    check_cluster(&lab, &admin);
    let vip = lab.addr(100);
    // Every keepalived starts as BACKUP with nopreempt (the VIP never moves back on its own),
    // so whichever lb host won the first election holds it; the other takes over below.
    let holder = vip_holder(&lab, &["h4", "h5"], &vip).expect("one lb host holds the VIP");
    let other = if holder == "h4" { "h5" } else { "h4" };
    for h in ["h1", "h2", "h3"] {
        assert!(
            !lab.exec(h, "systemctl is-active keepalived")
                .status
                .success(),
            "{h} runs keepalived"
        );
    }
    lab.stop_host(&holder);
    assert_eq!(
        eventually(Duration::from_secs(15), || vip_holder(&lab, &[other], &vip)).as_deref(),
        Some(other)
    );
    assert!(eventually(Duration::from_secs(30), || readyz(&admin).then_some(())).is_some());
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn init_local_proxy_and_converging_after_a_host_dies_mid_run() {
    let lab = Lab::up_profile("initlp", 4, "k8s");
    let mut inv = lab.inventory_with_bundle(&lab_bundle());
    inv.spec.ha.mode = HaMode::LocalProxy;
    let inv_path = lab.write_inventory("inventory-lp.yaml", &inv);

    // Kill h3 while init runs (once etcd is being set up), then bring it back and re-run.
    let bin = env!("CARGO_BIN_EXE_clusterctl");
    let mut child = std::process::Command::new(bin)
        .args(["-i", inv_path.to_str().unwrap(), "init"])
        .env("CI", "true")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push(line);
        }
        seen
    });
    let killed = eventually(Duration::from_secs(300), || {
        let cached = lab
            .exec("h3", "test -x /usr/local/bin/etcd")
            .status
            .success();
        cached.then_some(())
    });
    assert!(killed.is_some(), "init never installed etcd on h3");
    lab.stop_host("h3");
    let status = child.wait().unwrap();
    let log = reader.join().unwrap().join("\n");
    assert!(!status.success(), "init must fail while h3 is down:\n{log}");
    assert!(log.contains("h3"), "the failure names the host:\n{log}");
    lab.start_host("h3");
    let report = init(&inv_path);
    let admin = lab.dir.join("clusters/lab-initlp/admin.conf");
    check_cluster(&lab, &admin);
    // local-proxy: every node has haproxy on 127.0.0.1:6443 in front of all apiservers.
    for h in ["h1", "h4"] {
        let cfg = lab.exec_ok(h, "cat /etc/haproxy/haproxy.cfg");
        assert!(cfg.contains("bind 127.0.0.1:6443"), "{h}: {cfg}");
        let code = lab.exec_ok(h, "bash -c '</dev/tcp/127.0.0.1/6443' && echo open");
        assert_eq!(code, "open", "{h}: nothing listens on 127.0.0.1:6443");
    }
    assert_eq!(
        totals(&init(&inv_path)),
        (0, 0, 0),
        "after converging, a re-run is a no-op"
    );
    let _ = report;
}
