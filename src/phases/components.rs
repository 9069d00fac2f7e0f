//! Stopping and starting control-plane components in either control-plane mode, for the
//! phases that take them down on purpose (`reset`, `restore`): systemd mode stops and starts
//! their units; static-pods mode moves their manifests out of the kubelet's directory into a
//! hold directory (and back), and waits for the processes to end.

use crate::engine::MANIFESTS;
use crate::engine::executor::q;
use crate::ssh::shell::systemctl;

/// Stops `components` (e.g. `etcd`, `kube-apiserver`) on a host.
pub fn stop_command(static_pods: bool, components: &[&str], hold: &str) -> String {
    let list = words(components);
    if !static_pods {
        return systemctl(&["stop"], units(components)).to_string();
    }
    format!(
        "install -d -m 0700 {h}; for c in {list}; do [ -e {MANIFESTS}/$c.yaml ] && mv {MANIFESTS}/$c.yaml {h}/; done; \
         for i in $(seq 120); do left=; for c in {list}; do pgrep -f \"^$c( |$)\" >/dev/null && left=\"$left $c\"; done; \
         [ -z \"$left\" ] && exit 0; sleep 1; done; echo \"still running:$left\"; exit 1",
        h = q(hold)
    )
}

/// Succeeds when none of `components` runs (nor, in static-pods mode, has its manifest in
/// the kubelet's directory): the `unless` of [`stop_command`].
pub fn stopped_check(static_pods: bool, components: &[&str]) -> String {
    if !static_pods {
        return systemctl(&["is-active", "-q"], units(components)).negated();
    }
    format!(
        "for c in {}; do [ -e {MANIFESTS}/$c.yaml ] && exit 1; pgrep -f \"^$c( |$)\" >/dev/null && exit 1; done; exit 0",
        words(components)
    )
}

/// Starts what [`stop_command`] stopped (`--no-block`: etcd members wait for each other).
pub fn start_command(static_pods: bool, components: &[&str], hold: &str) -> String {
    let list = words(components);
    if !static_pods {
        return systemctl(&["start", "--no-block"], units(components)).to_string();
    }
    format!(
        "for c in {list}; do [ -e {h}/$c.yaml ] && mv {h}/$c.yaml {MANIFESTS}/; done; rmdir {h} 2>/dev/null; true",
        h = q(hold)
    )
}

fn units(components: &[&str]) -> Vec<String> {
    components.iter().map(|c| format!("{c}.service")).collect()
}

/// The components as shell words (each quoted), for a `for` list.
fn words(components: &[&str]) -> String {
    components
        .iter()
        .map(|c| q(c))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::control_plane::COMPONENTS;

    #[test]
    fn stop_and_start_per_mode() {
        assert_eq!(
            stop_command(false, &COMPONENTS, "/h"),
            "systemctl stop kube-apiserver.service kube-controller-manager.service kube-scheduler.service"
        );
        assert_eq!(
            stopped_check(false, &["etcd"]),
            "! systemctl is-active -q etcd.service"
        );
        assert_eq!(
            start_command(false, &["etcd"], "/h"),
            "systemctl start --no-block etcd.service"
        );
        let s = stop_command(true, &["etcd"], "/hold");
        assert!(
            s.contains("mv /etc/kubernetes/manifests/$c.yaml /hold/"),
            "{s}"
        );
        assert!(s.contains("pgrep"), "{s}");
        let s = start_command(true, &["etcd"], "/hold");
        assert!(
            s.contains("mv /hold/$c.yaml /etc/kubernetes/manifests/"),
            "{s}"
        );
        assert!(stopped_check(true, &["etcd"]).contains("/etc/kubernetes/manifests/$c.yaml"));
    }
}
