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

/// Full API discovery (what every kubectl does) answers without an error, and every
/// registered APIService is Available.
fn assert_discovery_clean(admin: &Path) {
    // A fresh cache directory: kubectl would otherwise answer from its discovery cache.
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = format!("--cache-dir={}", cache.path().display());
    for args in [
        vec!["api-resources", cache_arg.as_str()],
        vec!["get", "pods", "-A", cache_arg.as_str()],
    ] {
        let o = kubectl(admin, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success()
                && !err.contains("couldn't get resource list")
                && !err.contains("unable to retrieve"),
            "kubectl {args:?}: {}",
            text(&o)
        );
    }
    let list = kubectl_json(admin, &["get", "apiservices"]);
    let unavailable: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            !a["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        })
        .map(|a| a["metadata"]["name"].as_str().unwrap_or("?").to_string())
        .collect();
    assert!(
        unavailable.is_empty(),
        "unavailable APIServices: {unavailable:?}"
    );
}

/// `init -o json` with CI unset and stderr going to a file (as `clusterctl init 2>log`): its
/// report and everything it printed.
fn init_to_file(lab: &Lab, inv: &Path) -> (serde_json::Value, Vec<u8>) {
    let log = lab.dir.join("init-piped.log");
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["-i", inv.to_str().unwrap(), "-o", "json", "init"])
        .env_remove("CI")
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    eprintln!(
        "init piped to a file: {:.1}s\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&bytes)
    );
    let report = serde_json::from_slice(&out.stdout).expect("-o json prints the report");
    bytes.extend_from_slice(&out.stdout);
    (report, bytes)
}

fn assert_no_control_characters(bytes: &[u8]) {
    let bad: Vec<(usize, u8)> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| (**b < 0x20 && **b != b'\n' && **b != b'\t') || **b == 0x7f)
        .map(|(i, b)| (i, *b))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "control characters in piped output at {bad:?}: {:?}",
        String::from_utf8_lossy(
            &bytes[bad[0].0.saturating_sub(60)..(bad[0].0 + 60).min(bytes.len())]
        )
    );
    assert!(
        bytes.windows(10).any(|w| w == b" == etcd: "),
        "the plain phase lines are there"
    );
}

/// A live per-host line: `<spinner> <host> <elapsed> <step...>` for a lab host (a host done
/// with the phase has a blank spinner until the phase ends).
fn live_host_line(l: &str) -> bool {
    let t: Vec<&str> = l.split_whitespace().collect();
    let hosts = ["h1", "h2", "h3"];
    let at = |i: usize| {
        t.len() > i + 2
            && hosts.contains(&t[i])
            && t[i + 1].starts_with(|c: char| c.is_ascii_digit())
            && t[i + 1].ends_with('s')
    };
    (t.first().is_some_and(|s| s.chars().count() == 1) && at(1)) || at(0)
}

/// `init` in a 200x50 tmux pane (CI unset): while it runs the screen shows live per-host
/// lines (host, elapsed, step) under the current phase; once it ended, the summary is intact
/// and no live line is left.
fn init_in_tmux(inv: &Path) {
    let socket = format!("clusterctl-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let cmd = format!(
        "env -u CI {} -i {} init; echo clusterctl-exit=$?; sleep 600",
        env!("CARGO_BIN_EXE_clusterctl"),
        inv.display()
    );
    let t = Instant::now();
    let o = tmux(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-s",
        "run",
        &cmd,
    ]);
    assert!(o.status.success(), "tmux: {}", text(&o));
    let mut live_screens = Vec::new();
    let mut hosts_seen = std::collections::BTreeSet::new();
    let screen = loop {
        let s =
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "run"]).stdout).to_string();
        if s.contains("clusterctl-exit=") {
            break s;
        }
        let live: Vec<&str> = s.lines().filter(|l| live_host_line(l)).collect();
        if live.len() >= 2 {
            for l in &live {
                let host = l.split_whitespace().take(2).find(|t| t.starts_with('h'));
                hosts_seen.insert(host.unwrap_or_default().to_string());
            }
            live_screens.push(s.clone());
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "init in tmux did not end:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = tmux(&["kill-server"]);
    eprintln!(
        "init in tmux: {:.1}s, {} screens with live per-host lines; one of them:\n{}\nfinal screen:\n{screen}",
        t.elapsed().as_secs_f64(),
        live_screens.len(),
        live_screens
            .get(live_screens.len() / 2)
            .cloned()
            .unwrap_or_default()
    );
    assert!(screen.contains("clusterctl-exit=0"), "{screen}");
    assert!(
        !live_screens.is_empty(),
        "no live per-host lines were ever on the screen; final screen:\n{screen}"
    );
    assert_eq!(
        hosts_seen.len(),
        3,
        "live lines for every host: {hosts_seen:?}"
    );
    // The step in the engine's words (the command under way follows it).
    assert!(
        live_screens.iter().any(|s| s
            .lines()
            .filter(|l| live_host_line(l))
            .any(|l| l.contains("reading the state of files and services")
                || l.contains("health check")
                || l.contains("check: "))),
        "no live line names a step"
    );
    let summary = screen
        .lines()
        .find(|l| l.starts_with("init: done in "))
        .unwrap_or_else(|| panic!("no summary line:\n{screen}"));
    assert!(
        summary.ends_with("service start(s)/restart(s)"),
        "summary line torn: {summary:?}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("add-on metrics-server: NOT running: skipped: ")),
        "{screen}"
    );
    assert!(
        !screen.lines().any(live_host_line),
        "live lines left after the run:\n{screen}"
    );
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn init_vip_on_the_control_plane_survives_vip_holder_and_apiserver_loss() {
    let lab = Lab::up_profile("initvip", 3, "k8s");
    let inv = vip_inventory(&lab, &[]);
    let inv_path = lab.write_inventory("inventory-vip.yaml", &inv);
    let admin = lab.dir.join("clusters").join(inv.name()).join("admin.conf");
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

    // h3 without zstd, like a minbase or container host: it gets the gzip streams (below).
    lab.exec_ok("h3", "rm /usr/bin/zstd");

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
        // The kubelet phase's speed (issue 17). Lab hosts are no EC2 instances: their
        // kubelets skip the EC2 metadata lookup (6.3 s of every start before).
        assert_eq!(
            lab.exec_ok(
                h,
                "grep -c '^Environment=AWS_EC2_METADATA_DISABLED=true$' /etc/systemd/system/kubelet.service"
            ),
            "1",
            "{h}"
        );
        // Each node turned Ready right after registering (its pod CIDR set once its CSINode
        // existed, so the kubelet posted Ready at once), not at its next 10 s status tick.
        let node = kubectl_json(&admin, &["get", "node", h]);
        let at = |v: &serde_json::Value| {
            time::OffsetDateTime::parse(
                v.as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        let ready = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        let waited = at(&ready["lastTransitionTime"]) - at(&node["metadata"]["creationTimestamp"]);
        assert!(
            ready["status"] == "True" && waited <= time::Duration::seconds(3),
            "{h}: Ready {waited} after registering: {ready}"
        );
    }
    // Bundle items travel compressed and are expanded and hash-checked on the host (issue
    // 17): of the 518 MB of files prepare writes on a control-plane host with the lab bundle,
    // 167 MB travel as zstd streams, or 210 MB as gzip streams to h3, which has no zstd
    // (518 MB did before).
    let prepare = first["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "prepare")
        .expect("a prepare phase");
    for h in nodes {
        let sent = prepare["hosts"][h]["bytes_sent"].as_u64().unwrap();
        assert!(
            (50_000_000..400_000_000).contains(&sent),
            "{h}: prepare sent {sent} bytes"
        );
        assert_eq!(
            lab.exec_ok(h, "/usr/local/bin/kubelet --version"),
            "Kubernetes v1.20.2"
        );
    }
    let sent = |h: &str| prepare["hosts"][h]["bytes_sent"].as_u64().unwrap() as f64;
    assert!(
        sent("h3") > 1.15 * sent("h1") && sent("h2") == sent("h1"),
        "h3 (no zstd) got gzip streams: {} B, h1 and h2 zstd streams: {} B, {} B",
        sent("h3"),
        sent("h1"),
        sent("h2")
    );
    // The phase as a whole: 22-24 s before, ~7 s after (the kubelet's own cAdvisor start
    // waits 5 s for a Docker daemon); a generous bound for a loaded machine.
    let took = kubelet["seconds"].as_f64();
    assert!(
        took.is_some_and(|s| s < 15.0),
        "kubelet phase {took:?} s: {kubelet}"
    );
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

    // Add-ons: CoreDNS's and metrics-server's images are in neither the lab bundle nor any
    // registry the hosts reach, so their pods could not run: init skips them and says so,
    // and no APIService is left that nothing serves (API discovery stays clean).
    let addons = first["addons"].to_string();
    for a in ["coredns", "metrics-server"] {
        assert!(
            addons.contains(&format!("add-on {a}: NOT running: skipped: image ")),
            "{addons}"
        );
    }
    assert_discovery_clean(&admin);

    // A second init changes nothing: no byte sent, no restart. Run as a person would pipe it
    // (CI unset, stderr to a file): plain lines, not one control character.
    let (again, log) = init_to_file(&lab, &inv_path);
    assert_eq!(
        totals(&again),
        (0, 0, 0),
        "second init was not a no-op: {}",
        again["totals"]
    );
    assert_no_control_characters(&log);

    // An older clusterctl registered metrics-server's APIService unconditionally: a re-run
    // removes it (nothing serves it). That re-run is watched live in tmux, as a person sees
    // it: one line per host under the current phase, then the summary intact.
    apply(
        &admin,
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1beta1.metrics.k8s.io}\nspec: {service: {name: metrics-server, namespace: kube-system}, group: metrics.k8s.io, version: v1beta1, insecureSkipTLSVerify: true, groupPriorityMinimum: 100, versionPriority: 100}\n",
    );
    init_in_tmux(&inv_path);
    assert!(
        !kubectl(&admin, &["get", "apiservice", "v1beta1.metrics.k8s.io"])
            .status
            .success(),
        "the re-run left the APIService nothing serves"
    );
    assert_discovery_clean(&admin);

    // Another apiserver flag: `plan --diff` shows it on each host and changes nothing; `init`
    // then rewrites only that unit and restarts the apiservers one at a time, while requests
    // through the VIP keep being answered.
    let mut changed = inv.clone();
    changed.spec.control_plane.apiserver_extra_args.insert(
        "default-watch-cache-size".parse().unwrap(),
        "200".parse().unwrap(),
    );
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
    // ... with the add-ons' health: both skipped (with why), no unavailable APIService.
    let js = clusterctl(&["-i", inv_arg, "-o", "json", "status"]);
    let js: serde_json::Value = serde_json::from_slice(&js.stdout).expect("status -o json");
    let states: Vec<(String, String)> = js["addons"]
        .as_array()
        .expect("status carries addons")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("coredns".to_string(), "skipped".to_string()),
            ("metrics-server".to_string(), "skipped".to_string())
        ],
        "{}",
        js["addons"]
    );
    assert!(js.get("unavailableApiServices").is_none(), "{js}");
    assert!(text(&st).contains("\nadd-ons:\n"), "{}", text(&st));
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
    let admin = lab.dir.join("clusters").join(inv.name()).join("admin.conf");
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
    let admin = lab.dir.join("clusters").join(inv.name()).join("admin.conf");
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
