//! preflight: read-only checks on every host before anything changes; every problem of every
//! host is reported together. Sysctls a container cannot set are warnings, not failures.

use super::{Action, Context, Order, Phase, PhasePlan};
use crate::inventory::{HaMode, Host, Role};

pub struct Preflight;

/// Ports each role needs free (or held by the component that belongs there, on a re-run).
fn ports(ctx: &Context, h: &Host) -> Vec<(u16, &'static str)> {
    let spec = &ctx.inv().spec;
    let mut p = Vec::new();
    if h.has(Role::Etcd) {
        p.extend([(2379, "etcd"), (2380, "etcd")]);
    }
    if h.has(Role::ControlPlane) {
        p.extend([
            (spec.control_plane.apiserver_port, "kube-apiserver"),
            (10257, "kube-controller"),
            (10259, "kube-scheduler"),
        ]);
    }
    if h.has(Role::ControlPlane) || h.has(Role::Worker) {
        p.push((10250, "kubelet"));
    }
    match spec.ha.mode {
        HaMode::Vip if ctx.inv().lb_hosts().iter().any(|l| l.name == h.name) => {
            p.push((spec.ha.vip.as_ref().map_or(8443, |v| v.port), "haproxy"));
        }
        HaMode::LocalProxy
            if (h.has(Role::ControlPlane) || h.has(Role::Worker))
                && spec.ha.local_proxy_port != spec.control_plane.apiserver_port =>
        {
            p.push((spec.ha.local_proxy_port, "haproxy"));
        }
        _ => {}
    }
    p.sort();
    p.dedup_by_key(|x| x.0);
    p
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
                    command: format!(
                        "[ \"$(hostname)\" = {} ] || {{ echo \"hostname is $(hostname)\"; exit 1; }}",
                        super::executor::q(&h.name)
                    ),
                    warn_only: true,
                },
            ];
            for (port, owner) in ports(ctx, h) {
                a.push(Action::check(
                    &format!("port {port} free for {owner}"),
                    &format!("! ss -Hltnp 'sport = :{port}' | grep -v '\"{owner}' | grep -q . || {{ echo \"in use: $(ss -Hltnp 'sport = :{port}' | head -1)\"; exit 1; }}"),
                ));
            }
            for m in ["overlay", "br_netfilter"] {
                a.push(Action::Check {
                    description: format!("kernel module {m} available"),
                    command: format!("grep -qw ^{m} /proc/modules || modprobe -n {m} 2>&1"),
                    warn_only: true,
                });
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
}
