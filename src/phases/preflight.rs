//! preflight: read-only checks on every host before anything changes; every problem of every
//! host is reported together. Sysctls a container cannot set are warnings, not failures.

use futures::future::BoxFuture;

use crate::engine::executor::Executor;
use crate::engine::{Action, Context, Order, Phase, PhasePlan, Script, Shell};
use crate::inventory::{CgroupDriver, HaMode, Host, ProtectKernelDefaults, Role};

use super::kernel::{self, KernelFacts, Stage};

/// Largest clock difference allowed between a host and the operator's machine: certificates
/// are dated by this machine, and etcd and leader election need agreeing clocks.
const MAX_SKEW_SECS: f64 = 1.0;

/// Seconds since the epoch, with fractions.
fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Judges a host's clock read between `sent` and `answered` (operator's clock): the host's
/// time is compared with the midpoint, and the round trip's half is the measurement's slack.
fn clock_skew(sent: f64, host: f64, answered: f64) -> Result<f64, String> {
    let skew = host - (sent + answered) / 2.0;
    let slack = (answered - sent) / 2.0;
    if skew.abs() > MAX_SKEW_SECS + slack {
        return Err(format!(
            "clock is {skew:+.2} s off this machine's (limit {MAX_SKEW_SECS} s): \
             synchronise both with chrony or systemd-timesyncd"
        ));
    }
    Ok(skew)
}

pub struct Preflight;

/// Listening sockets each role needs (address, port, program): free, or held by that same
/// program on a re-run. The addresses match what the templates bind: in local-proxy mode
/// haproxy owns 127.0.0.1:<port> and, when the ports are equal, the apiserver the host address.
fn ports(ctx: &Context, h: &Host) -> Vec<(String, u16, &'static str)> {
    let spec = &ctx.inv().spec;
    let any = || "0.0.0.0".to_string();
    let mut p = Vec::new();
    if h.has(Role::Etcd) {
        p.extend([
            (any(), 2379, "etcd"),
            (any(), 2380, "etcd"),
            ("127.0.0.1".into(), 2381, "etcd"),
        ]);
    }
    let local_proxy = spec.ha.mode == HaMode::LocalProxy;
    if h.has(Role::ControlPlane) {
        let apiserver_port = spec.control_plane.apiserver_port;
        let apiserver_addr = if local_proxy && spec.ha.local_proxy_port == apiserver_port {
            h.address.to_string()
        } else {
            any()
        };
        p.extend([
            (apiserver_addr, apiserver_port, "kube-apiserver"),
            (any(), 10257, "kube-controller"),
            (any(), 10259, "kube-scheduler"),
        ]);
    }
    if ctx.inv().runs_kubelet(h) {
        p.push((any(), 10250, "kubelet"));
    }
    match spec.ha.mode {
        HaMode::Vip if ctx.inv().lb_hosts().iter().any(|l| l.name == h.name) => {
            p.push((
                any(),
                spec.ha.vip.as_ref().map_or(8443, |v| v.port),
                "haproxy",
            ));
        }
        HaMode::LocalProxy if ctx.inv().runs_kubelet(h) => {
            p.push(("127.0.0.1".into(), spec.ha.local_proxy_port, "haproxy"));
        }
        _ => {}
    }
    p.sort();
    p.dedup();
    p
}

/// A shell check that nothing but `owner` listens where `addr:port` would bind: the same
/// address, a wildcard, or (when `addr` is the wildcard) any address.
fn port_check(addr: &str, port: u16, owner: &str) -> Shell {
    // Arguments: the port, the address, the owner (as `ss -p` names it, after its `"`).
    const PORT: &str = r#"ss -Hltnp "sport = :$1" | awk -v want="$2" -v owner="\"$3" '{ a = $4; sub(/:[0-9]+$/, "", a); gsub(/[][]/, "", a);
  if (index($0, owner) == 0 && (want == "0.0.0.0" || a == want || a == "0.0.0.0" || a == "*" || a == "::"))
    { print "in use: " $0; bad = 1 } } END { exit bad }'"#;
    Script::new(PORT).arg(port).arg(addr).arg(owner).into()
}

/// Prints the filesystem type of the cgroup root (`cgroup2fs`: v2 only; `tmpfs`: v1, hybrid
/// when the v2 `unified` mount sits beside the controllers).
const CGROUP_FS: &str =
    "stat -fc %T /sys/fs/cgroup/; [ -d /sys/fs/cgroup/unified ] && echo hybrid || true";

/// The cgroup hierarchies a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    Hybrid,
    V2,
    Unknown,
}

impl CgroupVersion {
    pub fn parse(out: &str) -> CgroupVersion {
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some("cgroup2fs"), _) => CgroupVersion::V2,
            (Some("tmpfs"), Some("hybrid")) => CgroupVersion::Hybrid,
            (Some("tmpfs"), _) => CgroupVersion::V1,
            _ => CgroupVersion::Unknown,
        }
    }
}

/// One report line: the host's cgroup version and the driver the kubelet and containerd get,
/// with a warning where they do not fit (cgroupfs on a v2-only host: a second cgroup manager
/// beside systemd, which kubeadm and the kubelet docs advise against).
pub fn cgroup_report(stat_out: &str, driver: CgroupDriver) -> String {
    let d = match driver {
        CgroupDriver::Systemd => "systemd",
        CgroupDriver::Cgroupfs => "cgroupfs",
    };
    match CgroupVersion::parse(stat_out) {
        CgroupVersion::V2 if driver == CgroupDriver::Cgroupfs => format!(
            "warning: cgroup v2 host with cgroup driver {d}: set containerRuntime.cgroupDriver: systemd (the default) so systemd stays the only cgroup manager"
        ),
        CgroupVersion::V2 => format!("cgroup v2; cgroup driver {d}"),
        CgroupVersion::Hybrid => {
            format!("cgroup v1 (hybrid, v2 unified mount beside it); cgroup driver {d}")
        }
        CgroupVersion::V1 => format!("cgroup v1; cgroup driver {d}"),
        CgroupVersion::Unknown => format!(
            "cgroup version unknown (`stat -fc %T /sys/fs/cgroup/` printed {:?}); cgroup driver {d}",
            stat_out.trim()
        ),
    }
}

impl Phase for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }
    fn summary(&self) -> &'static str {
        "check every host before changing anything"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in ctx.hosts_where(|_| true) {
            let mut a = vec![
                Action::check(
                    "systemd must be PID 1",
                    "[ \"$(cat /proc/1/comm)\" = systemd ] || { echo \"PID 1 is $(cat /proc/1/comm)\"; exit 1; }",
                ),
                Action::check(
                    "a 64-bit Linux kernel",
                    "[ \"$(uname -s)\" = Linux ] && uname -m | grep -qE 'x86_64|aarch64' || { uname -sm; exit 1; }",
                ),
                Action::check(
                    "swap must be off (kubelet refuses to start with swap)",
                    "[ \"$(wc -l < /proc/swaps)\" -le 1 ] || { echo \"active swap: $(tail -n +2 /proc/swaps | awk '{print $1}' | xargs)\"; exit 1; }",
                ),
                Action::check(
                    "at least 2 GiB free on /",
                    "avail=$(df --output=avail -k / | tail -1); [ \"$avail\" -ge 2097152 ] || { echo \"only $((avail/1024)) MiB free on /\"; exit 1; }",
                ),
                Action::Check {
                    description: format!(
                        "hostname is {} (the node is registered under that name anyway)",
                        h.name
                    ),
                    command: Script::new(
                        r#"[ "$(hostname)" = "$1" ] || { echo "hostname is $(hostname)"; exit 1; }"#,
                    )
                    .arg(&h.name)
                    .into(),
                    warn_only: true,
                },
            ];
            a.push(Action::Check {
                description: "hostname resolves".into(),
                // getaddrinfo, as the components use; `getent hosts` asks DNS for IPv6 first
                // and waits out its timeout even when /etc/hosts has the name.
                command: "timeout 3 getent ahosts \"$(hostname)\" >/dev/null || { echo \"$(hostname) does not resolve within 3 s: add it to /etc/hosts or DNS\"; exit 1; }".into(),
                warn_only: true,
            });
            for (addr, port, owner) in ports(ctx, h) {
                a.push(Action::check(
                    &format!("{addr}:{port} free for {owner}"),
                    port_check(&addr, port, owner),
                ));
            }
            for m in ["overlay", "br_netfilter"] {
                a.push(Action::Check {
                    description: format!("kernel module {m} available"),
                    // /sys/module lists loaded and built-in modules, and is readable in a container.
                    command: Script::new(r#"[ -d "/sys/module/$1" ] || modprobe -n "$1" 2>&1"#)
                        .arg(m)
                        .into(),
                    warn_only: true,
                });
            }
            plan.host(h, a);
        }
        plan.local.push(format!(
            "each host's clock within {MAX_SKEW_SECS} s of this machine's"
        ));
        Ok(plan)
    }
    /// Reads the kernel settings the kubelet checks back as a fact (dry runs too: it only
    /// reads), and refuses a node that cannot hold them when the inventory forces
    /// `kubelet.protectKernelDefaults: true` (bad input: exit 2, before any host changed).
    fn before_host<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if !ctx.inv().runs_kubelet(host) {
                return Ok(vec![]);
            }
            // The cgroup version decides which driver fits (systemd on v2, as kubeadm defaults
            // to since 1.22): reported, and a mismatch warned about, never refused — the
            // inventory's choice stands (the nspawn lab runs cgroupfs on a v1 hybrid host).
            let cg = exec.query(host, &CGROUP_FS.into()).await?;
            // The runner prints report lines under the phase's name only: say whose it is.
            let cgroup_line = format!(
                "{}: {}",
                host.name,
                cgroup_report(&cg.stdout, ctx.inv().spec.container_runtime.cgroup_driver)
            );
            let o = exec.query(host, &kernel::read_back_command()).await?;
            let facts = KernelFacts::parse(Stage::Preflight, &o.stdout);
            if ctx.inv().spec.kubelet.protect_kernel_defaults == ProtectKernelDefaults::On
                && let Some(why) = facts.cannot_set()
            {
                return Err(crate::diag::UserError::bad_input(format!(
                    "host {}: kubelet.protectKernelDefaults is true, but {why}, so the kubelet \
                     would refuse to start whenever they differ from what it wants; fix: set \
                     kubelet.protectKernelDefaults: auto (on where the host allows it) or \
                     false, or give the node a machine or VM of its own",
                    host.name
                ))
                .on_host(host.name.to_string())
                .into());
            }
            ctx.facts.set(
                &host.name,
                kernel::FACT,
                KernelFacts::to_fact(Stage::Preflight, &o.stdout),
            );
            Ok(vec![cgroup_line])
        })
    }
    fn verify<'a>(
        &'a self,
        _ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let sent = now_secs();
            let o = exec.query(host, &"date +%s.%N".into()).await?;
            let answered = now_secs();
            let theirs: f64 = o
                .stdout
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("date +%s.%N printed {:?}", o.stdout.trim()))?;
            clock_skew(sent, theirs, answered).map_err(anyhow::Error::msg)?;
            Ok(vec![])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{CgroupDriver, CgroupVersion, cgroup_report, clock_skew, port_check};

    #[test]
    fn cgroup_version_is_read_from_the_root_filesystem_type() {
        assert_eq!(CgroupVersion::parse("cgroup2fs\n"), CgroupVersion::V2);
        assert_eq!(
            CgroupVersion::parse("tmpfs\nhybrid\n"),
            CgroupVersion::Hybrid
        );
        assert_eq!(CgroupVersion::parse("tmpfs\n"), CgroupVersion::V1);
        assert_eq!(CgroupVersion::parse(""), CgroupVersion::Unknown);
        assert_eq!(
            cgroup_report("cgroup2fs\n", CgroupDriver::Systemd),
            "cgroup v2; cgroup driver systemd"
        );
        assert!(cgroup_report("cgroup2fs\n", CgroupDriver::Cgroupfs).starts_with("warning: "));
        assert_eq!(
            cgroup_report("tmpfs\nhybrid\n", CgroupDriver::Cgroupfs),
            "cgroup v1 (hybrid, v2 unified mount beside it); cgroup driver cgroupfs"
        );
    }

    #[test]
    fn clock_skew_is_judged_against_the_round_trip_midpoint() {
        assert!((clock_skew(100.0, 100.25, 100.5).unwrap()).abs() < 1e-9);
        assert!(clock_skew(100.0, 101.15, 100.2).is_ok_and(|s| (s - 1.05).abs() < 1e-9));
        let e = clock_skew(100.0, 98.0, 100.2).unwrap_err();
        assert!(e.contains("-2.10 s off"), "{e}");
        // A slow answer widens the slack: 3 s off with a 4 s round trip cannot be told apart.
        assert!(clock_skew(100.0, 105.0, 104.0).is_ok());
        assert!(clock_skew(100.0, 104.0, 100.1).is_err());
    }

    /// Runs the check against a fake `ss` that prints `listeners`; true when the port is free.
    fn free(listeners: &str, addr: &str, port: u16, owner: &str) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let ss = dir.path().join("ss");
        std::fs::write(&ss, format!("#!/bin/sh\ncat <<'X'\n{listeners}X\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ss, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap()
        );
        let out = port_check(addr, port, owner)
            .local()
            .env("PATH", path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
        )
    }

    const HAPROXY_LO: &str =
        "LISTEN 0 4096 127.0.0.1:6443 0.0.0.0:* users:((\"haproxy\",pid=1440,fd=6))\n";
    const APISERVER_H3: &str =
        "LISTEN 0 4096 10.77.0.13:6443 0.0.0.0:* users:((\"kube-apiserver\",pid=1357,fd=7))\n";

    #[test]
    fn nothing_listening_is_free() {
        assert!(free("", "0.0.0.0", 2379, "etcd").0);
    }

    #[test]
    fn the_owner_itself_on_a_rerun_is_fine() {
        assert!(free(APISERVER_H3, "10.77.0.13", 6443, "kube-apiserver").0);
        assert!(free(HAPROXY_LO, "127.0.0.1", 6443, "haproxy").0);
    }

    #[test]
    fn local_proxy_and_apiserver_share_a_port_on_different_addresses() {
        let both = format!("{HAPROXY_LO}{APISERVER_H3}");
        assert!(free(&both, "10.77.0.13", 6443, "kube-apiserver").0);
        assert!(free(&both, "127.0.0.1", 6443, "haproxy").0);
    }

    #[test]
    fn another_program_on_the_address_or_a_wildcard_is_reported() {
        let (ok, msg) = free(HAPROXY_LO, "0.0.0.0", 6443, "kube-apiserver");
        assert!(!ok);
        assert!(msg.contains("in use:") && msg.contains("haproxy"), "{msg}");
        let nginx = "LISTEN 0 511 *:6443 *:* users:((\"nginx\",pid=9,fd=6))\n";
        assert!(!free(nginx, "10.77.0.13", 6443, "kube-apiserver").0);
        let v6 = "LISTEN 0 511 [::]:2379 [::]:* users:((\"other\",pid=9,fd=6))\n";
        assert!(!free(v6, "0.0.0.0", 2379, "etcd").0);
        // A different specific address does not collide with ours.
        let other = "LISTEN 0 511 10.77.0.99:6443 0.0.0.0:* users:((\"nginx\",pid=9,fd=6))\n";
        assert!(free(other, "10.77.0.13", 6443, "kube-apiserver").0);
    }
}
