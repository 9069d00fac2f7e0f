//! The lab's `k8s` profile: what kubelet, containerd and runc need from an nspawn host
//! (../shared/lab-notes.md, "Kubernetes nodes in the lab"), checked on a booted host and again
//! after it is stopped and started with its state.

mod common;

use common::*;

fn check_host(lab: &Lab, machine_overcommit: &str) {
    assert_eq!(
        lab.exec_ok("h1", "systemctl is-active lab-k8s-prep.service"),
        "active"
    );
    // kubelet reads these three and writes them when they differ: the host shows its values.
    assert_eq!(
        lab.exec_ok(
            "h1",
            "cat /proc/sys/vm/overcommit_memory /proc/sys/kernel/panic /proc/sys/kernel/panic_on_oops"
        ),
        "1\n10\n1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
            .unwrap()
            .trim(),
        machine_overcommit,
        "the machine's own value changed"
    );
    // Every cgroup v1 controller mount is writable (kubelet creates kubepods under each).
    let out = lab.exec_ok(
        "h1",
        "n=0; for m in $(awk '$3 == \"cgroup\" { print $2 }' /proc/self/mounts); do \
           mkdir \"$m/lab-probe\" && rmdir \"$m/lab-probe\" || exit 1; n=$((n+1)); done; echo $n",
    );
    assert!(
        out.parse::<u32>().unwrap() >= 5,
        "only {out} writable controllers"
    );
    // containerd's and kubelet's data on the machine's ext4, not on the host's overlay root.
    for d in ["/var/lib/containerd", "/var/lib/kubelet"] {
        assert_eq!(
            lab.exec_ok("h1", &format!("findmnt -no FSTYPE --target {d}")),
            "ext4",
            "{d}"
        );
    }
    // /dev/kmsg is there and readable (CAP_SYSLOG).
    lab.exec_ok(
        "h1",
        "dd if=/dev/kmsg of=/dev/null bs=8192 count=1 iflag=nonblock 2>&1",
    );
}

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn k8s_profile_gives_kubelet_what_it_needs_across_a_restart() {
    let machine = std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .unwrap()
        .trim()
        .to_string();
    let lab = Lab::up_profile("k8sprof", 1, "k8s");
    check_host(&lab, &machine);
    lab.stop_host("h1");
    lab.start_host("h1");
    check_host(&lab, &machine);
}
