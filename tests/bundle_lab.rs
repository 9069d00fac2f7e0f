//! The lab bundle: built by tests/lab/build-bundle.sh from Debian's packages and the cached
//! Kubernetes v1.20.2 source build, then checked through the library. Needs root, apt and (the
//! first time) minutes, so it is run by tests/run.sh.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clusterctl::bundle::{Kind, items_for_roles, read_head, read_item, verify};
use clusterctl::inventory::Role;

#[test]
#[ignore = "lab: run by tests/run.sh"]
fn lab_bundle_builds_from_debian_packages_and_verifies() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/build-bundle.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CLUSTERCTL", env!("CARGO_BIN_EXE_clusterctl"))
        .output()
        .expect("run build-bundle.sh");
    assert!(
        out.status.success(),
        "build-bundle.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.starts_with("/var/cache/clusterctl/bundles")
            || std::env::var_os("CLUSTERCTL_CACHE").is_some(),
        "{}",
        path.display()
    );

    let r = verify(&path, None).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    let m = read_head(&path).unwrap().manifest;
    let has = |n: &str, v: &str| m.items.iter().any(|i| i.name == n && i.version == v);
    for (n, v) in [
        ("etcd", "3.4.23"),
        ("etcdctl", "3.4.23"),
        ("etcd", "3.5.16"),
        ("etcdctl", "3.5.16"),
        ("kube-apiserver", "1.20.2"),
        ("kubelet", "1.20.2"),
        ("kubectl", "1.20.2"),
    ] {
        assert!(has(n, v), "no {n} {v}");
    }
    for n in [
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "cni-plugins",
        "containerd",
        "runc",
        "haproxy",
        "keepalived",
    ] {
        assert!(m.items.iter().any(|i| i.name == n), "no {n}");
    }
    assert!(m.items.iter().all(|i| !i.hash_source.is_empty()));

    // Per-host selection: an lb host gets haproxy, keepalived and their dependencies only.
    let none = BTreeMap::new();
    let lb = items_for_roles(&m, &[Role::Lb], &none).unwrap();
    assert!(lb.iter().any(|i| i.name == "haproxy") && lb.iter().any(|i| i.name == "keepalived"));
    assert!(
        lb.iter().all(|i| i.kind == Kind::Deb),
        "{:?}",
        lb.iter().map(|i| i.label()).collect::<Vec<_>>()
    );
    // Every .deb is stored with its xz members expanded (hosts skip xz in dpkg -i), and the
    // packed manifest keeps the hash of the .deb as Debian published it.
    for d in m.items.iter().filter(|i| i.kind == Kind::Deb) {
        let p = d
            .published
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no published form on record", d.label()));
        assert!(p.expanded.iter().any(|x| x == "data.tar.xz"), "{p:?}");
        assert_ne!(d.sha256.as_deref(), Some(p.sha256.as_str()));
    }
    let haproxy = m.items.iter().find(|i| i.name == "haproxy").unwrap();
    let published = std::fs::read(haproxy.url.strip_prefix("file://").unwrap()).unwrap();
    assert_eq!(
        clusterctl::hashing::sha256_hex(&published),
        haproxy.published.as_ref().unwrap().sha256,
        "the published hash is that of Debian's .deb"
    );
    let stored = read_item(&path, haproxy).unwrap();
    assert_eq!(&stored[..8], b"!<arch>\n");
    assert!(
        stored.windows(9).any(|w| w == b"data.tar "),
        "an uncompressed data.tar member"
    );
    // etcd hosts must choose between the two etcd versions.
    assert!(items_for_roles(&m, &[Role::Etcd], &none).is_err());
    let pins = BTreeMap::from([
        ("etcd".to_string(), "3.5.16".to_string()),
        ("etcdctl".to_string(), "3.5.16".to_string()),
    ]);
    let etcd = items_for_roles(&m, &[Role::Etcd], &pins).unwrap();
    // ... and get the etcd image for static-pods mode (built from 3.4.23, its own name).
    assert_eq!(
        etcd.iter().map(|i| i.label()).collect::<Vec<_>>(),
        ["etcd 3.5.16", "etcdctl 3.5.16", "etcd-image 3.4.23-0"]
    );
    // One item's bytes out of the bundle: the etcdctl 3.5.16 binary, byte for byte.
    let bytes = read_item(&path, etcd[1]).unwrap();
    assert_eq!(bytes.len() as u64, etcd[1].size.unwrap());
    assert_eq!(&bytes[..4], b"\x7fELF");
}
