//! Stopping and starting control-plane components in either control-plane mode, for the
//! phases that take them down on purpose (`reset`, `restore`): systemd mode stops and starts
//! their units; static-pods mode moves their manifests out of the kubelet's directory into a
//! hold directory (and back), and waits for the processes to end.

use crate::engine::MANIFESTS;
use crate::ssh::shell::{Script, Shell, systemctl};

/// Stops `components` (e.g. `etcd`, `kube-apiserver`) on a host.
pub fn stop_command(static_pods: bool, components: &[&str], hold: &str) -> Shell {
    if !static_pods {
        return systemctl(&["stop"], units(components)).into();
    }
    // Arguments: the manifest directory, the hold directory, the components.
    const STOP: &str = r#"m=$1 h=$2; shift 2; install -d -m 0700 "$h"
for c in "$@"; do [ -e "$m/$c.yaml" ] && mv "$m/$c.yaml" "$h/"; done
for i in $(seq 120); do left=; for c in "$@"; do pgrep -f "^$c( |$)" >/dev/null && left="$left $c"; done
  [ -z "$left" ] && exit 0; sleep 1; done; echo "still running:$left"; exit 1"#;
    Script::new(STOP)
        .arg(MANIFESTS)
        .arg(hold)
        .args(components)
        .into()
}

/// Succeeds when none of `components` runs (nor, in static-pods mode, has its manifest in
/// the kubelet's directory): the `unless` of [`stop_command`].
pub fn stopped_check(static_pods: bool, components: &[&str]) -> Shell {
    if !static_pods {
        return systemctl(&["is-active", "-q"], units(components)).negated();
    }
    const STOPPED: &str = r#"m=$1; shift
for c in "$@"; do [ -e "$m/$c.yaml" ] && exit 1; pgrep -f "^$c( |$)" >/dev/null && exit 1; done; exit 0"#;
    Script::new(STOPPED).arg(MANIFESTS).args(components).into()
}

/// Starts what [`stop_command`] stopped (`--no-block`: etcd members wait for each other).
pub fn start_command(static_pods: bool, components: &[&str], hold: &str) -> Shell {
    if !static_pods {
        return systemctl(&["start", "--no-block"], units(components)).into();
    }
    const START: &str = r#"m=$1 h=$2; shift 2
for c in "$@"; do [ -e "$h/$c.yaml" ] && mv "$h/$c.yaml" "$m/"; done; rmdir "$h" 2>/dev/null; true"#;
    Script::new(START)
        .arg(MANIFESTS)
        .arg(hold)
        .args(components)
        .into()
}

fn units(components: &[&str]) -> Vec<String> {
    components.iter().map(|c| format!("{c}.service")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::control_plane::COMPONENTS;

    #[test]
    fn stop_and_start_per_mode() {
        assert_eq!(
            stop_command(false, &COMPONENTS, "/h").as_str(),
            "systemctl stop kube-apiserver.service kube-controller-manager.service kube-scheduler.service"
        );
        assert_eq!(
            stopped_check(false, &["etcd"]).as_str(),
            "! systemctl is-active -q etcd.service"
        );
        assert_eq!(
            start_command(false, &["etcd"], "/h").as_str(),
            "systemctl start --no-block etcd.service"
        );
    }

    /// Static-pods mode, run for real in a local shell on a stand-in manifest directory:
    /// stop moves the manifest to the hold directory, start moves it back.
    #[test]
    fn static_pods_stop_and_start_move_the_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let (m, h) = (dir.path().join("manifests"), dir.path().join("hold"));
        std::fs::create_dir(&m).unwrap();
        std::fs::write(m.join("no-such-program-y.yaml"), "x").unwrap();
        let run = |s: Shell| {
            let s = s.as_str().replace(MANIFESTS, m.to_str().unwrap());
            std::process::Command::new("sh")
                .args(["-c", &s])
                .status()
                .unwrap()
                .success()
        };
        let hold = h.to_str().unwrap();
        assert!(!run(stopped_check(true, &["no-such-program-y"])));
        assert!(run(stop_command(true, &["no-such-program-y"], hold)));
        assert!(h.join("no-such-program-y.yaml").exists());
        assert!(run(stopped_check(true, &["no-such-program-y"])));
        assert!(run(start_command(true, &["no-such-program-y"], hold)));
        assert!(m.join("no-such-program-y.yaml").exists() && !h.exists());
    }
}
