//! control-plane: kube-apiserver, kube-controller-manager and kube-scheduler as systemd units
//! running the bundle's binaries (the static-pod layout comes with the nodes work).

use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;

use super::{Action, Context, Executor, Order, Phase, PhasePlan, Source};
use crate::inventory::{Host, Inventory, Role};
use crate::render::{component_vars, host_vars};

pub struct ControlPlane;

/// The control plane's programs, in start order.
pub const COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// An HTTPS client with the admin identity of `clusters/<name>/kubeconfig/admin.conf`.
pub fn admin_client(ctx: &Context) -> anyhow::Result<reqwest::Client> {
    let path = ctx.state.root.join("kubeconfig/admin.conf");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kc = crate::pki::kubeconfig::Kubeconfig::from_yaml(&text, &path.display().to_string())?;
    let need = |v: Option<String>, what: &str| {
        v.ok_or_else(|| anyhow::anyhow!("{}: no {what}", path.display()))
    };
    super::health::client(
        need(kc.ca_pem()?, "CA")?.as_bytes(),
        need(kc.client_cert_pem()?, "client certificate")?.as_bytes(),
        need(kc.client_key_pem()?, "client key")?.as_bytes(),
        Duration::from_secs(5),
    )
}

/// `https://<host>:<apiserver port>/readyz`
pub fn readyz_url(inv: &Inventory, host: &Host) -> String {
    format!(
        "{}/readyz",
        Inventory::url(&host.address, inv.spec.control_plane.apiserver_port)
    )
}

impl Phase for ControlPlane {
    fn name(&self) -> &'static str {
        "control-plane"
    }
    fn summary(&self) -> &'static str {
        "kube-apiserver, kube-controller-manager, kube-scheduler"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::Rolling);
        let api = ["kube-apiserver.service"];
        for h in ctx.hosts_where(|h| h.has(Role::ControlPlane)) {
            let vars = host_vars(inv, h);
            let mut a = vec![Action::dir("/var/log/kubernetes", 0o750)];
            if inv.spec.control_plane.audit_log {
                let policy = ctx
                    .render
                    .render("kube-apiserver/audit-policy.yaml", &vars)?;
                a.push(Action::rendered(
                    "/etc/kubernetes/audit-policy.yaml",
                    0o600,
                    "kube-apiserver/audit-policy.yaml",
                    policy,
                    &api,
                ));
            }
            if inv.spec.control_plane.encrypt_secrets {
                a.push(Action::File {
                    path: "/etc/kubernetes/encryption-config.yaml".into(),
                    mode: super::Mode(0o600),
                    source: Source::Local {
                        path: ctx.state.pki().join("encryption-config.yaml"),
                    },
                    sha256: None,
                    size: None,
                    restarts: vec![api[0].into()],
                });
            }
            for c in COMPONENTS {
                let tpl = format!("{c}/{c}.service");
                let unit = format!("{c}.service");
                let text = ctx
                    .render
                    .render(&tpl, &component_vars(&ctx.render, inv, h, c)?)?;
                a.push(Action::rendered(
                    format!("/etc/systemd/system/{unit}"),
                    0o644,
                    &tpl,
                    text,
                    &[&unit],
                ));
            }
            for unit in [
                "kube-apiserver.service",
                "kube-controller-manager.service",
                "kube-scheduler.service",
            ] {
                a.push(Action::service(unit));
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        _exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let client = admin_client(ctx)?;
            super::health::wait_ok(
                &client,
                &readyz_url(ctx.inv(), host),
                Duration::from_secs(90),
            )
            .await?;
            // Then through what clients use: the balancers take a backend in only after its
            // /readyz has passed their own check.
            let (ep_host, ep_port) = ctx.inv().apiserver_endpoint_for_admin();
            super::health::wait_ok(
                &client,
                &format!("{}/readyz", Inventory::url(&ep_host, ep_port)),
                Duration::from_secs(30),
            )
            .await
            .context("through the cluster endpoint")?;
            Ok(vec![])
        })
    }
}
