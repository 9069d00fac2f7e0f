//! The shipped upstream manifests under offline-bundle/: they parse, every item says where its
//! hash came from, and items without a published hash make `bundle build` refuse (before any
//! network access).

mod common;

use std::path::PathBuf;

use assert_cmd::Command;
use clusterctl::bundle::manifest::{Manifest, Stage};
use predicates::prelude::*;

fn manifests() -> Vec<PathBuf> {
    common::yaml_files("offline-bundle")
}

#[test]
fn shipped_manifests_parse_and_cite_their_hashes() {
    let all = manifests();
    assert!(all.len() >= 3, "{all:?}");
    for p in all {
        let m = Manifest::from_yaml(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        m.check(Stage::Input)
            .unwrap_or_else(|e| panic!("{}:\n{e}", p.display()));
        let minor = m.name.strip_prefix("kubernetes-").unwrap();
        for name in [
            "kubelet",
            "kubectl",
            "kube-apiserver",
            "kube-proxy",
            "etcd",
            "containerd",
            "runc",
            "crictl",
            "cni-plugins",
            "haproxy",
            "keepalived",
        ] {
            assert!(
                m.items.iter().any(|i| i.name == name),
                "{}: no {name}",
                p.display()
            );
        }
        for it in &m.items {
            if it.sha256.is_some() {
                assert!(
                    it.hash_source.contains("@")
                        || it.hash_source.contains("Debian bookworm Packages index"),
                    "{}: {}: {}",
                    p.display(),
                    it.label(),
                    it.hash_source
                );
            }
            if it.url.contains("dl.k8s.io") {
                assert!(
                    it.version.starts_with(&format!("{minor}.")),
                    "{}: {}",
                    p.display(),
                    it.label()
                );
                assert!(
                    it.url.contains(&format!("/v{}/", it.version)),
                    "{}: url and version disagree",
                    it.label()
                );
            }
        }
    }
}

#[test]
fn build_refuses_items_without_a_published_hash() {
    let d = tempfile::tempdir().unwrap();
    let p = manifests()
        .into_iter()
        .find(|p| p.ends_with("kubernetes-1.34.yaml"))
        .unwrap();
    Command::cargo_bin("clusterctl")
        .unwrap()
        .args(["bundle", "build", "--manifest"])
        .arg(&p)
        .arg("--out")
        .arg(d.path().join("b.tar.zst"))
        .arg("--cache")
        .arg(d.path().join("cache"))
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("refusing to build").and(predicate::str::contains(
                "kube-apiserver 1.34.2: no published sha256",
            )),
        );
    assert!(!d.path().join("b.tar.zst").exists());
}
