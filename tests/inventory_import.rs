//! kubeasz `hosts` (+ config.yml) -> clusterctl inventory, and the result validates.

use std::path::Path;
use std::process::Command;

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubeasz")
        .join(p)
}

#[test]
fn kubeasz_hosts_round_trips_into_a_valid_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inventory.yaml");
    let import = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["inventory", "import", "--from", "kubeasz"])
        .arg(fixture("prod/hosts"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&import.stderr);
    assert!(import.status.success(), "{stderr}");
    assert!(!stderr.contains("needs changes"), "{stderr}");
    // What did not carry over is said, not dropped silently.
    assert!(
        stderr.contains("group [chrony] has no clusterctl equivalent"),
        "{stderr}"
    );

    let validate = Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .arg("-i")
        .arg(&out)
        .args(["inventory", "validate"])
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    // The content matches what kubeasz would have built.
    let inv = clusterctl::inventory::load(&out).unwrap().inventory;
    assert_eq!(inv.metadata.name, "cluster1");
    assert_eq!(inv.spec.kubernetes_version.to_string(), "v1.20.2");
    let names: Vec<&str> = inv.spec.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "master-01",
            "master-02",
            "master-03",
            "worker-01",
            "worker-02",
            "192.168.1.6",
            "192.168.1.7"
        ]
    );
    use clusterctl::inventory::{Cni, HaMode, ProxyMode, Role};
    assert_eq!(inv.etcd_hosts().count(), 3);
    assert_eq!(inv.control_plane_hosts().count(), 3);
    assert!(inv.host("master-01").unwrap().has(Role::Etcd));
    assert_eq!(inv.host("worker-02").unwrap().port, Some(2222));
    assert_eq!(inv.hosts_with(Role::Lb).count(), 2);
    assert_eq!(inv.spec.ha.mode, HaMode::Vip);
    assert_eq!(
        inv.spec.ha.vip.as_ref().unwrap().address.to_string(),
        "192.168.1.250"
    );
    assert_eq!(inv.spec.ha.vip.as_ref().unwrap().port, 8443);
    assert_eq!(inv.spec.network.pod_cidr.to_string(), "172.20.0.0/16");
    assert_eq!(inv.spec.network.service_cidr.to_string(), "10.68.0.0/16");
    assert_eq!(inv.spec.network.cluster_domain, "cluster.local");
    assert_eq!(inv.dns_ip().to_string(), "10.68.0.2");
    assert_eq!(inv.spec.network.cni, Cni::Flannel);
    assert_eq!(inv.spec.network.proxy_mode, ProxyMode::Ipvs);
    assert_eq!(inv.spec.pki.ca_validity.as_str(), "876000h");
    let sans: Vec<String> = inv
        .spec
        .pki
        .extra_sans
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(sans, ["IP:10.1.1.1", "DNS:k8s.easzlab.io"]);
    assert!(!inv.spec.addons.metrics_server.enabled);
}

#[test]
fn without_config_the_version_must_be_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("prod/hosts"), dir.path().join("hosts")).unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clusterctl"))
            .args(["inventory", "import", "--from", "kubeasz"])
            .arg(dir.path().join("hosts"))
            .args(extra)
            .output()
            .unwrap()
    };
    let no_version = run(&[]);
    assert!(!no_version.status.success());
    assert!(String::from_utf8_lossy(&no_version.stderr).contains("pass --kubernetes-version"));
    let with = run(&["--kubernetes-version", "v1.20.2", "--name", "moved"]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let yaml = String::from_utf8(with.stdout).unwrap();
    let loaded = clusterctl::inventory::load_str(&yaml, Path::new("imported.yaml")).unwrap();
    assert_eq!(loaded.inventory.metadata.name, "moved");
}
