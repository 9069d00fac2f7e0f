//! Phase `addons`: CoreDNS, metrics-server and the inventory's extra manifests, applied through
//! the API (server-side apply as `clusterctl`) once the control plane serves it. No host is
//! touched. A re-run reports every object unchanged; a dry run asks the API server what would
//! change (`dryRun=All`) and changes nothing.
//!
//! Waiting for pods: an add-on's Deployment is waited for (up to `spec.addons.waitTimeoutSecs`)
//! only when its image can run: with `waitForPods: auto` (default) when the image is an image
//! item of the offline bundle, with `always` regardless (images from a registry or mirror),
//! never with `never`. Otherwise the report says why it did not wait.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;

use crate::engine::{Context, Order, Phase, PhasePlan};
use crate::inventory::WaitForPods;
use crate::kube::{self, Applied, Change, Client, Object, Summary, Wait, manifest};
use crate::render::addons::{COREDNS, METRICS_SERVER, addon_vars};

pub struct Addons;

/// One manifest the phase applies.
struct AddonManifest {
    /// `coredns`, `metrics-server`, or `extra manifest <path as written>`.
    name: String,
    /// Where its text came from: a template path or a file.
    origin: String,
    objects: Vec<Object>,
    /// The image its Deployments run (built-in add-ons only: extra manifests are not waited
    /// for).
    image: Option<String>,
}

impl AddonManifest {
    fn deployments(&self) -> Vec<(String, String)> {
        self.objects
            .iter()
            .filter(|o| o.kind() == "Deployment" && o.api_version() == "apps/v1")
            .map(|o| {
                (
                    o.namespace().unwrap_or("default").to_string(),
                    o.name().to_string(),
                )
            })
            .collect()
    }
}

/// Rendered and parsed, in apply order: CoreDNS, metrics-server, then each extra manifest.
fn manifests(ctx: &Context) -> anyhow::Result<Vec<AddonManifest>> {
    let inv = ctx.inv();
    let a = &inv.spec.addons;
    let vars = addon_vars(inv);
    let mut out = Vec::new();
    let builtin = [
        (a.coredns.enabled, "coredns", COREDNS, inv.coredns_image()),
        (
            a.metrics_server.enabled,
            "metrics-server",
            METRICS_SERVER,
            inv.metrics_server_image(),
        ),
    ];
    for (enabled, name, template, image) in builtin {
        if !enabled {
            continue;
        }
        let text = ctx.render.render(template, &vars)?;
        let origin = format!("templates/{template}");
        out.push(AddonManifest {
            name: name.to_string(),
            objects: manifest::parse(&text, &origin)?,
            origin,
            image: Some(image),
        });
    }
    for p in &a.extra_manifests {
        let path: PathBuf = ctx.loaded.resolve(p);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("spec.addons.extraManifests: reading {}", path.display()))?;
        let origin = path.display().to_string();
        out.push(AddonManifest {
            name: format!("extra manifest {}", p.display()),
            objects: manifest::parse(&text, &origin)?,
            origin,
            image: None,
        });
    }
    Ok(out)
}

/// `k8s.gcr.io/coredns:1.7.0` as containerd names it: a registry host (docker.io when none),
/// `library/` for official Docker Hub images, and `:latest` when neither tag nor digest is given.
fn normalize_image(r: &str) -> String {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let mut full = match name.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    if !last.contains(':') && digest.is_none() {
        full.push_str(":latest");
    }
    if let Some(d) = digest {
        full.push('@');
        full.push_str(d);
    }
    full
}

/// Why the phase will not wait for an add-on's pods, or None when it will.
fn no_wait_reason(ctx: &Context, image: &str) -> Option<String> {
    match ctx.inv().spec.addons.wait_for_pods {
        WaitForPods::Never => Some("spec.addons.waitForPods is never".into()),
        WaitForPods::Always => None,
        WaitForPods::Auto => {
            let want = normalize_image(image);
            let in_bundle = ctx.bundle.as_ref().is_some_and(|b| {
                b.manifest.items.iter().any(|it| {
                    it.kind == crate::bundle::Kind::Image
                        && it.image.as_deref().map(normalize_image).as_deref() == Some(&want)
                })
            });
            match (&ctx.bundle, in_bundle) {
                (_, true) => None,
                (Some(_), false) => Some(format!("image {image} is not in the bundle")),
                (None, false) => Some(format!(
                    "image {image} is not in the bundle (spec.bundle is not set)"
                )),
            }
        }
    }
}

fn dry_run_lines(m: &AddonManifest, applied: &[Applied]) -> Vec<String> {
    let mut lines = vec![format!("{} (dry run): {}", m.name, Summary::of(applied))];
    for a in applied {
        match a.change {
            Change::Created => lines.push(format!("  would create {}", a.object)),
            Change::Changed => lines.push(format!("  would change {}", a.object)),
            Change::Unchanged => {}
        }
    }
    lines
}

async fn wait_available(
    client: &Client,
    addon: &str,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let what = format!("{addon}: Deployment {ns}/{name} available");
    let status = kube::wait_until(&what, timeout, Duration::from_secs(2), || async {
        let s = client.deployment_status(ns, name).await?;
        Ok(if s.available {
            Wait::Done(s.summary)
        } else {
            Wait::Pending(s.summary)
        })
    })
    .await
    .with_context(|| {
        format!("see `kubectl -n {ns} describe deployment {name}` and `kubectl -n {ns} get pods`")
    })?;
    Ok(format!(
        "{addon}: Deployment {ns}/{name} available ({status}) after {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}

impl Phase for Addons {
    fn name(&self) -> &'static str {
        "addons"
    }
    fn summary(&self) -> &'static str {
        "CoreDNS, metrics-server and extra manifests, applied through the API"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for m in manifests(ctx)? {
            plan.local.push(format!(
                "apply {}: {} object{} from {} (server-side apply as {})",
                m.name,
                m.objects.len(),
                if m.objects.len() == 1 { "" } else { "s" },
                m.origin,
                kube::FIELD_MANAGER
            ));
            if let Some(img) = &m.image
                && !m.deployments().is_empty()
            {
                match no_wait_reason(ctx, img) {
                    Some(why) => plan.notes.push(format!(
                        "{}: not waiting for pods: {why}; `spec.addons.waitForPods: always` waits anyway",
                        m.name
                    )),
                    None => plan.local.push(format!(
                        "wait up to {} s for {} to be available",
                        ctx.inv().spec.addons.wait_timeout.as_secs(),
                        m.deployments()
                            .iter()
                            .map(|(ns, n)| format!("Deployment {ns}/{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
        }
        Ok(plan)
    }

    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let all = manifests(ctx)?;
            if all.is_empty() {
                return Ok(vec!["no add-ons enabled and no extra manifests".into()]);
            }
            let client = match ctx.kube_admin() {
                Ok(c) => c,
                Err(e) if dry_run => {
                    return Ok(unreachable_dry_run(&all, &e));
                }
                Err(e) => return Err(e),
            };
            if dry_run && let Err(e) = client.get("/version").await {
                return Ok(unreachable_dry_run(&all, &e));
            }
            let mut lines = Vec::new();
            for m in &all {
                let applied = client
                    .apply_objects(&m.objects, dry_run)
                    .await
                    .with_context(|| format!("applying {}", m.name))?;
                if dry_run {
                    lines.extend(dry_run_lines(m, &applied));
                } else {
                    lines.push(format!("{}: {}", m.name, Summary::of(&applied)));
                }
            }
            if dry_run {
                return Ok(lines);
            }
            let timeout = ctx.inv().spec.addons.wait_timeout;
            for m in &all {
                let (Some(img), deployments) = (&m.image, m.deployments()) else {
                    continue;
                };
                if deployments.is_empty() {
                    continue;
                }
                if let Some(why) = no_wait_reason(ctx, img) {
                    lines.push(format!("{}: not waiting for pods: {why}", m.name));
                    continue;
                }
                for (ns, name) in deployments {
                    lines.push(wait_available(&client, &m.name, &ns, &name, timeout).await?);
                }
            }
            Ok(lines)
        })
    }
}

/// A dry run before the control plane exists (a first `init --dry-run`): say what would be
/// applied instead of failing.
fn unreachable_dry_run(all: &[AddonManifest], e: &anyhow::Error) -> Vec<String> {
    let mut lines = vec![format!(
        "the API is not reachable yet ({e:#}): nothing could be checked"
    )];
    for m in all {
        lines.push(format!(
            "{} (dry run): would apply {} objects",
            m.name,
            m.objects.len()
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_compare_as_containerd_names_them() {
        assert_eq!(
            normalize_image("k8s.gcr.io/coredns:1.7.0"),
            "k8s.gcr.io/coredns:1.7.0"
        );
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("coredns/coredns:1.7.0"),
            "docker.io/coredns/coredns:1.7.0"
        );
        assert_eq!(
            normalize_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalize_image("k8s.gcr.io/pause@sha256:abc"),
            "k8s.gcr.io/pause@sha256:abc"
        );
    }
}

#[cfg(test)]
mod context_tests {
    use super::*;
    use crate::engine::BundleRef;

    fn ctx(addons: &str, bundle_images: &[&str]) -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("extra.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: shop}\n",
        )
        .unwrap();
        let text = format!(
            "apiVersion: clusterctl.io/v1alpha1\nkind: Cluster\nmetadata: {{name: t}}\nspec:\n  kubernetesVersion: v1.20.2\n  hosts:\n    - {{name: n1, address: 10.77.0.11, roles: [etcd, control-plane, worker]}}\n  addons:\n    extraManifests: [extra.yaml]\n{addons}"
        );
        let loaded = crate::inventory::load_str(&text, &dir.path().join("inventory.yaml"))
            .unwrap_or_else(|d| panic!("{d}"));
        let bundle = (!bundle_images.is_empty()).then(|| {
            let items: String = bundle_images
                .iter()
                .enumerate()
                .map(|(i, r)| format!("  - {{name: img{i}, version: '1', kind: image, url: 'file:///x', image: '{r}', roles: [worker], hashSource: t}}\n"))
                .collect();
            BundleRef {
                path: dir.path().join("b.tar.zst"),
                manifest: serde_saphyr::from_str(&format!("name: b\nversion: '1'\nitems:\n{items}"))
                    .unwrap(),
                trust: crate::bundle::Trust::UnsignedAllowed,
            }
        });
        let state = crate::state::StateDir::new(dir.path(), "t");
        let ctx = Context {
            loaded,
            state,
            render: crate::render::Renderer::new(None).unwrap(),
            host_filter: vec![],
            bundle,
            options: Default::default(),
            facts: Default::default(),
        };
        (dir, ctx)
    }

    #[test]
    fn plan_names_each_manifest_with_its_object_count_and_touches_no_host() {
        let (_d, c) = ctx("", &[]);
        let plan = Addons.plan(&c).unwrap();
        assert!(plan.hosts.is_empty());
        assert_eq!(plan.local.len(), 3, "{:?}", plan.local);
        assert!(
            plan.local[0]
                .starts_with("apply coredns: 6 objects from templates/addons/coredns.yaml"),
            "{}",
            plan.local[0]
        );
        assert!(plan.local[1].starts_with("apply metrics-server: 9 objects"));
        assert!(plan.local[2].starts_with("apply extra manifest extra.yaml: 2 objects"));
        assert_eq!(
            plan.notes[0],
            "coredns: not waiting for pods: image k8s.gcr.io/coredns:1.7.0 is not in the bundle (spec.bundle is not set); `spec.addons.waitForPods: always` waits anyway"
        );
    }

    #[test]
    fn waits_only_for_images_that_can_run() {
        let (_d, c) = ctx("", &["k8s.gcr.io/coredns:1.7.0"]);
        assert_eq!(no_wait_reason(&c, "k8s.gcr.io/coredns:1.7.0"), None);
        assert_eq!(
            no_wait_reason(&c, "k8s.gcr.io/metrics-server/metrics-server:v0.5.2").as_deref(),
            Some("image k8s.gcr.io/metrics-server/metrics-server:v0.5.2 is not in the bundle")
        );
        let plan = Addons.plan(&c).unwrap();
        assert!(
            plan.local
                .iter()
                .any(|l| l == "wait up to 300 s for Deployment kube-system/coredns to be available"),
            "{:?}",
            plan.local
        );
        let (_d, c) = ctx("    waitForPods: always\n", &[]);
        assert_eq!(no_wait_reason(&c, "anything:1"), None);
        let (_d, c) = ctx(
            "    waitForPods: never\n    coredns: {enabled: false}\n",
            &["k8s.gcr.io/coredns:1.7.0"],
        );
        assert!(no_wait_reason(&c, "k8s.gcr.io/coredns:1.7.0").is_some());
        let plan = Addons.plan(&c).unwrap();
        assert!(
            plan.local[0].starts_with("apply metrics-server"),
            "coredns disabled"
        );
    }
}
