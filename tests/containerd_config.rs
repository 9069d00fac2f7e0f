//! containerd's config as clusterctl renders it per minor: version 2 (containerd 1.6/1.7, the
//! lab's 1.20) or version 3 (containerd 2.x, which the 1.32–1.34 bundles ship). The unit test
//! parses the rendered TOML and checks the keys the kubelet depends on; the lab test feeds the
//! version-3 file to a real containerd 2.x and reads back what it made of it.

use std::path::{Path, PathBuf};

use clusterctl::inventory::{self, Inventory};
use clusterctl::render::{Renderer, host_vars};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example inventory at `version`, with the cgroup driver given.
fn inv(version: &str, driver: &str) -> Inventory {
    let text = std::fs::read_to_string(root().join("examples/ha-vip.yaml")).unwrap();
    let mut inv = inventory::load_str(
        &text.replace(
            "~/.ssh/id_ed25519",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ),
        Path::new("ha-vip.yaml"),
    )
    .unwrap()
    .inventory;
    inv.spec.kubernetes_version = version.parse().unwrap();
    inv.spec.container_runtime.cgroup_driver = match driver {
        "systemd" => inventory::CgroupDriver::Systemd,
        _ => inventory::CgroupDriver::Cgroupfs,
    };
    inv
}

/// The containerd config of the first host, through the template the minor's facts pick.
fn rendered(inv: &Inventory) -> String {
    let r = Renderer::new(None).unwrap();
    let h = inv.hosts_with(inventory::Role::Worker).next().unwrap();
    let tpl = inv.kube_version().facts().containerd_template();
    r.render(tpl, &host_vars(inv, h)).unwrap()
}

fn get<'a>(v: &'a toml::Value, path: &[&str]) -> &'a toml::Value {
    path.iter().fold(v, |v, k| {
        v.get(k)
            .unwrap_or_else(|| panic!("no key {k} on the way to {path:?}"))
    })
}

#[test]
fn version_3_for_containerd_2_keeps_every_setting_of_version_2() {
    let cri3 = ["plugins", "io.containerd.cri.v1.runtime"];
    let img3 = ["plugins", "io.containerd.cri.v1.images"];
    for driver in ["systemd", "cgroupfs"] {
        let i = inv("v1.34.2", driver);
        let v: toml::Value = toml::from_str(&rendered(&i)).unwrap();
        assert_eq!(v["version"].as_integer(), Some(3));
        assert_eq!(
            get(&v, &[img3[0], img3[1], "pinned_images", "sandbox"]).as_str(),
            Some("registry.k8s.io/pause:3.10.1")
        );
        assert_eq!(
            get(&v, &[img3[0], img3[1], "registry", "config_path"]).as_str(),
            Some("/etc/containerd/certs.d")
        );
        let runc = get(&v, &[cri3[0], cri3[1], "containerd", "runtimes", "runc"]);
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(
            runc["options"]["SystemdCgroup"].as_bool(),
            Some(driver == "systemd")
        );
        assert_eq!(
            get(&v, &[cri3[0], cri3[1], "cni", "bin_dirs"])
                .as_array()
                .map(|a| a.len()),
            Some(1)
        );
        // No version-2 plugin name is left behind (containerd 2.x would migrate it silently).
        assert!(v["plugins"].get("io.containerd.grpc.v1.cri").is_none());
    }
    // 1.20 (containerd 1.6/1.7 in the lab) keeps version 2, exactly as before.
    let v: toml::Value = toml::from_str(&rendered(&inv("v1.20.2", "cgroupfs"))).unwrap();
    assert_eq!(v["version"].as_integer(), Some(2));
    let cri = get(&v, &["plugins", "io.containerd.grpc.v1.cri"]);
    assert_eq!(cri["sandbox_image"].as_str(), Some("k8s.gcr.io/pause:3.2"));
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(false)
    );
}

#[test]
#[ignore = "lab: run by tests/run.sh (fetches Debian sid's containerd 2.x into the cache)"]
fn containerd_2_reads_the_rendered_version_3_config() {
    let out = std::process::Command::new("bash")
        .arg(root().join("tests/lab/containerd2.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, rendered(&inv("v1.34.2", "systemd"))).unwrap();
    let o = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "containerd config dump: {err}");
    // What containerd made of the file, not what was written: its merged view.
    let v: toml::Value = toml::from_str(&String::from_utf8(o.stdout).unwrap()).unwrap();
    assert_eq!(v["version"].as_integer(), Some(3));
    let img = get(&v, &["plugins", "io.containerd.cri.v1.images"]);
    assert_eq!(
        img["pinned_images"]["sandbox"].as_str(),
        Some("registry.k8s.io/pause:3.10.1")
    );
    assert_eq!(
        img["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
    let rt = get(&v, &["plugins", "io.containerd.cri.v1.runtime"]);
    assert_eq!(
        rt["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    assert_eq!(rt["restrict_oom_score_adj"].as_bool(), Some(false));
    assert_eq!(
        rt["cni"]["bin_dirs"].as_array().unwrap(),
        &vec![toml::Value::String("/opt/cni/bin".into())]
    );
    // A key containerd does not know would only be warned about: none may be.
    assert!(!err.contains("unknown"), "{err}");
}
