//! The control plane grown and shrunk on real nspawn hosts (k8s profile, `local-proxy` mode:
//! haproxy on every node, no VIP): h1 control plane + etcd and h2 a worker; `join` of h3 and
//! h4 (1 → 3 etcd voters and apiservers), first `join --hosts h3 --only-phase etcd`, which
//! changes and gates nothing on h1 or h2; then h5 and h6 (3 → 5) with the first `join` killed
//! right after its `member add` and completed by a plain re-run; then `reset` of h6 (back to
//! 4). Two probes count failed requests all along: reads with the operator's admin.conf, and
//! reads from the worker h2 through its local proxy. Every existing etcd member, apiserver and
//! haproxy keeps its process (main PID and start time compared). Last, h1 is powered off:
//! `status` still reports the cluster and `kubectl --context <cluster>-h3` still answers.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterctl::inventory::{HaMode, Host, Inventory, Role};
use common::*;

/// `clusterctl -o json status`: (exit code, report, seconds).
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

/// `etcdctl member list` on `host` (over TLS, with its healthcheck client).
fn etcd_members(lab: &Lab, host: &str) -> String {
    lab.exec_ok(
        host,
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
         member list -w table",
    )
}

/// Per host, each unit's main PID and start time, plus the sha256 of the files a change of
/// which would restart or reload something: equal before and after means nothing restarted
/// (a haproxy reload keeps its master's PID; its config's hash says whether it was reloaded).
fn stamps(lab: &Lab, hosts: &[&str]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            let s = lab.exec_ok(
                h,
                "for u in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy haproxy containerd; do \
                   echo \"$u $(systemctl show -p MainPID -p ActiveEnterTimestamp --value $u | tr '\\n' ' ')\"; done; \
                 sha256sum /etc/systemd/system/etcd.service /etc/systemd/system/kube-apiserver.service \
                   /etc/kubernetes/pki/apiserver.crt 2>/dev/null; true",
            );
            format!("{h}:\n{s}")
        })
        .collect()
}

fn haproxy_cfg(lab: &Lab, host: &str) -> String {
    lab.exec_ok(host, "sha256sum /etc/haproxy/haproxy.cfg")
}

/// A read probe on a node, through its local proxy (127.0.0.1:6443, haproxy in front of
/// every apiserver): what the kubelets and kube-proxies use. A loop inside the host every
/// 100 ms with the admin identity, counting answers and keeping the failures with their time.
struct NodeProbe<'a> {
    lab: &'a Lab,
    host: String,
}

impl<'a> NodeProbe<'a> {
    fn start(lab: &'a Lab, host: &str, cluster: &str) -> NodeProbe<'a> {
        let root = lab.dir.join("hosts").join(host).join("root/root");
        // The kubectl of the bundle (v1.20.2, static), from the control-plane host h1.
        let kubectl = lab.dir.join("hosts/h1/root/usr/local/bin/kubectl");
        std::fs::copy(&kubectl, root.join("probe-kubectl"))
            .unwrap_or_else(|e| panic!("{}: {e}", kubectl.display()));
        let kc = std::fs::read_to_string(
            lab.dir
                .join(format!("clusters/{cluster}/kubeconfig/admin.conf")),
        )
        .unwrap();
        let kc: String = kc
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    "    server: https://127.0.0.1:6443".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(root.join("probe.conf"), kc).unwrap();
        std::fs::write(
            root.join("probe.sh"),
            "ok=0; n=0; rm -f /root/probe.stop /root/probe.failures\n\
             while [ ! -e /root/probe.stop ]; do\n\
               if out=$(/root/probe-kubectl --kubeconfig /root/probe.conf --request-timeout=5s get --raw /api/v1/namespaces/kube-system 2>&1); then ok=$((ok+1));\n\
               else echo \"at $(date +%s.%N): $out\" >> /root/probe.failures; fi\n\
               n=$((n+1)); echo \"$ok $n\" > /root/probe.count; sleep 0.1\n\
             done\n\
             echo done > /root/probe.finished\n",
        )
        .unwrap();
        lab.exec_ok(
            host,
            "rm -f /root/probe.finished /root/probe.count; setsid bash /root/probe.sh >/dev/null 2>&1 < /dev/null &",
        );
        // Running once its first request has come back (a fixed second was too short on a
        // loaded machine: the first kubectl had not answered yet).
        eventually(Duration::from_secs(30), || {
            lab.exec(host, "test -s /root/probe.count")
                .status
                .success()
                .then_some(())
        })
        .expect("the node probe answers its first request");
        NodeProbe {
            lab,
            host: host.to_string(),
        }
    }

    /// Stops it: (requests answered, failures), up to `handovers` leader changes set aside
    /// as in ReadProbe.
    fn finish(self, handovers: usize, stops: usize) -> (usize, Vec<String>) {
        self.lab.exec_ok(&self.host, "touch /root/probe.stop");
        eventually(Duration::from_secs(15), || {
            (self
                .lab
                .exec(&self.host, "[ -e /root/probe.finished ]")
                .status
                .success())
            .then_some(())
        })
        .expect("the node probe stops");
        let count = self.lab.exec_ok(&self.host, "cat /root/probe.count");
        let ok: usize = count.split_whitespace().next().unwrap().parse().unwrap();
        let failures = self
            .lab
            .exec_ok(&self.host, "cat /root/probe.failures 2>/dev/null; true");
        let failed: Vec<String> = failures
            .split("\nat ")
            .filter(|f| !f.trim().is_empty())
            .map(|f| format!("{}\n", f.trim_end()))
            .collect();
        (ok, without_etcd_churn(failed, handovers, stops))
    }
}

/// Both probes: through the operator's admin.conf and through h2's local proxy.
struct Probes<'a> {
    read: ReadProbe,
    node: NodeProbe<'a>,
    /// The etcd members running when the probes started.
    etcd: EtcdProcesses,
    t: Instant,
}

impl<'a> Probes<'a> {
    fn start(lab: &'a Lab, admin: &Path, cluster: &str) -> Probes<'a> {
        Probes {
            etcd: EtcdProcesses::read(lab, &["h1", "h2", "h3", "h4", "h5", "h6"]),
            read: ReadProbe::start(admin),
            node: NodeProbe::start(lab, "h2", cluster),
            t: Instant::now(),
        }
    }

    /// Stops both and asserts that no request failed but the answers etcd's churn accounts
    /// for: one "leader changed" per etcd leader hand-over the runs' `outputs` report, one per
    /// member stopped or removed since the start (`without_etcd_churn`).
    fn assert_no_failure(self, what: &str, lab: &Lab, balancers: &[&str], outputs: &[&str]) {
        std::thread::sleep(Duration::from_secs(1));
        let secs = self.t.elapsed().as_secs_f64();
        let stops = self.etcd.stops(lab);
        let (ok, failed) = self.read.finish_after(outputs, stops);
        let (node_ok, node_failed) = self.node.finish(handovers(outputs), stops);
        eprintln!(
            "{what}: {secs:.1}s; probe with admin.conf: {ok} reads, {} failed; through h2's local proxy: {node_ok} reads ({:.1}/s), {} failed",
            failed.len(),
            node_ok as f64 / secs,
            node_failed.len()
        );
        assert!(
            ok > 20 && node_ok > 20,
            "the probes barely ran: {ok}, {node_ok}"
        );
        assert!(
            failed.is_empty() && node_failed.is_empty(),
            "{what}: reads failed: admin.conf: {failed:?}\nh2's local proxy: {node_failed:?}\n{}",
            balancer_events(lab, balancers)
        );
    }
}

fn cp(h: &Host) -> Host {
    let mut h = h.clone();
    h.roles = vec![Role::Etcd, Role::ControlPlane];
    h
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn control_plane_grows_1_3_5_and_shrinks_without_a_failed_request() {
    let lab = Lab::up_profile("members", 6, "k8s");
    let bundle = lab_bundle();
    let mut inv: Inventory = lab.inventory_with_bundle(&bundle);
    inv.spec.ha.mode = HaMode::LocalProxy;
    inv.spec.ha.vip = None;
    let all: Vec<Host> = inv.spec.hosts.clone();
    inv.spec.hosts = vec![cp(&all[0]), {
        let mut w = all[1].clone();
        w.roles = vec![Role::Worker];
        w
    }];
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let inv_arg = inv_path.to_str().unwrap();
    let cluster = inv.name().to_string();
    let admin: PathBuf = lab.dir.join(format!("clusters/{cluster}/admin.conf"));
    let t = Instant::now();
    run_report(&["-i", inv_arg, "-o", "json", "init"]);
    let init_secs = t.elapsed().as_secs_f64();
    let (code, s, _) = status(inv_arg);
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 1);

    // 1 -> 3: h3 and h4 join as control-plane + etcd hosts.
    inv.spec.hosts.push(cp(&all[2]));
    inv.spec.hosts.push(cp(&all[3]));
    lab.write_inventory("inventory.yaml", &inv);
    // The plan says which existing host takes part, and why; etcd's steps are per new host.
    let plan = clusterctl(&["-i", inv_arg, "plan", "--command", "join"]);
    let plan_text = text(&plan);
    assert!(plan.status.success(), "{plan_text}");
    assert!(
        plan_text
            .contains("h1 (in the cluster already): its haproxy takes the new apiserver(s) h3, h4"),
        "{plan_text}"
    );
    assert!(
        plan_text.contains("h3: joins the running etcd cluster: member add --learner"),
        "{plan_text}"
    );
    let etcd_phase = plan_text
        .split("\nphase ")
        .find(|p| p.contains(" etcd: "))
        .unwrap();
    assert!(
        !etcd_phase.contains("  h1 (") && !etcd_phase.contains("  h2 ("),
        "the etcd phase touches no existing host: {etcd_phase}"
    );
    let probes = Probes::start(&lab, &admin, &cluster);
    let before = stamps(&lab, &["h1", "h2"]);
    let cfg_h1 = haproxy_cfg(&lab, "h1");
    // --hosts h3 with only some phases: h3's preparation and certificates, then its member
    // (learner, start, promote); nothing on h1 or h2 is changed or gated.
    let prep = run_report(&[
        "-i",
        inv_arg,
        "-o",
        "json",
        "join",
        "--hosts",
        "h3",
        "--only-phase",
        "preflight,prepare,pki",
    ]);
    for p in prep["phases"].as_array().unwrap() {
        assert_eq!(
            p["hosts"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["h3"],
            "{prep:#}"
        );
    }
    let t = Instant::now();
    let only = run_report(&[
        "-i",
        inv_arg,
        "-o",
        "json",
        "join",
        "--hosts",
        "h3",
        "--only-phase",
        "etcd",
    ]);
    let only_secs = t.elapsed().as_secs_f64();
    let phases = only["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{only:#}");
    assert_eq!(phases[0]["phase"], "etcd");
    assert_eq!(
        phases[0]["hosts"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["h3"],
        "{only:#}"
    );
    assert_eq!(
        stamps(&lab, &["h1", "h2"]),
        before,
        "--hosts h3 touched h1 or h2"
    );
    assert_eq!(haproxy_cfg(&lab, "h1"), cfg_h1);
    let (_, s, _) = status(inv_arg);
    assert_members_healthy(&s, 2);
    assert!(
        !etcd_members(&lab, "h1").contains("true"),
        "no learner left"
    );
    // Then the rest of the join.
    let t = Instant::now();
    let rest = run_report(&["-i", inv_arg, "-o", "json", "join"]);
    let join3_secs = t.elapsed().as_secs_f64();
    probes.assert_no_failure(
        "1 -> 3",
        &lab,
        &["h1", "h2"],
        &[&only.to_string(), &rest.to_string()],
    );
    let after = stamps(&lab, &["h1", "h2"]);
    // h1 and h2: the same etcd, apiserver, kubelet, haproxy processes; only haproxy.cfg
    // changed (two new backends, taken by a reload).
    assert_eq!(after, before, "an existing unit restarted during the join");
    assert_ne!(
        haproxy_cfg(&lab, "h1"),
        cfg_h1,
        "h1's haproxy has no new backend"
    );
    let cfg = lab.exec_ok("h2", "cat /etc/haproxy/haproxy.cfg");
    for h in ["h1", "h3", "h4"] {
        assert!(cfg.contains(&format!("server {h} ")), "{cfg}");
    }
    let (code, s, _) = status(inv_arg);
    eprintln!("status after 1 -> 3: {s:#}");
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 3);
    assert_eq!(member_names(&s), ["h1", "h3", "h4"]);
    assert_eq!(s["apiservers"].as_array().unwrap().len(), 3);
    assert!(
        s["apiservers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["ready"] == true),
        "{s:#}"
    );
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{s:#}");
    assert!(nodes.iter().all(|n| n["ready"] == true), "{s:#}");
    // Each apiserver serves its own certificate: h3's names h3, not h4.
    let h3_cert = lab.exec_ok(
        "h3",
        "openssl x509 -in /etc/kubernetes/pki/apiserver.crt -noout -ext subjectAltName",
    );
    assert!(
        h3_cert.contains(&lab.ip("h3")) && !h3_cert.contains(&lab.ip("h4")),
        "{h3_cert}"
    );

    // 3 -> 5, the first join killed right after its `member add`.
    let probes = Probes::start(&lab, &admin, &cluster);
    let before = stamps(&lab, &["h1", "h2", "h3", "h4"]);
    inv.spec.hosts.push(cp(&all[4]));
    inv.spec.hosts.push(cp(&all[5]));
    lab.write_inventory("inventory.yaml", &inv);
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["-i", inv_arg, "join"])
        .env("CI", "true")
        .env("CLUSTERCTL_TEST_ABORT_AFTER_MEMBER_ADD", "1")
        .output()
        .unwrap();
    eprintln!("the killed join:\n{}", text(&killed));
    assert!(!killed.status.success());
    assert!(
        text(&killed).contains("aborting right after member add of h5"),
        "{}",
        text(&killed)
    );
    let list = etcd_members(&lab, "h1");
    eprintln!("members after the killed join:\n{list}");
    assert!(
        list.contains("unstarted") && list.contains("true"),
        "a learner added, not started: {list}"
    );
    let t = Instant::now();
    let resumed = run_report(&["-i", inv_arg, "-o", "json", "join"]);
    let join5_secs = t.elapsed().as_secs_f64();
    assert!(
        resumed
            .to_string()
            .contains("never started: starting it, not adding it again"),
        "{resumed:#}"
    );
    probes.assert_no_failure(
        "3 -> 5 (resumed)",
        &lab,
        &["h1", "h2"],
        &[&text(&killed), &resumed.to_string()],
    );
    let after = stamps(&lab, &["h1", "h2", "h3", "h4"]);
    // Only haproxy configs changed; the processes are the same.
    assert_eq!(after, before, "an existing unit restarted during the join");
    let (code, s, _) = status(inv_arg);
    assert_eq!(code, 0, "{s:#}");
    assert_members_healthy(&s, 5);
    assert_eq!(member_names(&s), ["h1", "h3", "h4", "h5", "h6"]);
    assert!(
        !etcd_members(&lab, "h1").contains("true"),
        "no learner left"
    );
    let again = clusterctl(&["-i", inv_arg, "join"]);
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));

    // 5 -> 4: reset of the control-plane + etcd host h6.
    let probes = Probes::start(&lab, &admin, &cluster);
    let t = Instant::now();
    let out = clusterctl(&["-i", inv_arg, "reset", "--hosts", "h6", "--yes"]);
    let reset_secs = t.elapsed().as_secs_f64();
    eprintln!("reset h6 ({reset_secs:.1}s):\n{}", text(&out));
    assert!(out.status.success(), "{}", text(&out));
    probes.assert_no_failure("reset of h6", &lab, &["h1", "h2"], &[&text(&out)]);
    // Its apiserver left every balancer that stays (a reload there, no restart).
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        let cfg = lab.exec_ok(h, "cat /etc/haproxy/haproxy.cfg");
        assert!(
            !cfg.lines()
                .any(|l| l.trim_start().starts_with("server h6 ")),
            "{h}'s haproxy still has h6 as a backend:\n{cfg}"
        );
    }
    let (_, s, _) = status(inv_arg);
    assert_members_healthy(&s, 4);
    assert_eq!(member_names(&s), ["h1", "h3", "h4", "h5"]);

    // h1 powered off: status still reads the cluster through another apiserver, and the
    // kubectl context of another apiserver answers.
    lab.stop_host("h1");
    let (code, s, status_secs) = status(inv_arg);
    eprintln!("status with h1 off ({status_secs:.1}s): {s:#}");
    assert_eq!(code, 1, "h1 is down: a problem");
    let nodes = s["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("nodes unknown: {s:#}"));
    assert!(nodes.len() >= 4, "{s:#}");
    assert_eq!(s["endpoint"]["ready"], true, "{s:#}");
    let ms = s["etcd"]["members"].as_array().unwrap();
    assert_eq!(
        ms.iter().filter(|m| m["healthy"] == true).count(),
        3,
        "{s:#}"
    );
    let o = run(std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&admin)
        .args(["--context", &format!("{cluster}-h3"), "get", "nodes"]));
    assert!(o.status.success(), "{}", text(&o));
    eprintln!(
        "timings: init {init_secs:.1}s, join --hosts h3 --only-phase etcd {only_secs:.1}s, the rest of 1 -> 3 {join3_secs:.1}s, 3 -> 5 resumed {join5_secs:.1}s, reset {reset_secs:.1}s"
    );
}
