//! prepare: kernel settings and directories every cluster host needs.

use super::{Action, Context, Order, Phase, PhasePlan};
use crate::render::host_vars;

pub struct Prepare;

/// The module names of modules-kubernetes.conf, read on the host.
const MODULES_LIST: &str = "$(grep -v '^#' /etc/modules-load.d/kubernetes.conf)";

/// Succeeds when every sysctl of 90-kubernetes.conf already has its value.
const SYSCTLS_MATCH: &str = "grep -v '^#' /etc/sysctl.d/90-kubernetes.conf | tr -d ' ' | while IFS='=' read -r k v; \
    do [ -z \"$k\" ] || [ \"$(sysctl -n \"$k\" 2>/dev/null)\" = \"$v\" ] || exit 1; done";

impl Phase for Prepare {
    fn name(&self) -> &'static str {
        "prepare"
    }
    fn summary(&self) -> &'static str {
        "sysctls, kernel modules and directories"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in ctx.hosts_where(|_| true) {
            let vars = host_vars(ctx.inv(), h);
            let sysctl = ctx.render.render("system/sysctl-kubernetes.conf", &vars)?;
            let modules = ctx.render.render("system/modules-kubernetes.conf", &vars)?;
            plan.host(
                h,
                vec![
                    Action::dir("/etc/kubernetes", 0o755),
                    Action::dir("/etc/kubernetes/pki", 0o700),
                    Action::dir("/usr/local/bin", 0o755),
                    Action::rendered("/etc/modules-load.d/kubernetes.conf", 0o644, "system/modules-kubernetes.conf", modules, &[]),
                    Action::rendered("/etc/sysctl.d/90-kubernetes.conf", 0o644, "system/sysctl-kubernetes.conf", sysctl, &[]),
                    // In a container (the lab, LXC) modules cannot be loaded and only net.* sysctls
                    // can be set: warn, don't fail (`systemd-detect-virt -c` hosts).
                    Action::Run {
                        description: "load kernel modules".into(),
                        command: format!("for m in {MODULES_LIST}; do grep -qw \"^$m\" /proc/modules || modprobe \"$m\" 2>&1 || exit 1; done"),
                        unless: Some(format!("for m in {MODULES_LIST}; do grep -qw \"^$m\" /proc/modules || exit 1; done")),
                        warn_only: true,
                    },
                    Action::Run {
                        description: "apply sysctls".into(),
                        command: "sysctl -q -p /etc/sysctl.d/90-kubernetes.conf 2>&1".into(),
                        unless: Some(SYSCTLS_MATCH.into()),
                        warn_only: true,
                    },
                ],
            );
        }
        Ok(plan)
    }
}
