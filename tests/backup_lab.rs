//! `backup` and `restore` end to end on real nspawn hosts (k8s profile; etcd 3.4.23 and
//! Kubernetes v1.20.2 from the lab bundle): 3 control-plane + etcd hosts behind a keepalived
//! VIP and 1 worker. A namespace with a ConfigMap is backed up, deleted, and brought back by
//! `restore --yes`; a corrupted copy of the archive and a restore without --yes and without a
//! terminal are refused before any host is touched; `backup --schedule` installs a timer whose
//! service takes a snapshot and keeps N. (The same backup and restore in static-pods mode run
//! in static_pods_lab, on its cluster.)

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clusterctl::inventory::Inventory;
use common::backup::*;
use common::*;

/// A k8s-profile lab with 3 control-plane + etcd hosts behind the VIP and 1 worker: (lab,
/// inventory, inventory path, admin kubeconfig). Born the common way: `init` of h1 (control
/// plane + etcd) and the worker h4, then `join` of h2 and h3 while a probe reads through the
/// VIP: no failed read, h1's etcd, apiserver, haproxy and keepalived keep their processes.
fn cluster() -> (Lab, Inventory, PathBuf, PathBuf) {
    let lab = Lab::up_profile("backup", 4, "k8s");
    let bundle = lab_bundle();
    let mut inv = lab.vip_inventory(&bundle);
    inv.spec.hosts.truncate(4); // h1-h3: control plane + etcd; h4: worker
    let full = inv.clone();
    inv.spec.hosts.retain(|h| h.name == "h1" || h.name == "h4");
    let inv_path = lab.write_inventory("inventory.yaml", &inv);
    let admin = lab.dir.join(format!("clusters/{}/admin.conf", inv.name()));
    run_report(&["-i", inv_path.to_str().unwrap(), "-o", "json", "init"]);

    // 1 -> 3 control-plane hosts behind the VIP.
    let stamp = |h: &str| {
        lab.exec_ok(
            h,
            "for u in etcd kube-apiserver haproxy keepalived kubelet; do \
               echo \"$u $(systemctl show -p MainPID -p ActiveEnterTimestamp --value $u | tr '\\n' ' ')\"; done",
        )
    };
    let before = stamp("h1");
    let since = lab.exec_ok("h1", "date +%s.%N");
    let probe = ReadProbe::start(&admin);
    lab.write_inventory("inventory.yaml", &full);
    let t = std::time::Instant::now();
    run_report(&["-i", inv_path.to_str().unwrap(), "-o", "json", "join"]);
    let join_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (answered, failures) = probe.finish();
    eprintln!(
        "TIMING join of h2, h3 (1 -> 3 behind the VIP): {join_secs:.1}s; probe: {answered} reads, {} failed",
        failures.len()
    );
    assert!(answered > 20, "the probe barely ran: {answered}");
    assert!(
        failures.is_empty(),
        "reads failed during the join: {failures:?}\n{}",
        balancer_events(&lab, &["h1", "h2", "h3"])
    );
    assert_eq!(
        stamp("h1"),
        before,
        "a unit on h1 restarted during the join"
    );
    // The VIP stayed on h1 all along: its keepalived, given its first peers by a reload, did
    // not re-initialise its VRRP instance (it did when a lone balancer ran in multicast mode:
    // the VIP was gone for 3.4 s, and a read through it now and then timed out).
    let vrrp = lab.exec_ok(
        "h1",
        &format!("journalctl -q --no-pager -o cat -t Keepalived_vrrp --since @{since}"),
    );
    assert!(
        vrrp.contains("Reloading") && !vrrp.contains("Entering"),
        "h1's keepalived changed state during the join: {vrrp}"
    );
    let members = lab.exec_ok(
        "h1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
         member list",
    );
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(
        members
            .lines()
            .all(|l| l.contains("started") && l.ends_with("false")),
        "3 started voters: {members}"
    );
    (lab, full, inv_path, admin)
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn backup_delete_restore_and_schedule() {
    let (lab, inv, inv_path, admin) = cluster();
    // The restore stops the controller-managers and schedulers before etcd and starts them
    // again afterwards, and restarts every kubelet (restore-restart): new start stamps.
    let started = |h: &str, units: &str| {
        lab.exec_ok(
            h,
            &format!("systemctl show -p ExecMainStartTimestampMonotonic --value {units}"),
        )
    };
    let cached = "kube-controller-manager kube-scheduler kubelet";
    let before = (started("h1", cached), started("h4", "kubelet"));
    let (backup_secs, restore_secs) = backup_delete_restore(&lab, &inv, &inv_path, &admin);
    let (h1_after, h4_after) = (started("h1", cached), started("h4", "kubelet"));
    // One value per unit (systemctl separates the units' blocks with an empty line).
    let stamps = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (b1, a1) = (stamps(&before.0), stamps(&h1_after));
    assert!(b1.len() == 3 && a1.len() == 3, "{b1:?} {a1:?}");
    for (i, (b, a)) in b1.iter().zip(&a1).enumerate() {
        assert_ne!(
            b,
            a,
            "h1's {} kept its process through the restore",
            cached.split(' ').nth(i).unwrap()
        );
    }
    assert_ne!(
        before.1, h4_after,
        "h4's kubelet kept its process through the restore"
    );

    // Scheduled snapshots: a timer on every etcd host; its service keeps the newest 2.
    let o = clusterctl_in(
        &inv_path,
        &[
            "backup",
            "--schedule",
            "*-*-* 03:00:00",
            "--keep",
            "2",
            "--dry-run",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("etcd-backup.timer"), "{}", text(&o));
    assert!(
        lab.exec("h1", "[ -e /etc/systemd/system/etcd-backup.timer ]")
            .status
            .code()
            == Some(1)
    );
    let t = Instant::now();
    let o = clusterctl_in(
        &inv_path,
        &["backup", "--schedule", "*-*-* 03:00:00", "--keep", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("TIMING schedule install: {:.1}s", t.elapsed().as_secs_f64());
    for h in ETCD_HOSTS {
        assert_eq!(
            lab.exec_ok(h, "systemctl is-enabled etcd-backup.timer"),
            "enabled"
        );
        assert_eq!(
            lab.exec_ok(h, "systemctl is-active etcd-backup.timer"),
            "active"
        );
    }
    for _ in 0..3 {
        lab.exec_ok("h1", "systemctl start etcd-backup.service");
        std::thread::sleep(Duration::from_millis(1100)); // names carry the second
    }
    let kept = lab.exec_ok("h1", "ls -1 /var/backups/etcd");
    assert_eq!(kept.lines().count(), 2, "{kept}");
    lab.exec_ok(
        "h1",
        &format!(
            "ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot status /var/backups/etcd/{}",
            kept.lines().last().unwrap()
        ),
    );
    // Again: unchanged. Off: the timer goes, the snapshots stay.
    let o = clusterctl_in(
        &inv_path,
        &["backup", "--schedule", "*-*-* 03:00:00", "--keep", "2"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("(unchanged)").count(), 3, "{}", text(&o));
    let bad_cal = clusterctl_in(&inv_path, &["backup", "--schedule", "not a calendar"]);
    assert_eq!(bad_cal.status.code(), Some(2), "{}", text(&bad_cal));
    assert!(text(&bad_cal).contains("calendar"), "{}", text(&bad_cal));
    let o = clusterctl_in(&inv_path, &["backup", "--schedule", "off"]);
    assert!(o.status.success(), "{}", text(&o));
    for h in ETCD_HOSTS {
        assert!(
            lab.exec(h, "[ -e /etc/systemd/system/etcd-backup.timer ]")
                .status
                .code()
                == Some(1)
        );
    }
    assert_eq!(lab.exec_ok("h1", "ls -1 /var/backups/etcd | wc -l"), "2");
    eprintln!("TIMING summary: backup {backup_secs:.1}s, restore {restore_secs:.1}s");

    haproxy_death_moves_the_vip_once(&lab, &admin);
}

/// Issue 18's failover, on this cluster's 3 balancers: the VIP holder's haproxy dies (stopped:
/// with `Restart=always` a killed one is back before keepalived's check could fail twice), its
/// keepalived goes to FAULT and gives the VIP up, another balancer takes it and the API answers
/// through it; when haproxy returns, the former holder leaves FAULT as a backup and the VIP
/// stays where it went (nopreempt: one move per failure).
fn haproxy_death_moves_the_vip_once(lab: &Lab, admin: &std::path::Path) {
    let old = vip_holder(lab).expect("a balancer holds the VIP");
    let since = lab.exec_ok(&old, "date +%s.%N");
    let t = Instant::now();
    lab.exec_ok(&old, "systemctl stop haproxy");
    let new = eventually(Duration::from_secs(15), || {
        vip_holder(lab).filter(|h| *h != old)
    })
    .unwrap_or_else(|| panic!("the VIP did not leave {old} after its haproxy stopped"));
    eprintln!(
        "TIMING VIP moved {old} -> {new} {:.1}s after haproxy stopped",
        t.elapsed().as_secs_f64()
    );
    let vrrp = |h: &str| {
        lab.exec_ok(
            h,
            &format!("journalctl -q --no-pager -o cat -t Keepalived_vrrp --since @{since}"),
        )
    };
    assert!(
        vrrp(&old).contains("Entering FAULT STATE"),
        "{}",
        vrrp(&old)
    );
    assert!(
        vrrp(&new).contains("Entering MASTER STATE"),
        "{}",
        vrrp(&new)
    );
    let o = eventually(Duration::from_secs(10), || {
        let o = kubectl(admin, &["get", "--raw", "/api/v1/namespaces/kube-system"]);
        o.status.success().then_some(o)
    });
    assert!(o.is_some(), "no read through the VIP on {new}");

    // haproxy back: `rise 2` at `interval 1`, so 2 s to leave FAULT; 4 s of advert exchange
    // after that show the VIP staying.
    lab.exec_ok(&old, "systemctl start haproxy");
    let left_fault = eventually(Duration::from_secs(10), || {
        vrrp(&old).contains("Entering BACKUP STATE").then_some(())
    });
    assert!(
        left_fault.is_some(),
        "{old} stayed in FAULT: {}",
        vrrp(&old)
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        vip_holder(lab).as_deref(),
        Some(new.as_str()),
        "the VIP moved again when haproxy returned on {old}: {}\n{}",
        vrrp(&old),
        vrrp(&new)
    );
    assert!(
        !vrrp(&old).contains("Entering MASTER STATE"),
        "{}",
        vrrp(&old)
    );
}
