//! control-plane: kube-apiserver, kube-controller-manager and kube-scheduler as systemd units
//! running the bundle's binaries, or in static-pods mode as static pods run by the host's
//! kubelet (which this phase then sets up first, with containerd and the images).

use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;

use super::static_pods;
use crate::engine::{Action, Context, Executor, Order, Phase, PhasePlan, Source};
use crate::inventory::{Host, Role};
use crate::render::{component_vars, host_vars};

pub struct ControlPlane;

/// The control plane's programs, in start order.
pub const COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Component `c`'s systemd unit on `h` (its flags inside), restarting it when it changes.
pub(crate) fn unit_action(ctx: &Context, h: &Host, c: &str) -> anyhow::Result<Action> {
    let tpl = format!("{c}/{c}.service");
    let unit = format!("{c}.service");
    let text = ctx
        .render
        .render(&tpl, &component_vars(&ctx.render, ctx.inv(), h, c)?)?;
    Ok(Action::rendered(
        format!("/etc/systemd/system/{unit}"),
        0o644,
        &tpl,
        text,
        &[&unit],
    ))
}

impl Phase for ControlPlane {
    fn name(&self) -> &'static str {
        "control-plane"
    }
    fn summary(&self) -> &'static str {
        "kube-apiserver, kube-controller-manager, kube-scheduler"
    }
    /// Static pods: the kubelet's unit is written here too.
    fn gather<'a>(
        &'a self,
        ctx: &'a Context,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        static_pods::gather_kubelet_facts(ctx, exec, Role::ControlPlane)
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let static_pods = inv.static_pods();
        let mut plan = PhasePlan::new(self, Order::Rolling);
        // In systemd mode a changed policy or key restarts the apiserver's unit; in static-pods
        // mode it changes the manifest (its inputs hash), and the kubelet replaces the pod.
        let api: &[&str] = if static_pods {
            &[]
        } else {
            &["kube-apiserver.service"]
        };
        for h in ctx.hosts_where(|h| h.has(Role::ControlPlane)) {
            let vars = host_vars(inv, h);
            let mut a = vec![static_pods::mode_guard(inv, &COMPONENTS)];
            if static_pods {
                // Their kubelet runs the control plane: containerd (with the images) and the
                // kubelet first (already there on etcd hosts: no change).
                a.extend(super::runtime::host_actions(ctx, h)?);
                a.extend(super::kubelet::host_actions(ctx, h)?);
            }
            a.push(Action::dir("/var/log/kubernetes", 0o750));
            let mut rendered = Vec::new();
            if inv.spec.control_plane.audit_log {
                let policy = ctx
                    .render
                    .render("kube-apiserver/audit-policy.yaml", &vars)?;
                let f = Action::rendered(
                    "/etc/kubernetes/audit-policy.yaml",
                    0o600,
                    "kube-apiserver/audit-policy.yaml",
                    policy,
                    api,
                );
                if let Action::File {
                    path,
                    sha256: Some(sha),
                    ..
                } = &f
                {
                    rendered.push((path.clone(), sha.clone()));
                }
                a.push(f);
            }
            if inv.spec.control_plane.encrypt_secrets {
                a.push(Action::File {
                    path: "/etc/kubernetes/encryption-config.yaml".into(),
                    mode: crate::engine::Mode(0o600),
                    source: Source::Local {
                        path: ctx.state.pki().join(super::pki::ENCRYPTION_CONFIG),
                    },
                    sha256: None,
                    size: None,
                    restarts: api.iter().map(|u| u.to_string()).collect(),
                });
            }
            // The scheduler of a minor that reads a config file gets it here (1.20's stays on
            // flags: its v1beta1 file would reopen the insecure port 10251).
            let mut scheduler_inputs = Vec::new();
            if inv.kube_version().facts().scheduler_config_api.is_some() {
                let tpl = "kube-scheduler/kube-scheduler-config.yaml";
                let restarts: &[&str] = if static_pods {
                    &[]
                } else {
                    &["kube-scheduler.service"]
                };
                let f = Action::rendered(
                    "/etc/kubernetes/kube-scheduler-config.yaml",
                    0o644,
                    tpl,
                    ctx.render.render(tpl, &vars)?,
                    restarts,
                );
                if let Action::File {
                    path,
                    sha256: Some(sha),
                    ..
                } = &f
                {
                    scheduler_inputs.push((path.clone(), sha.clone()));
                }
                a.push(f);
            }
            for c in COMPONENTS {
                if static_pods {
                    // A changed input file changes the manifest, so the kubelet replaces the pod.
                    let inputs: &[(String, String)] = match c {
                        "kube-apiserver" => &rendered,
                        "kube-scheduler" => &scheduler_inputs,
                        _ => &[],
                    };
                    a.push(static_pods::manifest(ctx, h, c, inputs)?);
                    continue;
                }
                a.push(unit_action(ctx, h, c)?);
            }
            if !static_pods {
                for c in COMPONENTS {
                    a.push(Action::service(&format!("{c}.service")));
                }
            }
            plan.host(h, a);
        }
        if static_pods && !plan.hosts.is_empty() {
            plan.notes.push(
                "static-pods mode: containerd and the kubelet start here first; the kubelet runs the control plane from /etc/kubernetes/manifests".into(),
            );
            plan.notes
                .extend(static_pods::image_notes(ctx, &COMPONENTS)?);
        }
        Ok(plan)
    }
    fn running_check(&self, ctx: &Context, _host: &Host) -> Option<crate::engine::Shell> {
        // Static pods: the control plane runs where its manifests are (on etcd hosts the
        // kubelet runs already: fresh apiservers still start together).
        ctx.inv()
            .static_pods()
            .then(|| static_pods::running_check(&COMPONENTS))
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let mut report = Vec::new();
            if ctx.inv().static_pods() {
                // The kubelet replaces a changed pod on its own time (after the old one's
                // grace period): wait for the new processes, else the old apiserver would
                // answer /readyz and the next host would go while this one restarts.
                report =
                    static_pods::wait_replaced(exec, host, &COMPONENTS, Duration::from_secs(120))
                        .await?;
            }
            let client = ctx.admin_http()?;
            crate::kube::http::wait_ok(
                &client,
                &crate::kube::readyz_url(ctx.inv(), host),
                Duration::from_secs(180),
            )
            .await?;
            // Then through what clients use: the balancers take a backend in only after its
            // /readyz has passed their own check (local-proxy mode: the first apiserver of
            // this machine's list that answers).
            let endpoints = crate::kube::operator_endpoints(ctx.inv());
            crate::kube::wait_until(
                "/readyz through the cluster endpoint",
                Duration::from_secs(30),
                Duration::from_secs(1),
                || async {
                    Ok(match crate::kube::first_ready(&client, &endpoints).await {
                        Ok(_) => crate::kube::Wait::Done(()),
                        Err(e) => crate::kube::Wait::Pending(e),
                    })
                },
            )
            .await
            .context("through the cluster endpoint")?;
            Ok(report)
        })
    }
}
