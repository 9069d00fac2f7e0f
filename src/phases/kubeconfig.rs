//! kubeconfig: the user's `clusters/<name>/admin.conf`, pointing at the VIP, the external
//! endpoint, or (local-proxy mode) the first apiserver.

use anyhow::Context as _;

use super::{Context, Order, Phase, PhasePlan};

pub struct Kubeconfig;

impl Phase for Kubeconfig {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }
    fn summary(&self) -> &'static str {
        "the admin kubeconfig for the user"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let (host, port) = ctx.inv().apiserver_endpoint_for_admin();
        plan.local.push(format!(
            "write {} (user kubernetes-admin, server {})",
            ctx.state.admin_kubeconfig().display(),
            crate::inventory::Inventory::url(&host, port)
        ));
        Ok(plan)
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        let from = ctx.state.root.join("kubeconfig/admin.conf");
        let to = ctx.state.admin_kubeconfig();
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        eprintln!(
            "kubeconfig: {} — use it with: export KUBECONFIG={}",
            to.display(),
            to.display()
        );
        Ok(())
    }
}
