//! kubeconfig: the user's `clusters/<name>/admin.conf`, pointing at the VIP, the external
//! endpoint, or (local-proxy mode) the first apiserver. In local-proxy mode no balancer stands
//! between the operator's machine and the apiservers, and kubectl takes one server per
//! cluster entry: the file then also holds one context per control-plane host
//! (`<cluster>-<host>`), to use with `kubectl --context` when the first one is down.

use anyhow::Context as _;

use crate::engine::{Context, Order, Phase, PhasePlan};
use crate::inventory::{HaMode, Inventory};
use crate::pki::kubeconfig::{Context_, Kubeconfig as KubeconfigFile, NamedContext};

pub struct Kubeconfig;

/// The contexts `admin.conf` gets beside its own in local-proxy mode: (context and cluster
/// name, server), one per control-plane host.
pub fn per_apiserver_contexts(inv: &Inventory) -> Vec<(String, String)> {
    if inv.spec.ha.mode != HaMode::LocalProxy {
        return Vec::new();
    }
    inv.control_plane_hosts()
        .map(|h| {
            (
                format!("{}-{}", inv.name(), h.name),
                Inventory::url(h.address, inv.spec.control_plane.apiserver_port),
            )
        })
        .collect()
}

/// `kc` with a cluster and context per `(name, server)`, using its current user and CA.
fn with_contexts(mut kc: KubeconfigFile, extra: &[(String, String)]) -> KubeconfigFile {
    let (Some(cluster), Some(ctx)) = (kc.clusters.first().cloned(), kc.contexts.first().cloned())
    else {
        return kc;
    };
    for (name, server) in extra {
        if kc.contexts.iter().any(|c| &c.name == name) {
            continue;
        }
        let mut c = cluster.clone();
        c.name = name.clone();
        c.cluster.server = server.clone();
        kc.clusters.push(c);
        kc.contexts.push(NamedContext {
            name: name.clone(),
            context: Context_ {
                cluster: name.clone(),
                user: ctx.context.user.clone(),
            },
        });
    }
    kc
}

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
            Inventory::url(&host, port)
        ));
        let extra = per_apiserver_contexts(ctx.inv());
        if !extra.is_empty() {
            plan.local.push(format!(
                "and a context per apiserver for `kubectl --context`: {}",
                extra
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(plan)
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        let from = ctx.state.root.join("kubeconfig/admin.conf");
        let to = ctx.state.admin_kubeconfig();
        let text = std::fs::read_to_string(&from)
            .with_context(|| format!("reading {}", from.display()))?;
        let kc = KubeconfigFile::from_yaml(&text, &from.display().to_string())?;
        let kc = with_contexts(kc, &per_apiserver_contexts(ctx.inv()));
        let tmp = to.with_extension("conf.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(kc.to_yaml()?.as_bytes())?;
        }
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("writing {}", to.display()))?;
        eprintln!(
            "kubeconfig: {} — use it with: export KUBECONFIG={}",
            to.display(),
            to.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_proxy_admin_conf_has_a_context_per_apiserver() {
        let text = crate::pki::spec::tests::INV.replace(
            "  ha: {mode: vip, vip: {address: 10.77.0.10}}",
            "  ha: {mode: local-proxy}",
        );
        let inv = crate::inventory::load_str(&text, std::path::Path::new("t.yaml"))
            .unwrap()
            .inventory;
        let extra = per_apiserver_contexts(&inv);
        assert_eq!(
            extra,
            [
                ("t-cp1".to_string(), "https://10.77.0.11:6443".to_string()),
                ("t-ce".to_string(), "https://10.77.0.12:6443".to_string()),
            ]
        );
        let kc = KubeconfigFile::new(
            "t",
            "https://10.77.0.11:6443",
            "CA",
            "kubernetes-admin",
            "C",
            "K",
        );
        let kc = with_contexts(kc, &extra);
        assert_eq!(
            kc.current_context, "kubernetes-admin@t",
            "the default stays"
        );
        assert_eq!(kc.contexts.len(), 3);
        let ce = kc.clusters.iter().find(|c| c.name == "t-ce").unwrap();
        assert_eq!(ce.cluster.server, "https://10.77.0.12:6443");
        assert_eq!(
            ce.cluster.certificate_authority_data,
            kc.clusters[0].cluster.certificate_authority_data
        );
        assert_eq!(kc.contexts[2].context.user, kc.contexts[0].context.user);
        // vip mode: the VIP fails over by itself.
        let vip = crate::inventory::load_str(
            crate::pki::spec::tests::INV,
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
        .inventory;
        assert!(per_apiserver_contexts(&vip).is_empty());
    }
}
