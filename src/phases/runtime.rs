//! runtime: containerd (and runc) on every node, configured from `templates/containerd/`:
//! the kubelet's cgroup driver, the sandbox image, registry mirrors; then the bundle's images
//! imported offline into the `k8s.io` namespace. The packages themselves come with `prepare`.

use crate::bundle::Kind;
use crate::engine::{Action, Context, Order, Phase, PhasePlan};
use crate::inventory::Host;
use crate::render::host_vars;

pub struct Runtime;

/// Waits up to 10 s for containerd's socket to answer.
const WAIT_CONTAINERD: &str = "for i in 1 2 3 4 5 6 7 8 9 10; do ctr -n k8s.io version >/dev/null 2>&1 && exit 0; sleep 1; done; ctr -n k8s.io version 2>&1";

/// containerd on `h`, configured, running and answering, with the bundle's images the host
/// needs imported (the static-pod images only in static-pods mode). The runtime phase plans
/// this on every node; in static-pods mode the etcd and control-plane phases plan the same
/// actions first on their hosts (their kubelet runs the static pods), so the runtime phase
/// finds nothing left to do there.
pub fn host_actions(ctx: &Context, h: &Host) -> anyhow::Result<Vec<Action>> {
    let inv = ctx.inv();
    let vars = host_vars(inv, h);
    // containerd 1.x reads config version 2, 2.x version 3: the minor's facts say which the
    // bundle ships.
    let tpl = inv.kube_version().facts().containerd_template();
    let mut a = vec![
        Action::dir("/etc/containerd", 0o755),
        Action::dir("/etc/containerd/certs.d", 0o755),
        Action::rendered(
            "/etc/containerd/config.toml",
            0o644,
            tpl,
            ctx.render.render(tpl, &vars)?,
            &["containerd.service"],
        ),
    ];
    for m in crate::render::registry_mirrors(inv) {
        let mut v = vars.clone();
        v.insert("mirror", &m);
        let registry = &m.registry;
        let dir = format!("/etc/containerd/certs.d/{registry}");
        a.push(Action::dir(&dir, 0o755));
        // containerd reads hosts.toml on each pull: no restart.
        a.push(Action::rendered(
            format!("{dir}/hosts.toml"),
            0o644,
            "containerd/hosts.toml",
            ctx.render.render("containerd/hosts.toml", &v)?,
            &[],
        ));
    }
    a.push(Action::service("containerd.service"));
    // Right after a (re)start the socket takes a moment: the imports need it.
    a.push(Action::check(
        "containerd answers on /run/containerd/containerd.sock",
        WAIT_CONTAINERD,
    ));
    // Each image is imported unless containerd lists it now (`ctr images ls`, not only a
    // marker of an earlier import): one the kubelet's GC or a user removed comes back on
    // the next run.
    a.extend(super::prepare::image_actions(&bundle_image_items(ctx, h)?)?);
    Ok(a)
}

/// The bundle's images `h` needs in containerd (`prepare::items_for` chooses them: the
/// control plane's only in static-pods mode, at the cluster's versions).
fn bundle_image_items<'m>(
    ctx: &'m Context,
    h: &Host,
) -> anyhow::Result<Vec<&'m crate::bundle::Item>> {
    Ok(super::prepare::items_for(ctx, h)?
        .into_iter()
        .filter(|i| i.kind == Kind::Image)
        .collect())
}

/// The references of the bundle's images `h` needs in containerd; `status` flags a node
/// that lacks one (a node without a registry cannot pull it back).
pub fn bundle_images(ctx: &Context, h: &Host) -> anyhow::Result<Vec<String>> {
    Ok(bundle_image_items(ctx, h)?
        .into_iter()
        .filter_map(|i| i.image.clone())
        .collect())
}

/// The command that lists the image references containerd holds for the kubelet.
pub const LIST_IMAGES: &str = "ctr -n k8s.io images ls -q";

/// Of `wanted`, those not among the lines of `listed` (the output of [`LIST_IMAGES`]).
pub fn missing_images(wanted: &[String], listed: &str) -> Vec<String> {
    let have: std::collections::BTreeSet<&str> = listed.lines().map(str::trim).collect();
    wanted
        .iter()
        .filter(|w| !have.contains(w.as_str()))
        .cloned()
        .collect()
}

impl Phase for Runtime {
    fn name(&self) -> &'static str {
        "runtime"
    }
    fn summary(&self) -> &'static str {
        "containerd configured for the kubelet, images imported from the bundle"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        // A restart of containerd leaves running containers alone, but nodes that serve
        // workloads still go one at a time behind the gate (see `running_check`).
        let mut plan = PhasePlan::new(self, Order::Rolling);
        for h in ctx.hosts_where(|h| ctx.inv().runs_kubelet(h)) {
            plan.host(h, host_actions(ctx, h)?);
        }
        if ctx.bundle.is_none() {
            plan.notes.push(
                "no bundle: containerd and runc must already be installed, images are pulled"
                    .into(),
            );
        }
        Ok(plan)
    }
    /// A node "runs" what this phase manages when its kubelet is up or a container runs. An
    /// active containerd alone does not count: its package starts it on install, and fresh
    /// nodes, with nothing on them, then configure together instead of one at a time.
    fn running_check(&self, _ctx: &Context, _host: &Host) -> Option<crate::engine::Shell> {
        Some(
            "systemctl is-active --quiet kubelet.service || [ -n \"$(ctr -n k8s.io tasks ls -q 2>/dev/null)\" ]"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_images_are_those_containerd_does_not_list() {
        let wanted = vec![
            "k8s.gcr.io/pause:3.2".to_string(),
            "docker.io/library/busybox:1.35.0".to_string(),
        ];
        let listed = "docker.io/library/busybox:1.35.0\nsha256:0123\n";
        assert_eq!(
            super::missing_images(&wanted, listed),
            ["k8s.gcr.io/pause:3.2"]
        );
        assert!(
            super::missing_images(
                &wanted,
                "k8s.gcr.io/pause:3.2\ndocker.io/library/busybox:1.35.0"
            )
            .is_empty()
        );
    }

    #[test]
    fn static_pod_images_by_repository() {
        assert!(crate::phases::static_pods::is_control_plane_image(
            "k8s.gcr.io/kube-apiserver:v1.20.2"
        ));
        assert!(crate::phases::static_pods::is_control_plane_image(
            "registry.example.cn:5000/k8s/etcd:3.4.23-0"
        ));
        assert!(!crate::phases::static_pods::is_control_plane_image(
            "k8s.gcr.io/pause:3.2"
        ));
        assert!(!crate::phases::static_pods::is_control_plane_image(
            "docker.io/library/busybox:1.35.0"
        ));
    }
}
