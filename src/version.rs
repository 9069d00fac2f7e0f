//! Kubernetes versions clusterctl knows how to install, and facts that differ per minor.
//!
//! A minor is "supported" when clusterctl has its flag table, templates and a bundle manifest.
//! 1.20 is the line the lab proves end to end (real binaries built from Debian's source).

use std::fmt;
use std::str::FromStr;

/// Supported minors of Kubernetes 1.x, oldest first. A minor is added here together with its
/// flag table under `flags/v1.MINOR/` (tests/flags.rs checks every rendered flag against it).
pub const SUPPORTED_MINORS: &[u32] = &[20];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    pub fn is_supported(&self) -> bool {
        self.major == 1 && SUPPORTED_MINORS.contains(&self.minor)
    }

    /// The pause image the kubelet/containerd of this minor expects by default.
    pub fn default_sandbox_image(&self) -> &'static str {
        match self.minor {
            0..=21 => "k8s.gcr.io/pause:3.2",
            22..=24 => "k8s.gcr.io/pause:3.6",
            25..=26 => "registry.k8s.io/pause:3.9",
            _ => "registry.k8s.io/pause:3.10",
        }
    }

    /// The image kubeadm of this minor runs `component` (etcd or a kube-* program) from in its
    /// static pods: the fallback when the bundle has no image of that repository.
    pub fn default_image(&self, component: &str) -> String {
        let registry = if self.minor >= 25 {
            "registry.k8s.io"
        } else {
            "k8s.gcr.io"
        };
        if component == "etcd" {
            // kubeadm's etcd of the minor; recorded for the supported minors only (a minor is
            // added with its flag table: add its etcd here too).
            let tag = match self.minor {
                0..=21 => "3.4.13-0",
                _ => "3.5.15-0",
            };
            format!("{registry}/etcd:{tag}")
        } else {
            format!("{registry}/{component}:{self}")
        }
    }

    /// Labels kubeadm of this minor puts on control-plane nodes.
    pub fn control_plane_labels(&self) -> &'static [&'static str] {
        if self.minor < 24 {
            &[
                "node-role.kubernetes.io/master",
                "node-role.kubernetes.io/control-plane",
            ]
        } else {
            &["node-role.kubernetes.io/control-plane"]
        }
    }

    /// The taint kubeadm of this minor puts on control-plane nodes.
    pub fn control_plane_taint(&self) -> &'static str {
        if self.minor < 24 {
            "node-role.kubernetes.io/master:NoSchedule"
        } else {
            "node-role.kubernetes.io/control-plane:NoSchedule"
        }
    }

    /// The CoreDNS image kubeadm installs for this minor (coredns/deployment's
    /// CoreDNS-k8s_version.md: v1.20 -> CoreDNS 1.7.0). Minors outside `SUPPORTED_MINORS` are
    /// refused on load; a minor added there adds its line here.
    pub fn default_coredns_image(&self) -> &'static str {
        "k8s.gcr.io/coredns:1.7.0"
    }

    /// The metrics-server release whose manifest `templates/addons/metrics-server.yaml` follows
    /// (v0.5.x serves metrics.k8s.io/v1beta1 and supports Kubernetes 1.8+).
    pub fn default_metrics_server_image(&self) -> &'static str {
        "k8s.gcr.io/metrics-server/metrics-server:v0.5.2"
    }

    pub fn supported_list() -> String {
        SUPPORTED_MINORS
            .iter()
            .map(|m| format!("1.{m}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for KubeVersion {
    type Err = String;
    /// Accepts `v1.20.2` or `1.20.2` by semver's rules (a pre-release or build suffix such as
    /// `-rc.1` is allowed and kept out of the triple).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).map_err(|_| {
            format!(
                "`{}` is not a version of the form v1.MINOR.PATCH",
                crate::diag::escape(s)
            )
        })?;
        let num = |n: u64| {
            u32::try_from(n)
                .map_err(|_| format!("`{}` has a number out of range", crate::diag::escape(s)))
        };
        Ok(KubeVersion {
            major: num(v.major)?,
            minor: num(v.minor)?,
            patch: num(v.patch)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_support() {
        let v: KubeVersion = "v1.20.2".parse().unwrap();
        assert_eq!(
            v,
            KubeVersion {
                major: 1,
                minor: 20,
                patch: 2
            }
        );
        assert!(v.is_supported());
        assert!(!"1.19.0".parse::<KubeVersion>().unwrap().is_supported());
        assert!("v1.20".parse::<KubeVersion>().is_err());
        assert!("latest".parse::<KubeVersion>().is_err());
        assert_eq!("v1.31.4-rc.1".parse::<KubeVersion>().unwrap().patch, 4);
    }

    #[test]
    fn kubeadm_default_images() {
        let v: KubeVersion = "v1.20.2".parse().unwrap();
        assert_eq!(
            v.default_image("kube-apiserver"),
            "k8s.gcr.io/kube-apiserver:v1.20.2"
        );
        assert_eq!(v.default_image("etcd"), "k8s.gcr.io/etcd:3.4.13-0");
    }
}
