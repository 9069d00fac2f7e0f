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

/// What differs between Kubernetes minors, in one table ([`MINOR_FACTS`]). Templates see it as
/// `k8s.*` and phases read it through [`KubeVersion::facts`]; no template compares a minor
/// number. A minor is added to [`SUPPORTED_MINORS`] together with its row here and its flag
/// table under `flags/v1.MINOR/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MinorFacts {
    pub minor: u32,
    /// Where kubeadm of the minor pulls its images from: `k8s.gcr.io` was frozen in 2023 and
    /// kubeadm switched to `registry.k8s.io` in 1.25.
    pub registry: &'static str,
    /// kubeadm's pause image (containerd's `sandbox_image`).
    pub pause_image: &'static str,
    /// kubeadm's etcd image tag (`SupportedEtcdVersion` of the minor's newest patch).
    pub etcd_image_tag: &'static str,
    /// kubeadm's CoreDNS image (the repository moved to `coredns/coredns` in 1.21).
    pub coredns_image: &'static str,
    /// kube-apiserver accepts `--insecure-port` (removed in 1.24): clusterctl closes the
    /// insecure port with `--insecure-port=0` where it exists.
    pub apiserver_insecure_port_flag: bool,
    /// kube-controller-manager and kube-scheduler still open their insecure HTTP ports
    /// (10252/10251) unless `--port=0` (insecure serving was removed in 1.22/1.23; the flag
    /// only lingered deprecated): clusterctl closes them where they exist by default.
    pub insecure_serving_port_flag: bool,
    /// The kubelet needs `--container-runtime=remote` to use a CRI socket (dockershim was
    /// removed in 1.24, the flag itself in 1.27).
    pub kubelet_container_runtime_flag: bool,
    /// The kubelet still reads `--pod-infra-container-image` for the sandbox (deprecated in
    /// 1.27, where the CRI runtime's own setting rules): clusterctl never renders it and sets
    /// containerd's `sandbox_image` instead, so this is recorded for the flag check only.
    pub kubelet_pod_infra_image_flag_current: bool,
    /// The kubelet reads `containerRuntimeEndpoint` (KubeletConfiguration, added in 1.27) and
    /// `registerWithTaints` from its config file; the flags `--container-runtime-endpoint` and
    /// `--register-with-taints` are deprecated in favour of them (flags/v1.34/DEPRECATED, from
    /// the 1.34 reference page). 1.20 has no `containerRuntimeEndpoint` field: flags there.
    pub kubelet_runtime_and_taints_in_config: bool,
    /// kube-scheduler reads its settings from a `KubeSchedulerConfiguration` file at this
    /// API version; `None`: flags (1.20's v1beta1 file would reopen the insecure port 10251,
    /// so 1.20 stays on the flags the lab proved).
    pub scheduler_config_api: Option<&'static str>,
    /// kubeadm labels control-plane nodes `node-role.kubernetes.io/master` too (dropped in
    /// 1.24) and taints them with the `master` key (replaced by `control-plane` in 1.24/1.25).
    pub master_label_and_taint: bool,
    /// The PodSecurityPolicy admission plugin exists (removed in 1.25); Pod Security
    /// Admission (`PodSecurity`, on by default from 1.23) replaces it.
    pub pod_security_policy: bool,
    /// The Eviction API group/version a drain posts to (`policy/v1` from 1.22).
    pub eviction_api: &'static str,
    /// containerd's config file format: 2 for containerd 1.6/1.7 (the lab's Debian packages
    /// for 1.20), 3 for containerd 2.x, which the offline-bundle manifests of 1.32–1.34 ship
    /// (2.1.5). Picks `templates/containerd/config.toml` or `config-v3.toml`.
    pub containerd_config_version: u32,
}

impl MinorFacts {
    /// The containerd config template of this minor.
    pub fn containerd_template(&self) -> &'static str {
        if self.containerd_config_version >= 3 {
            "containerd/config-v3.toml"
        } else {
            "containerd/config.toml"
        }
    }
}

/// One row per supported minor, oldest first. Sources: kubeadm's
/// cmd/kubeadm/app/constants/constants.go (pause, etcd, CoreDNS), the CHANGELOG-1.MINOR.md
/// "Urgent upgrade notes" of each removal, and the flag tables under flags/ (see its README).
pub const MINOR_FACTS: &[MinorFacts] = &[
    MinorFacts {
        minor: 20,
        registry: "k8s.gcr.io",
        pause_image: "k8s.gcr.io/pause:3.2",
        etcd_image_tag: "3.4.13-0",
        coredns_image: "k8s.gcr.io/coredns:1.7.0",
        apiserver_insecure_port_flag: true,
        insecure_serving_port_flag: true,
        kubelet_container_runtime_flag: true,
        kubelet_pod_infra_image_flag_current: true,
        kubelet_runtime_and_taints_in_config: false,
        scheduler_config_api: None,
        master_label_and_taint: true,
        pod_security_policy: true,
        eviction_api: "policy/v1beta1",
        containerd_config_version: 2,
    },
    current(
        31,
        "3.5.24-0",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/pause:3.10",
    ),
    current(
        32,
        "3.5.24-0",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/pause:3.10",
    ),
    current(
        33,
        "3.5.24-0",
        "registry.k8s.io/coredns/coredns:v1.12.0",
        "registry.k8s.io/pause:3.10",
    ),
    current(
        34,
        "3.6.5-0",
        "registry.k8s.io/coredns/coredns:v1.12.1",
        "registry.k8s.io/pause:3.10.1",
    ),
];

/// The first apiserver minor whose nodes may lag 3 minors ([`KubeVersion::node_skew_minors`]).
const NODE_SKEW_WIDENED_IN: u32 = 28;

/// A row of a minor after every removal above (1.27+): only the images differ.
const fn current(
    minor: u32,
    etcd_image_tag: &'static str,
    coredns_image: &'static str,
    pause_image: &'static str,
) -> MinorFacts {
    MinorFacts {
        minor,
        registry: "registry.k8s.io",
        pause_image,
        etcd_image_tag,
        coredns_image,
        apiserver_insecure_port_flag: false,
        insecure_serving_port_flag: false,
        kubelet_container_runtime_flag: false,
        kubelet_pod_infra_image_flag_current: false,
        kubelet_runtime_and_taints_in_config: true,
        scheduler_config_api: Some("kubescheduler.config.k8s.io/v1"),
        master_label_and_taint: false,
        pod_security_policy: false,
        eviction_api: "policy/v1",
        containerd_config_version: 3,
    }
}

impl KubeVersion {
    pub fn is_supported(&self) -> bool {
        self.major == 1 && SUPPORTED_MINORS.contains(&self.minor)
    }

    /// The facts row of this version's minor. Inventories of other minors are refused on
    /// load; for one that slipped through, the nearest older row (or the oldest) stands in.
    pub fn facts(&self) -> &'static MinorFacts {
        MINOR_FACTS
            .iter()
            .rev()
            .find(|f| f.minor <= self.minor)
            .unwrap_or(&MINOR_FACTS[0])
    }

    /// The pause image the kubelet/containerd of this minor expects by default.
    pub fn default_sandbox_image(&self) -> &'static str {
        self.facts().pause_image
    }

    /// The image kubeadm of this minor runs `component` (etcd or a kube-* program) from in its
    /// static pods: the fallback when the bundle has no image of that repository.
    pub fn default_image(&self, component: &str) -> String {
        let f = self.facts();
        if component == "etcd" {
            format!("{}/etcd:{}", f.registry, f.etcd_image_tag)
        } else {
            format!("{}/{component}:{self}", f.registry)
        }
    }

    /// Labels kubeadm of this minor puts on control-plane nodes.
    pub fn control_plane_labels(&self) -> &'static [&'static str] {
        if self.facts().master_label_and_taint {
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
        if self.facts().master_label_and_taint {
            "node-role.kubernetes.io/master:NoSchedule"
        } else {
            "node-role.kubernetes.io/control-plane:NoSchedule"
        }
    }

    /// The CoreDNS image kubeadm installs for this minor.
    pub fn default_coredns_image(&self) -> &'static str {
        self.facts().coredns_image
    }

    /// The metrics-server release whose manifest `templates/addons/metrics-server.yaml` follows
    /// (v0.5.x serves metrics.k8s.io/v1beta1 and supports Kubernetes 1.8+).
    pub fn default_metrics_server_image(&self) -> &'static str {
        "k8s.gcr.io/metrics-server/metrics-server:v0.5.2"
    }

    /// How many minors older than an apiserver of this version a kubelet or kube-proxy may
    /// be: 2, and 3 from 1.28 on. Kubernetes' version skew policy
    /// (<https://kubernetes.io/releases/version-skew-policy/>: "kubelet may be up to three
    /// minor versions older than kube-apiserver (kubelet < 1.25 may only be up to two minor
    /// versions older)", kube-proxy likewise) widened it with 1.28 control planes
    /// (kubernetes/sig-release discussion 2271: "starting with 1.28 control planes / 1.25
    /// nodes"); the two readings agree. A rule of the minor's number, not a row of
    /// [`MINOR_FACTS`]: those rows stand in for the minors after them, and 1.21–1.30 have none.
    pub fn node_skew_minors(&self) -> u32 {
        if (self.major, self.minor) >= (1, NODE_SKEW_WIDENED_IN) {
            3
        } else {
            2
        }
    }

    /// The first `[v]X.Y.Z` word of a program's `--version` output or an image tag
    /// (`Kubernetes v1.20.2`, `etcd Version: 3.4.23`, `3.4.13-0`), with the word as written.
    /// etcd's versions are read into the same triple: the skew check compares them alike.
    pub fn find_in(text: &str) -> Option<(KubeVersion, String)> {
        text.split(|c: char| c.is_whitespace() || c == ',')
            .find_map(|w| w.parse::<KubeVersion>().ok().map(|v| (v, w.to_string())))
    }

    /// `1.20.2`: the triple without the leading `v` (how etcd writes its versions, and how
    /// the skew check's messages name every version).
    pub fn number(&self) -> String {
        format!("{}.{}.{}", self.major, self.minor, self.patch)
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
        let v: KubeVersion = "v1.34.2".parse().unwrap();
        assert_eq!(
            v.default_image("kube-apiserver"),
            "registry.k8s.io/kube-apiserver:v1.34.2"
        );
        assert_eq!(v.default_image("etcd"), "registry.k8s.io/etcd:3.6.5-0");
        assert_eq!(v.default_sandbox_image(), "registry.k8s.io/pause:3.10.1");
    }

    #[test]
    fn nodes_may_lag_two_minors_before_1_28_and_three_from_it() {
        let skew = |v: &str| v.parse::<KubeVersion>().unwrap().node_skew_minors();
        for (v, n) in [
            ("v1.20.2", 2),
            ("v1.27.9", 2),
            ("v1.28.0", 3),
            ("v1.30.1", 3),
            ("v1.34.2", 3),
        ] {
            assert_eq!(skew(v), n, "{v}");
        }
    }

    #[test]
    fn versions_are_found_in_program_output_and_image_tags() {
        let (v, w) = KubeVersion::find_in("etcd Version: 3.4.23, Git SHA: x").unwrap();
        assert_eq!(
            (v.number(), w),
            ("3.4.23".to_string(), "3.4.23".to_string())
        );
        let (v, w) = KubeVersion::find_in("3.4.13-0").unwrap();
        assert_eq!(
            (v.to_string(), w.as_str()),
            ("v3.4.13".to_string(), "3.4.13-0")
        );
        assert!(KubeVersion::find_in("kubelet: not found").is_none());
    }

    #[test]
    fn every_supported_minor_has_exactly_its_facts_row() {
        for &m in SUPPORTED_MINORS {
            assert_eq!(
                MINOR_FACTS.iter().filter(|f| f.minor == m).count(),
                1,
                "1.{m} needs one row in MINOR_FACTS"
            );
        }
        assert!(MINOR_FACTS.windows(2).all(|w| w[0].minor < w[1].minor));
        for f in MINOR_FACTS {
            assert!(f.pause_image.starts_with(f.registry), "{f:?}");
            assert!(f.coredns_image.starts_with(f.registry), "{f:?}");
        }
    }
}
