//! `spec.controlPlane.mode: static-pods` end to end on real nspawn hosts (k8s profile): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler as kubeadm-style static pods run
//! by each control-plane host's kubelet, from the lab bundle's images (the v1.20.2 binaries
//! built from Debian's source, Debian's etcd 3.4.23). 3 control-plane + etcd hosts behind a
//! keepalived VIP and 2 workers: nodes Ready, the mirror pods Running, no control-plane unit on
//! the hosts, workloads spread over the workers reaching each other, Services, logs and exec
//! through the VIP; a second `init` changes nothing; a changed apiserver flag replaces the
//! apiserver pods one host at a time with no failed request through the VIP; `backup`, a deleted
//! namespace and `restore` bring it back with the static pods back in place; `upgrade` to the
//! re-stamped build swaps the control plane's images host by host and the nodes' binaries;
//! `renew-certs --all` replaces every served certificate; `reset` of the control-plane + etcd
//! host holding the VIP and its `join` back take etcd from 3 members to 2 and back to 3; all
//! with no failed request through the VIP.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clusterctl::inventory::{ControlPlaneMode, Inventory};
use common::*;

const CONTROL_PLANE: [&str; 3] = ["h1", "h2", "h3"];
const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The mirror pods of the control plane, by name: (phase, ready, the kubelet's hash of the
/// manifest it runs, restart count).
fn mirror_pods(admin: &Path) -> BTreeMap<String, (String, bool, String, u64)> {
    let v = kubectl_json(admin, &["-n", "kube-system", "get", "pods"]);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let restarts = p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0);
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    p["status"]["phase"].as_str().unwrap_or("").to_string(),
                    ready,
                    p["metadata"]["annotations"]["kubernetes.io/config.hash"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    restarts,
                ),
            )
        })
        .collect()
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn static_pod_control_plane() {
    let t0 = Instant::now();
    let lab = Lab::up_profile("static", 5, "k8s");
    let bundle = lab_bundle();
    let mut inv: Inventory = lab.vip_inventory(&bundle);
    inv.spec.control_plane.mode = ControlPlaneMode::StaticPods;
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let inv_arg = inv_path.to_str().unwrap();
    // Under the cluster's own name (CLUSTERCTL_LAB_PREFIX renames the lab and so the cluster).
    let admin = lab.dir.join("clusters").join(inv.name()).join("admin.conf");

    let first = run_report(&["-i", inv_arg, "-o", "json", "init"]);
    assert!(totals(&first).0 > 0, "a first init writes files");

    // Every node Ready (the kubelet phase's gate), control-plane nodes tainted.
    let nodes = kubectl_json(&admin, &["get", "nodes"]);
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{nodes}");
    for n in items {
        let name = n["metadata"]["name"].as_str().unwrap();
        assert!(node_ready(n), "{name} not Ready: {}", n["status"]);
        let taints = n["spec"]["taints"].to_string();
        assert_eq!(
            CONTROL_PLANE.contains(&name),
            taints.contains("node-role.kubernetes.io/master"),
            "{name}: {taints}"
        );
    }

    // The mirror pods etcd-h1, kube-apiserver-h1, ... Running and Ready in kube-system. A
    // kubelet creates a static pod's mirror pod on one of its pod syncs (every minute, with
    // backoff after the tries it made before its node existed): with the kubelet phase now
    // passing seconds after registration, two runs still lacked 3 of the 12 a minute after
    // `init` (the others 6-25 s old), so the wait covers two sync periods.
    let want: Vec<String> = CONTROL_PLANE
        .iter()
        .flat_map(|h| COMPONENTS.iter().map(move |c| format!("{c}-{h}")))
        .collect();
    let pods = eventually(Duration::from_secs(150), || {
        let m = mirror_pods(&admin);
        want.iter()
            .all(|p| m.get(p).is_some_and(|s| s.0 == "Running" && s.1))
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "control-plane mirror pods not all Running and Ready: {}",
            kubectl_ok(&admin, &["-n", "kube-system", "get", "pods", "-o", "wide"])
        )
    });
    assert_eq!(
        pods.keys().cloned().collect::<Vec<_>>(),
        {
            let mut w = want.clone();
            w.sort();
            w
        },
        "exactly the control plane's static pods"
    );

    // On the hosts: manifests, no control-plane unit, the processes in the kubelet's cgroups.
    for h in CONTROL_PLANE {
        let listing = lab.exec_ok(h, "ls /etc/kubernetes/manifests");
        assert_eq!(
            listing.split_whitespace().collect::<Vec<_>>(),
            [
                "etcd.yaml",
                "kube-apiserver.yaml",
                "kube-controller-manager.yaml",
                "kube-scheduler.yaml"
            ],
            "{h}"
        );
        for c in COMPONENTS {
            let o = lab.exec(
                h,
                &format!(
                    "systemctl is-active {c}.service; ls /etc/systemd/system/{c}.service /lib/systemd/system/{c}.service 2>&1"
                ),
            );
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                out.starts_with("inactive") && !out.contains(&format!("system/{c}.service\n")),
                "{h}: a {c} unit exists:\n{out}"
            );
            let cgroup = lab.exec_ok(
                h,
                &format!("cat /proc/$(pgrep -o -f '^{c}( |$)')/cgroup | grep -m1 pids"),
            );
            assert!(cgroup.contains("kubepods"), "{h}: {c} runs in {cgroup}");
        }
    }
    eprintln!(
        "init and the control-plane checks done {:.1}s after the start",
        t0.elapsed().as_secs_f64()
    );

    // The same workload checks as in systemd mode.
    let by_node = check_web_workload(&lab, &admin, &bundle);
    assert_eq!(by_node["h4"].len(), 2, "{by_node:?}");
    // The apiserver's own logs come from its container, through the kubelet of h1.
    let api_logs = kubectl_ok(
        &admin,
        &["-n", "kube-system", "logs", "kube-apiserver-h1", "--tail=5"],
    );
    assert!(!api_logs.trim().is_empty());

    // A second init changes nothing: no file, no restart, and the kubelets run the same
    // static pods (same manifest hashes, no container restarted).
    let before = mirror_pods(&admin);
    let second = run_report(&["-i", inv_arg, "-o", "json", "init"]);
    assert_eq!(
        totals(&second),
        (0, 0, 0),
        "a second init changed something"
    );
    for p in second["phases"].as_array().unwrap() {
        for (h, o) in p["hosts"].as_object().unwrap() {
            assert_eq!(
                o["result"], "done",
                "second init: phase {} on {h}: {o}",
                p["phase"]
            );
            assert!(
                o["started"].as_array().is_none_or(|s| s.is_empty()),
                "second init started something: phase {} on {h}: {o}",
                p["phase"]
            );
        }
    }
    let after = mirror_pods(&admin);
    for (name, (_, _, hash, restarts)) in &before {
        let (phase, _, hash2, restarts2) = &after[name];
        assert_eq!(
            (hash, restarts, phase.as_str()),
            (hash2, restarts2, "Running"),
            "{name} changed across a second init"
        );
    }

    // A changed apiserver flag rewrites the three apiserver manifests only; the kubelets
    // replace the pods one host at a time (the gate waits for the new process before /readyz),
    // while reads through the VIP keep being answered.
    let mut changed = inv.clone();
    changed.spec.control_plane.apiserver_extra_args.insert(
        "default-watch-cache-size".parse().unwrap(),
        "200".parse().unwrap(),
    );
    let changed_path = lab.write_inventory("inventory-flag.yaml", &changed);
    let probe = ReadProbe::start(&admin);
    let rolled = run_report(&["-i", changed_path.to_str().unwrap(), "-o", "json", "init"]);
    let (ok, failed) = probe.finish();
    eprintln!(
        "rolling apiserver replacement: {ok} requests answered, {} failed",
        failed.len()
    );
    assert_eq!(totals(&rolled).0, 3, "{}", rolled["totals"]);
    assert_eq!(
        totals(&rolled).2,
        0,
        "no unit restarted: {}",
        rolled["totals"]
    );
    let cp = rolled["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "control-plane")
        .unwrap();
    for h in CONTROL_PLANE {
        assert_eq!(
            cp["hosts"][h]["files_written"], 1,
            "{h}: {}",
            cp["hosts"][h]
        );
    }
    // The replaced apiservers Ready; a controller-manager or scheduler that led may have
    // exited when its local apiserver went (as under systemd) and is Running again, Ready
    // once its startup probe passes.
    let t = Instant::now();
    let rolled_pods = eventually(Duration::from_secs(120), || {
        let m = mirror_pods(&admin);
        (m.len() == after.len()
            && m.iter()
                .all(|(n, s)| s.0 == "Running" && (s.1 || !n.starts_with("kube-apiserver-"))))
        .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "mirror pods not all Running (apiservers Ready) after the roll: {:?}\n{}",
            mirror_pods(&admin),
            kubectl_ok(&admin, &["-n", "kube-system", "get", "pods", "-o", "wide"])
        )
    });
    eprintln!(
        "mirror pods Running, apiservers Ready {:.1}s after the roll",
        t.elapsed().as_secs_f64()
    );
    for (name, (_, _, hash, _)) in &after {
        assert_eq!(
            name.starts_with("kube-apiserver-"),
            &rolled_pods[name].2 != hash,
            "{name}: only the apiservers are replaced"
        );
    }
    for h in CONTROL_PLANE {
        let cmd = lab.exec_ok(
            h,
            "cat /proc/$(pgrep -o -f '^kube-apiserver ')/cmdline | tr '\\0' ' '",
        );
        assert!(cmd.contains("--default-watch-cache-size=200"), "{h}: {cmd}");
    }
    no_failed_read(&lab, "the roll", &failed);
    assert!(ok >= 10, "only {ok} probes ran during the roll");

    // backup and restore (the checks of backup_lab): etcd and the control plane stop by their
    // manifests leaving the kubelet's directory, and start again by their return.
    let (b, r) = common::backup::backup_delete_restore(&lab, &changed, &changed_path, &admin);
    for h in CONTROL_PLANE {
        let m = lab.exec_ok(h, "ls /etc/kubernetes/manifests | sort | tr '\\n' ' '");
        assert_eq!(
            m.trim(),
            "etcd.yaml kube-apiserver.yaml kube-controller-manager.yaml kube-scheduler.yaml",
            "{h}"
        );
        lab.exec_ok(h, "! ls -d /etc/kubernetes/manifests.restore-* 2>/dev/null");
    }
    eprintln!("TIMING static-pods backup {b:.1}s, restore {r:.1}s");

    // upgrade in static-pods mode: each host's manifests move to the re-stamped images one host
    // at a time behind the same gates (the apiserver out of the balancers first), then each
    // node's kubelet and kube-proxy to the re-stamped binaries; reads through the VIP are all
    // answered. `upgrade plan` reads the images the manifests name.
    let target = "v1.20.3";
    let restamped = restamped_bundle(target);
    let mut up = changed.clone();
    up.spec.bundle = Some(lab_bundle_spec(&restamped));
    let up_path = lab.write_inventory("inventory-upgrade.yaml", &up);
    let up_arg = up_path.to_str().unwrap();
    let plan = clusterctl(&["-i", up_arg, "upgrade", "plan", "--to", target]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan_text = String::from_utf8_lossy(&plan.stdout).to_string();
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            plan_text.lines().any(|l| l.contains(c)
                && l.contains("static-pod")
                && l.contains("v1.20.2")
                && l.contains(target)
                && l.contains("replace + restart")),
            "{c}: {plan_text}"
        );
    }
    let probe = ReadProbe::start(&admin);
    let t = Instant::now();
    let upgraded = clusterctl(&["-i", up_arg, "-o", "json", "upgrade", "--to", target]);
    let secs = t.elapsed().as_secs_f64();
    let (ok, failed) = probe.finish();
    assert!(upgraded.status.success(), "{}", text(&upgraded));
    no_failed_read(&lab, "the upgrade", &failed);
    for h in CONTROL_PLANE {
        let images = lab.exec_ok(
            h,
            "sed -n 's/^[ -]*image: *//p' /etc/kubernetes/manifests/kube-*.yaml | tr -d '\"' | sort -u | tr '\\n' ' '",
        );
        assert_eq!(
            images.trim(),
            format!(
                "k8s.gcr.io/kube-apiserver:{target} k8s.gcr.io/kube-controller-manager:{target} k8s.gcr.io/kube-scheduler:{target}"
            ),
            "{h}"
        );
        let v = kubectl_ok(
            &admin,
            &[
                "get",
                "--raw",
                "/version",
                "--server",
                &format!("https://{}:6443", lab.ip(h)),
            ],
        );
        assert!(
            v.contains(&format!("\"gitVersion\": \"{target}\"")),
            "{h}: {v}"
        );
    }
    let nodes = kubectl_json(&admin, &["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        assert_eq!(
            n["status"]["nodeInfo"]["kubeletVersion"], target,
            "{}",
            n["metadata"]["name"]
        );
        assert!(node_ready(n), "{}", n["metadata"]["name"]);
        assert_ne!(
            n["spec"]["unschedulable"], true,
            "{}",
            n["metadata"]["name"]
        );
    }
    // A second run changes nothing.
    let again = clusterctl(&["-i", up_arg, "upgrade", "plan", "--to", target]);
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("replace + restart"),
        "{}",
        text(&again)
    );
    eprintln!("TIMING static-pods upgrade {secs:.1}s, probe {ok} answered");

    // renew-certs --all in static-pods mode (the inventory now at the upgraded version): the
    // manifests carry the hash of every file their component loads, so each new certificate
    // replaces its pods one host at a time behind the gates; the kubelets and kube-proxies,
    // units in both modes, restart.
    // Afterwards every endpoint serves a new certificate, the one the PKI holds, and reads
    // through the VIP were all answered.
    up.spec.kubernetes_version = target.parse().unwrap();
    let up_path = lab.write_inventory("inventory-upgraded.yaml", &up);
    let up_arg = up_path.to_str().unwrap();
    let eps = clusterctl::phases::certs::endpoints(
        &up,
        &lab.dir.join("clusters").join(up.name()).join("pki"),
    );
    let before = served(&eps);
    let etcd = EtcdProcesses::read(&lab, &CONTROL_PLANE);
    let probe = ReadProbe::start(&admin);
    let t = Instant::now();
    let renewed = clusterctl(&["-i", up_arg, "-o", "json", "renew-certs", "--all"]);
    let secs = t.elapsed().as_secs_f64();
    // etcd's pods are replaced one at a time, the leading member last after a hand-over.
    let (ok, failed) = probe.finish_after(&[&text(&renewed)], etcd.stops(&lab));
    assert!(renewed.status.success(), "{}", text(&renewed));
    no_failed_read(&lab, "renew-certs", &failed);
    let after = served(&eps);
    assert_eq!(after.len(), eps.len());
    for (ep, (now, file)) in &after {
        assert!(
            now.is_some() && now == file,
            "{ep}: serves {now:?}, PKI holds {file:?}"
        );
        assert_ne!(now, &before[ep].0, "{ep}: still serves its old certificate");
    }
    eprintln!(
        "TIMING static-pods renew-certs --all {secs:.1}s, {} endpoints renewed, probe {ok} answered",
        after.len()
    );

    // reset of a control-plane + etcd host in static-pods mode, the one holding the VIP (so
    // the VIP moves too), then `join` brings it back: 3 -> 2 -> 3 etcd members, with reads
    // through the VIP answered all along.
    let gone = vip_holder(&lab).expect("a control-plane host holds the VIP");
    let etcd = EtcdProcesses::read(&lab, &CONTROL_PLANE);
    let reset_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let probe = ReadProbe::start(&admin);
    let t = Instant::now();
    let out = clusterctl(&["-i", up_arg, "reset", "--hosts", &gone, "--yes"]);
    let reset_secs = t.elapsed().as_secs_f64();
    // Its member leaves etcd: if it led, the leadership is handed over first.
    let (ok, failed) = probe.finish_after(&[&text(&out)], etcd.stops(&lab));
    assert!(out.status.success(), "{}", text(&out));
    // Handed over by gone's last advert while the others still counted it as a peer (a
    // skew time, under a second), not left without a holder until their master-down timer
    // (3 s and more: a client connecting then timed out in CI).
    let staying: Vec<&str> = CONTROL_PLANE.into_iter().filter(|h| *h != gone).collect();
    let handover = vip_handover(&lab, &gone, &staying, reset_at).unwrap_or_else(|e| panic!("{e}"));
    let gap = handover.1 - handover.0;
    // A request in flight on gone's haproxy at that instant is lost, reset by the new holder
    // or left waiting for an answer gone can no longer send (both seen in CI): at most that
    // one is set apart, every other failure counts.
    let (moved, failed) = split_vip_move_loss(failed, &lab.addr(100), handover);
    no_failed_read(
        &lab,
        &format!(
            "the reset of {gone} (its keepalived stopped at {:.3}, the VIP taken at {:.3})",
            handover.0, handover.1
        ),
        &failed,
    );
    let holder = vip_holder(&lab);
    assert!(
        holder.as_ref().is_some_and(|h| h != &gone),
        "the VIP left {gone}: {holder:?}"
    );
    assert!(gap < 2.0, "the VIP had no holder for {gap:.2} s");
    lab.exec_ok(
        &gone,
        "! ls /etc/kubernetes/manifests/*.yaml 2>/dev/null && ! pgrep -f '^(etcd|kube-apiserver|kube-controller-manager|kube-scheduler)( |$)' && ! systemctl is-active kubelet.service",
    );
    let nodes = kubectl_ok(&admin, &["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains(&format!("node/{gone}\n")), "{nodes}");
    assert_eq!(
        etcd_members(up_arg),
        CONTROL_PLANE
            .iter()
            .filter(|h| **h != gone)
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
    );
    eprintln!(
        "TIMING static-pods reset of {gone} {reset_secs:.1}s, probe {ok} answered, the VIP on {holder:?} after {gap:.2} s without a holder, lost in the move: {moved:?}"
    );

    let probe = ReadProbe::start(&admin);
    let t = Instant::now();
    let joined = clusterctl(&["-i", up_arg, "-o", "json", "join"]);
    let join_secs = t.elapsed().as_secs_f64();
    let (ok, failed) = probe.finish();
    assert!(joined.status.success(), "{}", text(&joined));
    // The kubelet, seconds old on the re-joined host, admitted every static pod at once: the
    // gate's rescue (restarting a kubelet that rejected one) was not needed. etcd's manifest
    // requested ephemeral storage once, which such a kubelet does not know yet (README, "A
    // static pod the kubelet rejects"); 1 in 3 re-joins failed on it.
    assert!(
        !text(&joined).contains("rejected a static pod"),
        "{}",
        text(&joined)
    );
    no_failed_read(&lab, &format!("the join of {gone}"), &failed);
    assert_eq!(etcd_members(up_arg), CONTROL_PLANE.map(str::to_string));
    let back: Vec<String> = COMPONENTS.iter().map(|c| format!("{c}-{gone}")).collect();
    eventually(Duration::from_secs(150), || {
        let m = mirror_pods(&admin);
        back.iter()
            .all(|p| m.get(p).is_some_and(|s| s.0 == "Running" && s.1))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{gone}'s mirror pods not Running and Ready: {}",
            kubectl_ok(&admin, &["-n", "kube-system", "get", "pods", "-o", "wide"])
        )
    });
    let images = lab.exec_ok(
        &gone,
        "sed -n 's/^[ -]*image: *//p' /etc/kubernetes/manifests/kube-apiserver.yaml | tr -d '\"'",
    );
    assert_eq!(
        images.trim(),
        format!("k8s.gcr.io/kube-apiserver:{target}"),
        "{gone} came back at the cluster's version"
    );
    eprintln!("TIMING static-pods join of {gone} {join_secs:.1}s, probe {ok} answered");
    eprintln!("whole test {:.1}s", t0.elapsed().as_secs_f64());
}

/// A read probe's failures must be none; else they fail the test beside what the balancers
/// logged.
fn no_failed_read(lab: &Lab, during: &str, failed: &[String]) {
    assert!(
        failed.is_empty(),
        "requests failed during {during}: {failed:?}\n{}",
        balancer_events(lab, &CONTROL_PLANE)
    );
}

/// The etcd members `clusterctl status` reports, sorted by name, each healthy (one leader).
fn etcd_members(inv: &str) -> Vec<String> {
    let o = clusterctl(&["-i", inv, "-o", "json", "status"]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status -o json: {e}: {}", text(&o)));
    let ms = s["etcd"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no etcd members: {s:#}"));
    assert!(ms.iter().all(|m| m["healthy"] == true), "{s:#}");
    assert_eq!(
        ms.iter().filter(|m| m["leader"] == true).count(),
        1,
        "one leader: {s:#}"
    );
    let mut names: Vec<String> = ms
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}
