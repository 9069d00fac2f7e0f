//! `renew-certs --all` end to end on real nspawn hosts (k8s profile): 3 control-plane hosts
//! (etcd on them) behind a keepalived VIP + 2 workers. While it runs, a probe reads `/readyz`
//! and a ConfigMap through the VIP every 100 ms. Afterwards every etcd, apiserver and kubelet
//! endpoint serves a new serial (the one of the local PKI), the probe counted no failure, and a
//! running pod's container was not restarted. Then `certs check-expiration --hosts` reads the
//! files on the hosts and what they serve, and flags a file the endpoint has not loaded.
//!
//! Then the CAs are rotated on the same cluster ([`rotate_cas`]): `renew-certs --ca trust`,
//! `reissue`, `finish`, with the probe (and a pod's service-account token) through the VIP.
//!
//! etcd's members restart leader last, the leadership handed to a restarted member first: the
//! raft term rises by exactly one over the whole renewal, and the probe accepts at most one
//! "leader changed" answer, for that reported hand-over.
//!
//! On the same cluster, the chaos test of the crash-safe engine ([`chaos`]): runs that change
//! an apiserver flag on every control-plane host, or re-issue the apiserver certificates, are
//! killed with SIGKILL in the middle of the roll, each followed by a plain re-run. Then a
//! bundle image removed from a node is flagged by `status` and back after `init`
//! ([`lost_image_comes_back`]), and the VIP holder powered off and back moves the VIP once
//! ([`vip_moves_once`]).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clusterctl::phases::certs::endpoints;
use common::chaos::*;
use common::*;

/// The issue's probe: through the cluster endpoint, `GET /readyz` and a GET of a ConfigMap,
/// every 100 ms, counting requests and failures.
struct VipProbe {
    stop: Arc<AtomicBool>,
    /// (requests, failures with the Unix second they happened in).
    handle: std::thread::JoinHandle<(usize, Vec<(u64, String)>)>,
}

impl VipProbe {
    fn start(admin: &Path) -> VipProbe {
        VipProbe::with_token(admin, None)
    }

    /// With `token`, a kubeconfig holding a pod's service-account token: each round also
    /// reads `/api` with it (200 only when the apiserver accepts the token; it skips TLS
    /// verification, which the admin requests check).
    fn with_token(admin: &Path, token: Option<&Path>) -> VipProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, admin) = (stop.clone(), admin.to_path_buf());
        let token = token.map(Path::to_path_buf);
        let handle = std::thread::spawn(move || {
            let (mut n, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut rounds = vec![
                    (&admin, &["get", "--raw", "/readyz"][..]),
                    (
                        &admin,
                        &[
                            "get",
                            "--raw",
                            "/api/v1/namespaces/default/configmaps/probe",
                        ][..],
                    ),
                ];
                if let Some(t) = &token {
                    rounds.push((t, &["get", "--raw", "/api"][..]));
                }
                for (kc, args) in rounds {
                    n += 1;
                    let o = kubectl(kc, args);
                    if !o.status.success() {
                        // The time of day (UTC), to find the step in the run's log.
                        let unix = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let secs = unix % 86400;
                        failed.push((
                            unix,
                            format!(
                                "{:02}:{:02}:{:02} {}: {}",
                                secs / 3600,
                                secs / 60 % 60,
                                secs % 60,
                                args.join(" "),
                                text(&o)
                            ),
                        ));
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
            (n, failed)
        });
        VipProbe { stop, handle }
    }

    /// (requests, failures), but the answers etcd's churn accounts for (`without_etcd_churn`):
    /// one "leader changed" per etcd leader hand-over the runs' `outputs` report (a roll that
    /// must restart the leading member hands its leadership over first, and etcd fails the
    /// reads pending at that instant), and one per etcd member stopped since `etcd` was read
    /// (a request in flight to a member that stops fails). `/readyz` withholds why its etcd
    /// check failed: each such failure gets the reasons the apiservers logged then
    /// ([`with_logged_etcd_reasons`]), so it counts whichever of the probe's requests met
    /// the churn, and any other cause is printed.
    fn finish(self, lab: &Lab, outputs: &[&str], etcd: &EtcdProcesses) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (n, failed) = self.handle.join().unwrap();
        let failed = with_logged_etcd_reasons(lab, &["h1", "h2", "h3"], failed);
        (
            n,
            without_etcd_churn(failed, handovers(outputs), etcd.stops(lab)),
        )
    }
}

/// `certs check-expiration --hosts HOSTS -o json`: (exit 0, the report).
fn check_expiration(inv: &str, hosts: &str) -> (bool, serde_json::Value) {
    let o = clusterctl(&[
        "-i",
        inv,
        "-o",
        "json",
        "certs",
        "check-expiration",
        "--hosts",
        hosts,
    ]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)));
    (o.status.success(), v)
}

/// Each web pod's container: (pod, container ID, restart count).
fn containers(admin: &Path) -> Vec<(String, String, u64)> {
    let v = kubectl_json(admin, &["get", "pods", "-l", "app=web"]);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let c = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                c["containerID"].as_str().unwrap_or_default().to_string(),
                c["restartCount"].as_u64().unwrap_or(99),
            )
        })
        .collect()
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn renew_all_certificates_without_dropping_a_request() {
    // RENEW_LAB: another lab name, to run this beside another copy of it.
    let name = std::env::var("RENEW_LAB").unwrap_or_else(|_| "renew".into());
    let lab = Lab::up_profile(&name, 5, "k8s");
    let bundle = lab_bundle();
    let inv = lab.vip_inventory(&bundle);
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let inv_arg = inv_path.to_str().unwrap();
    let state = lab.dir.join("clusters").join(inv.name());
    let admin = state.join("admin.conf");
    run_report(&["-i", inv_arg, "-o", "json", "init"]);
    check_web_workload(&lab, &admin, &bundle);
    apply(
        &admin,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe, namespace: default}\ndata: {k: v}\n",
    );
    let pods_before = containers(&admin);
    assert_eq!(pods_before.len(), 4, "{pods_before:?}");

    let pki = state.join("pki");
    let eps = endpoints(&inv, &pki);
    // 3 × (etcd client, etcd peer, apiserver) + 5 kubelets
    assert_eq!(eps.len(), 14, "{eps:?}");
    let before = served(&eps);
    for (ep, (s, f)) in &before {
        assert!(s.is_some() && s == f, "{ep}: serves {s:?}, PKI holds {f:?}");
    }

    let etcd_before: std::collections::BTreeMap<&str, String> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| (h, etcd_started(&lab, h)))
        .collect();
    let etcd = EtcdProcesses::read(&lab, &["h1", "h2", "h3"]);
    let probe = VipProbe::start(&admin);
    std::thread::sleep(Duration::from_secs(2));
    let (term_before, leader_before) = etcd_term_and_leader(&lab, &inv);
    let t = Instant::now();
    let report = run_report(&["-i", inv_arg, "-o", "json", "renew-certs", "--all"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (term_after, leader_after) = etcd_term_and_leader(&lab, &inv);
    let (requests, failures) = probe.finish(&lab, &[&report.to_string()], &etcd);
    eprintln!(
        "etcd: raft term {term_before} -> {term_after}, leader {leader_before} -> {leader_after}"
    );
    // Exactly one leader change in the roll: the transfer right before the leader restarted
    // (every election and every transfer raises the term by one).
    assert_eq!(
        term_after,
        term_before + 1,
        "etcd leader changes during renew-certs"
    );
    assert_ne!(leader_after, leader_before, "the leader was restarted too");
    let moved: Vec<String> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phase"] == "certs-etcd")
        .flat_map(|p| p["hosts"].as_object().unwrap().values())
        .flat_map(|h| h["warnings"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w.as_str().map(str::to_string))
        .filter(|w| w.contains("leadership moved"))
        .collect();
    assert_eq!(
        moved,
        [format!(
            "etcd: leadership moved from {leader_before} to {leader_after}"
        )],
        "one hand-over, from the member that restarted last"
    );
    eprintln!(
        "renew-certs --all: {:.1} s; probe: {requests} requests, {} failures",
        took.as_secs_f64(),
        failures.len()
    );
    for p in report["phases"].as_array().unwrap() {
        eprintln!(
            "  {:<26} {:>6.1} s",
            p["phase"].as_str().unwrap(),
            p["seconds"].as_f64().unwrap()
        );
    }
    assert!(requests > 100, "the probe ran: {requests}");
    assert!(
        failures.is_empty(),
        "{} probe failures: {failures:#?}",
        failures.len()
    );

    // Every endpoint serves a new serial, the one the local PKI now holds.
    let after = served(&eps);
    for (ep, (s, f)) in &after {
        assert!(s.is_some() && s == f, "{ep}: serves {s:?}, PKI holds {f:?}");
        assert_ne!(s, &before[ep].0, "{ep}: still the old serial");
    }
    // The steps went in the safe order, restarting each component one host at a time.
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "certs-renew",
            "certs-etcd",
            "certs-apiserver",
            "certs-controller-manager",
            "certs-scheduler",
            "certs-nodes",
            "certs-served"
        ]
    );
    let restarted = |phase: &str, host: &str| -> Vec<String> {
        let p = report["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == phase)
            .unwrap();
        let mut v: Vec<String> = p["hosts"][host]["restarts"]
            .as_array()
            .map(|a| a.iter().map(|u| u.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    for h in ["h1", "h2", "h3"] {
        assert_eq!(restarted("certs-etcd", h), ["etcd.service"], "{h}");
        assert_ne!(
            etcd_started(&lab, h),
            etcd_before[h],
            "{h}: etcd not restarted"
        );
    }
    assert_eq!(
        restarted("certs-apiserver", "h3"),
        ["kube-apiserver.service"]
    );
    assert_eq!(
        restarted("certs-nodes", "h4"),
        ["kube-proxy.service", "kubelet.service"]
    );
    // Running containers were not restarted.
    assert_eq!(containers(&admin), pods_before);
    // The old files are backed up; the renewal is recorded as finished.
    let renewal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("renewal.json")).unwrap()).unwrap();
    assert_eq!(renewal["finished"], true, "{renewal}");

    // A re-run with nothing selected to renew... is a new renewal: not tested here; a re-run
    // of `init` instead must change nothing (the hosts hold exactly the local PKI).
    let again = run_report(&["-i", inv_arg, "-o", "json", "init", "--only-phase", "pki"]);
    let (files, _, restarts) = totals(&again);
    assert_eq!(
        (files, restarts),
        (0, 0),
        "init after renew-certs changed hosts"
    );

    rotate_cas(&lab, &inv, inv_arg, &state, &admin);

    let current = chaos(&lab, &inv, &state);

    // check-expiration over SSH and TLS: all current; then a file replaced on a host without
    // a restart is flagged as not loaded.
    let (ok, v) = check_expiration(inv_arg, "h1,h4");
    assert!(ok, "{v}");
    let stale: Vec<&serde_json::Value> = v["served"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["current"] != true)
        .collect();
    assert!(stale.is_empty(), "{stale:#?}");
    let files = v["hostFiles"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["host"] == "h4" && f["path"] == "/var/lib/kubelet/pki/kubelet.crt"),
        "{files:#?}"
    );
    assert!(
        files.iter().all(|f| f["matchesLocal"] == true),
        "{files:#?}"
    );
    // Renew the kubelet's certificate locally only (`certs-renew` alone): h4's file is then
    // older than the PKI, and after copying it without a restart, newer than what is served.
    let o = clusterctl(&[
        "-i",
        inv_arg,
        "renew-certs",
        "--component",
        "kubelet",
        "--hosts",
        "h4",
        "--only-phase",
        "certs-renew",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (ok, v) = check_expiration(inv_arg, "h4");
    assert!(!ok, "a stale host file must fail the check: {v}");
    assert!(
        v["hostFiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/var/lib/kubelet/pki/kubelet.crt" && f["matchesLocal"] == false),
        "{v}"
    );
    let local = std::fs::read(pki.join("nodes/h4/kubelet.crt")).unwrap();
    // Copied in place without restarting anything.
    let _ = lab.exec_ok(
        "h4",
        &format!(
            "cat > /var/lib/kubelet/pki/kubelet.crt <<'EOF'\n{}EOF",
            String::from_utf8_lossy(&local)
        ),
    );
    let (ok, v) = check_expiration(inv_arg, "h4");
    assert!(!ok, "a renewal not yet loaded must fail the check: {v}");
    let kubelet = v["served"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["what"] == "kubelet")
        .unwrap();
    assert_eq!(kubelet["loaded"], false, "{kubelet}");
    assert_eq!(
        kubelet["fileOnHostSerial"], kubelet["fileSerial"],
        "{kubelet}"
    );

    lost_image_comes_back(&lab, &current);
    vip_moves_once(&lab, &admin);
}

/// etcd's main PID and the time its unit last became active on `host`.
fn etcd_started(lab: &Lab, host: &str) -> String {
    lab.exec_ok(
        host,
        "systemctl show -p MainPID -p ActiveEnterTimestampMonotonic etcd.service",
    )
}

/// The etcd cluster's raft term (the highest a member reports: every election and every
/// leadership transfer raises it by one) and the name of the host whose member leads.
fn etcd_term_and_leader(lab: &Lab, inv: &clusterctl::inventory::Inventory) -> (u64, String) {
    let h1 = inv.host("h1").unwrap();
    let cmd = clusterctl::phases::etcd::etcdctl(h1)
        .args([
            "--command-timeout=5s",
            "endpoint",
            "status",
            "--cluster",
            "-w",
            "json",
        ])
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&lab.exec_ok("h1", &cmd)).unwrap();
    let mut term = 0;
    let mut leader = String::new();
    for ep in v.as_array().unwrap() {
        let st = &ep["Status"];
        let t = st["raftTerm"]
            .as_u64()
            .or(st["header"]["raft_term"].as_u64());
        term = term.max(t.unwrap_or_else(|| panic!("no raft term in {ep}")));
        if st["leader"] == st["header"]["member_id"] {
            let url = ep["Endpoint"].as_str().unwrap();
            leader = inv
                .spec
                .hosts
                .iter()
                .find(|h| url.contains(&format!("//{}:", h.address)))
                .map(|h| h.name.to_string())
                .unwrap();
        }
    }
    assert!(!leader.is_empty(), "no leader in {v}");
    (term, leader)
}

/// A bundle image removed from a node's containerd (as the kubelet's image GC would): the
/// kubelet keeps image GC off by default, `status` flags the node, and a plain `init` (its
/// runtime phase) imports the image again from the bundle.
fn lost_image_comes_back(lab: &Lab, inv_path: &Path) {
    let inv_arg = inv_path.to_str().unwrap();
    let config = lab.exec_ok("h4", "cat /var/lib/kubelet/config.yaml");
    assert!(
        config.contains("imageGCHighThresholdPercent: 100"),
        "{config}"
    );
    let listed = lab.exec_ok("h4", "ctr -n k8s.io images ls -q");
    let image = listed
        .lines()
        .find(|l| l.contains("/pause:"))
        .unwrap_or_else(|| panic!("no pause image on h4: {listed}"))
        .to_string();
    lab.exec_ok("h4", &format!("ctr -n k8s.io images rm {image} >/dev/null"));
    let o = clusterctl(&["-i", inv_arg, "-o", "json", "status"]);
    assert!(!o.status.success(), "status must flag the missing image");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missingImages"]["h4"], serde_json::json!([image]), "{v}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains(&image)),
        "{v}"
    );
    run_report(&["-i", inv_arg, "-o", "json", "init"]);
    let listed = lab.exec_ok("h4", "ctr -n k8s.io images ls -q");
    assert!(
        listed.lines().any(|l| l == image),
        "{image} is back: {listed}"
    );
    let o = clusterctl(&["-i", inv_arg, "-o", "json", "status"]);
    assert!(o.status.success(), "status after init: {}", text(&o));
}

/// The issue's failover: the VIP holder powers off, the VIP moves; it comes back, and the VIP
/// stays where it went (keepalived BACKUP everywhere, nopreempt). keepalived's logs on the
/// three balancers show one transition to MASTER in all.
fn vip_moves_once(lab: &Lab, admin: &Path) {
    let holder = vip_holder(lab).expect("someone holds the VIP");
    let since = lab.exec_ok("h1", "date +%s");
    // A second apart from the last transition before it, for journalctl --since.
    std::thread::sleep(Duration::from_secs(1));
    lab.stop_host(&holder);
    let others: Vec<&str> = ["h1", "h2", "h3"]
        .into_iter()
        .filter(|h| *h != holder)
        .collect();
    let new = eventually(Duration::from_secs(15), || {
        vip_holder(lab).filter(|h| *h != holder)
    })
    .expect("the VIP did not move");
    eprintln!("VIP moved from {holder} to {new}");
    lab.start_host(&holder);
    // Back, with keepalived running long enough to have taken the VIP back if it would
    // (advert_int 1 s; a backup claims it after ~3 s without adverts).
    eventually(Duration::from_secs(60), || {
        lab.exec(&holder, "systemctl is-active keepalived")
            .status
            .success()
            .then_some(())
    })
    .expect("keepalived did not start again on the former holder");
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        vip_holder(lab).as_deref(),
        Some(new.as_str()),
        "the VIP must stay on {new}"
    );
    let mut moves = 0;
    for h in others.iter().copied().chain([holder.as_str()]) {
        let log = lab.exec_ok(
            h,
            &format!("journalctl -u keepalived --since @{since} --no-pager -o cat"),
        );
        let n = log.matches("Entering MASTER STATE").count();
        eprintln!("{h}: keepalived entered MASTER {n} time(s) since the power-off");
        moves += n;
    }
    assert_eq!(moves, 1, "one VIP move in keepalived's logs");
    assert!(
        eventually(Duration::from_secs(30), || {
            kubectl(admin, &["get", "--raw", "/readyz"])
                .status
                .success()
                .then_some(())
        })
        .is_some(),
        "the API answers through the VIP"
    );
}

/// The chaos test: a probe reads through the VIP at 10 Hz while three runs are killed with
/// SIGKILL at three points of a roll of the apiservers, each followed by a plain `init`:
/// 1. a changed flag, killed once h1's pending record appears (its files are being written,
///    its apiserver not yet restarted);
/// 2. another value, killed while h1's backend is drained on a balancer;
/// 3. a new SAN (the apiserver certificates re-issued), killed while h1's gate waits for its
///    new apiserver.
///
/// After every re-run: each managed unit started after the newest file it loads, no backend
/// is out of rotation on any balancer (runtime API) and `status` is healthy, the journal shows
/// the resumed work on h1, and the probe has counted no failed read.
///
/// Returns the inventory the cluster now runs.
fn chaos(lab: &Lab, inv: &clusterctl::inventory::Inventory, state: &Path) -> std::path::PathBuf {
    let journal = state.join("journal.jsonl");
    let admin = &state.join("admin.conf");
    let lines = || std::fs::read_to_string(&journal).unwrap().lines().count();
    // The runs so far finished their work: no host owes anything.
    for h in ["h1", "h2", "h3", "h4", "h5"] {
        let left = lab.exec_ok(h, "ls -A /var/lib/clusterctl/pending 2>/dev/null; true");
        assert!(left.trim().is_empty(), "{h}: pending record left: {left}");
    }
    let etcd = EtcdProcesses::read(lab, &["h1", "h2", "h3"]);
    let probe = VipProbe::start(admin);
    let pending = "/var/lib/clusterctl/pending/unit@kube-apiserver.service";
    let has = |h: &str, cmd: &str| lab.exec(h, cmd).status.success();
    let mut changed = inv.clone();
    type Step<'a> = (
        &'a str,
        Box<dyn Fn(&mut clusterctl::inventory::Inventory) + 'a>,
    );
    let steps: Vec<Step> = vec![
        (
            "after h1's files were written, before its restart",
            Box::new(|i| {
                i.spec.control_plane.apiserver_extra_args.insert(
                    "default-watch-cache-size".parse().unwrap(),
                    "201".parse().unwrap(),
                );
            }),
        ),
        (
            "while h1 is drained",
            Box::new(|i| {
                i.spec.control_plane.apiserver_extra_args.insert(
                    "default-watch-cache-size".parse().unwrap(),
                    "202".parse().unwrap(),
                );
            }),
        ),
        (
            "while h1's gate waits",
            Box::new(|i| {
                i.spec
                    .pki
                    .extra_sans
                    .push("chaos.example.internal".parse().unwrap())
            }),
        ),
    ];
    for (round, (what, change)) in steps.iter().enumerate() {
        change(&mut changed);
        let path = lab.write_inventory(&format!("inventory-chaos{round}.yaml"), &changed);
        let inv_arg = path.to_str().unwrap();
        let from = lines();
        let pid_before = lab.exec_ok("h1", "systemctl show -P MainPID kube-apiserver");
        let moment: Box<dyn Fn() -> bool> = match round {
            0 => Box::new(|| has("h1", &format!("test -e {pending}"))),
            1 => Box::new(|| {
                backends(lab)
                    .iter()
                    .any(|(_, s, admin, _)| s == "h1" && admin & 0x08 != 0)
            }),
            _ => Box::new(|| {
                let waits = has(
                    "h1",
                    &format!(
                        "test -e {pending} && p=$(systemctl show -P MainPID kube-apiserver) && [ \"$p\" != 0 ] && [ \"$p\" != {} ]",
                        pid_before.trim()
                    ),
                );
                if waits {
                    // Meanwhile a second run is refused at once, naming the first.
                    let o = clusterctl(&["-i", inv_arg, "init"]);
                    assert!(!o.status.success(), "a concurrent run must be refused");
                    for want in ["held by", "`clusterctl init`", "ago"] {
                        assert!(text(&o).contains(want), "{want:?} in {}", text(&o));
                    }
                }
                waits
            }),
        };
        kill_when(
            &["-i", inv_arg, "init"],
            std::path::Path::new(&format!("{inv_arg}.killed.log")),
            what,
            moment,
        );
        eprintln!(
            "chaos: h1 after the kill: pending record {:?}",
            String::from_utf8_lossy(&lab.exec("h1", "ls /var/lib/clusterctl/pending").stdout)
        );
        let t = Instant::now();
        let report = run_report(&["-i", inv_arg, "-o", "json", "init"]);
        eprintln!("chaos: re-run {:.1}s", t.elapsed().as_secs_f64());
        let files = unit_files(inv_arg);
        let n = assert_units_run_their_files(lab, &files);
        assert!(n >= 15, "units checked: {n}");
        assert_nothing_drained(lab, inv_arg);
        let resumed = resumed_in_journal(&journal, from, "h1");
        eprintln!("chaos: resumed on h1: {resumed:#?}");
        assert!(
            !resumed.is_empty(),
            "the journal shows no resumed work on h1"
        );
        for h in ["h1", "h2", "h3"] {
            let left = lab.exec_ok(h, "ls -A /var/lib/clusterctl/pending 2>/dev/null; true");
            assert!(left.trim().is_empty(), "{h}: pending record left: {left}");
        }
        // Every control-plane host runs the new apiserver flags.
        if round < 2 {
            for h in ["h1", "h2", "h3"] {
                let cmd = lab.exec_ok(
                    h,
                    "cat /proc/$(systemctl show -P MainPID kube-apiserver)/cmdline | tr '\\0' ' '",
                );
                assert!(
                    cmd.contains(&format!("--default-watch-cache-size=20{}", round + 1)),
                    "{h}: {cmd}"
                );
            }
        }
        let _ = report;
    }
    // A run marker left by another machine refuses the next run, naming its owner; once that
    // run is known to be gone, --break-lock takes over.
    let path = lab.write_inventory("inventory-chaos2.yaml", &changed);
    let inv_arg = path.to_str().unwrap();
    lab.exec_ok(
        "h2",
        r#"printf '%s\n' '{"id":"elsewhere-1","command":"upgrade","pid":77,"machine":"ops-laptop","machine_id":"not-this-one","user":"alice","started":"2026-12-04T20:00:00Z","started_unix":1796414400}' > /var/lib/clusterctl/run.lock"#,
    );
    let o = clusterctl(&["-i", inv_arg, "init"]);
    assert!(!o.status.success(), "a foreign marker must refuse the run");
    for want in [
        "h2",
        "`clusterctl upgrade`",
        "alice on ops-laptop",
        "--break-lock",
    ] {
        assert!(text(&o).contains(want), "{want:?} in {}", text(&o));
    }
    let again = run_report(&["-i", inv_arg, "-o", "json", "--break-lock", "init"]);
    let (files, _, restarts) = totals(&again);
    assert_eq!((files, restarts), (0, 0), "nothing left to do");
    assert!(
        !has("h2", "test -e /var/lib/clusterctl/run.lock"),
        "the run released its markers"
    );
    let (requests, failures) = probe.finish(lab, &[], &etcd);
    eprintln!(
        "chaos: probe {requests} requests, {} failures",
        failures.len()
    );
    assert!(requests > 100, "{requests}");
    assert!(failures.is_empty(), "{failures:#?}");
    path
}

/// `renew-certs --ca trust`, then `reissue`, then `finish` on the running cluster, with the
/// probe through the VIP at 10 Hz plus a pod's service-account token read with every round:
/// no failed request, the workload's containers not restarted, every endpoint finally serving
/// a leaf of the new CAs and no trust bundle (on the hosts, in the kubeconfigs) naming an old
/// CA. `finish` is refused while endpoints serve old-CA leaves (checked right after `trust`).
fn rotate_cas(
    lab: &Lab,
    inv: &clusterctl::inventory::Inventory,
    inv_arg: &str,
    state: &Path,
    admin: &Path,
) {
    use clusterctl::pki::rotation;
    let pki = state.join("pki");
    let eps = endpoints(inv, &pki);
    let pods_before = containers(admin);
    let bundle_of = |rel: &str| {
        rotation::certificates(&std::fs::read_to_string(pki.join(rel)).unwrap()).unwrap()
    };
    let old_cas: Vec<Vec<u8>> = ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"]
        .iter()
        .map(|r| bundle_of(r).remove(0))
        .collect();
    let sa_before = std::fs::read(pki.join("sa.key")).unwrap();

    // A web pod's token, used through the VIP with every probe round.
    let pod = &pods_before[0].0;
    let token = kubectl_ok(
        admin,
        &[
            "exec",
            pod,
            "--",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ],
    );
    let server = clusterctl::pki::kubeconfig::Kubeconfig::from_yaml(
        &std::fs::read_to_string(admin).unwrap(),
        "admin.conf",
    )
    .unwrap()
    .clusters[0]
        .cluster
        .server
        .clone();
    let token_kc = lab.dir.join("pod-token.conf");
    std::fs::write(
        &token_kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: pod, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: pod}}}}]\ncurrent-context: c\n",
            token.trim()
        ),
    )
    .unwrap();
    let o = kubectl(&token_kc, &["get", "--raw", "/api"]);
    assert!(o.status.success(), "the pod's token before: {}", text(&o));

    // Certificates (or CA data) on a host: how many, and whether an old CA is among them.
    let on_host = |host: &str, what: &str| -> Vec<Vec<u8>> {
        let cmd = if what.ends_with(".conf") {
            format!("sed -n 's/^ *certificate-authority-data: *//p' {what} | base64 -d")
        } else {
            format!("cat {what}")
        };
        rotation::certificates(&lab.exec_ok(host, &cmd)).unwrap()
    };
    let host_bundles = [
        ("h1", "/etc/kubernetes/pki/ca.crt"),
        ("h1", "/etc/kubernetes/pki/etcd/ca.crt"),
        ("h1", "/etc/kubernetes/pki/front-proxy-ca.crt"),
        ("h1", "/etc/kubernetes/controller-manager.conf"),
        ("h2", "/etc/kubernetes/admin.conf"),
        ("h3", "/etc/kubernetes/scheduler.conf"),
        ("h4", "/etc/kubernetes/pki/ca.crt"),
        ("h4", "/etc/kubernetes/kubelet.conf"),
        ("h5", "/etc/kubernetes/kube-proxy.conf"),
    ];

    let etcd = EtcdProcesses::read(lab, &["h1", "h2", "h3"]);
    let probe = VipProbe::with_token(admin, Some(&token_kc));
    let mut took = Vec::new();
    let mut outputs = Vec::new();
    for stage in ["trust", "reissue", "finish"] {
        let mut issued = None;
        if stage == "reissue" {
            // Killed once the first apiserver took its new certificate: the re-run resumes
            // the stage, issuing nothing again.
            let log = lab.dir.join("ca-reissue.killed.log");
            kill_when(
                &["-i", inv_arg, "renew-certs", "--ca", "reissue"],
                &log,
                "after the first apiserver's turn",
                || {
                    std::fs::read_to_string(&log).is_ok_and(|t| {
                        t.lines().any(|l| {
                            l.contains("certs-apiserver h") && l.contains("file(s) written")
                        })
                    })
                },
            );
            let st = rotation::read_state(&pki).unwrap().unwrap();
            assert!(
                st.stage == rotation::Stage::Reissue && !st.finished,
                "{st:?}"
            );
            issued = Some(served(&eps));
            outputs.push(std::fs::read_to_string(&log).unwrap_or_default());
        }
        // (reissue: the resumed run's time)
        let t = Instant::now();
        let report = run_report(&["-i", inv_arg, "-o", "json", "renew-certs", "--ca", stage]);
        if let Some(before) = issued {
            let after = served(&eps);
            for (ep, (_, f)) in &after {
                assert_eq!(f, &before[ep].1, "{ep}: re-issued again by the resumed run");
            }
        }
        took.push((stage, t.elapsed()));
        outputs.push(report.to_string());
        let (files, _, restarts) = totals(&report);
        eprintln!(
            "renew-certs --ca {stage}: {:.1} s, {files} files, {restarts} restarts",
            t.elapsed().as_secs_f64()
        );
        for p in report["phases"].as_array().unwrap() {
            eprintln!(
                "  {:<26} {:>6.1} s",
                p["phase"].as_str().unwrap(),
                p["seconds"].as_f64().unwrap()
            );
        }
        let st = rotation::read_state(&pki).unwrap().unwrap();
        assert!(st.finished && st.stage.name() == stage, "{st:?}");
        let rt = tokio::runtime::Runtime::new().unwrap();
        match stage {
            "trust" => {
                for (h, f) in host_bundles {
                    let certs = on_host(h, f);
                    assert_eq!(certs.len(), 2, "{h}:{f} is not old + new");
                    assert!(old_cas.contains(&certs[0]), "{h}:{f}: the old CA first");
                }
                // Leaves are still the old CAs': finish must refuse, naming every endpoint.
                let old = rt.block_on(clusterctl::phases::certs::old_ca_endpoints(inv, &pki));
                assert_eq!(old.len(), eps.len(), "{old:#?}");
                let o = clusterctl(&["-i", inv_arg, "renew-certs", "--ca", "finish"]);
                assert!(
                    !o.status.success(),
                    "finish right after trust: {}",
                    text(&o)
                );
                assert!(text(&o).contains("--ca reissue"), "{}", text(&o));
            }
            "reissue" => {
                let old = rt.block_on(clusterctl::phases::certs::old_ca_endpoints(inv, &pki));
                assert!(old.is_empty(), "endpoints still on an old CA: {old:#?}");
            }
            _ => {}
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (requests, failures) = probe.finish(
        lab,
        &outputs.iter().map(String::as_str).collect::<Vec<_>>(),
        &etcd,
    );
    eprintln!(
        "CA rotation: {} ; probe: {requests} requests (a third with the pod's token), {} failures",
        took.iter()
            .map(|(s, d)| format!("{s} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        failures.len()
    );
    assert!(requests > 100, "the probe ran: {requests}");
    assert!(
        failures.is_empty(),
        "{} probe failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(containers(admin), pods_before, "containers restarted");

    // Every endpoint serves the local PKI's leaf, signed by the new CA of its kind.
    let new_ca = |rel: &str| {
        let b = bundle_of(rel);
        assert_eq!(b.len(), 1, "{rel} still a bundle");
        assert!(!old_cas.contains(&b[0]), "{rel} is an old CA");
        clusterctl::pki::inspect::from_der(&b[0], rel).unwrap()
    };
    let (cluster_ca, etcd_ca) = (new_ca("ca.crt"), new_ca("etcd/ca.crt"));
    new_ca("front-proxy-ca.crt");
    for (ep, (s, f)) in served(&eps) {
        assert!(s.is_some() && s == f, "{ep}: serves {s:?}, PKI holds {f:?}");
    }
    for e in &eps {
        let leaf = clusterctl::pki::inspect::from_pem(
            &std::fs::read_to_string(&e.local).unwrap(),
            &e.certificate,
        )
        .unwrap();
        let ca = if e.what.starts_with("etcd") {
            &etcd_ca
        } else {
            &cluster_ca
        };
        assert!(
            rotation::signed_by(&leaf, ca),
            "{}: not from the new CA",
            e.certificate
        );
    }
    // No trust bundle names an old CA: on the hosts, and the hosts hold exactly the local PKI.
    for (h, f) in host_bundles {
        let certs = on_host(h, f);
        assert_eq!(certs.len(), 1, "{h}:{f}");
        assert!(
            !old_cas.contains(&certs[0]),
            "{h}:{f} still trusts an old CA"
        );
    }
    let again = run_report(&["-i", inv_arg, "-o", "json", "init", "--only-phase", "pki"]);
    let (files, _, restarts) = totals(&again);
    assert_eq!(
        (files, restarts),
        (0, 0),
        "init after the CA rotation changed hosts"
    );
    // sa.key kept; the old CAs kept locally.
    assert_eq!(std::fs::read(pki.join("sa.key")).unwrap(), sa_before);
    let st = rotation::read_state(&pki).unwrap().unwrap();
    let backup = st.backup.unwrap();
    assert_eq!(
        rotation::certificates(&std::fs::read_to_string(backup.join("old/ca.crt")).unwrap())
            .unwrap(),
        [old_cas[0].clone()]
    );
    // The user's admin.conf was rewritten at each stage: it works with the new CA alone.
    kubectl_ok(admin, &["get", "nodes"]);
}
