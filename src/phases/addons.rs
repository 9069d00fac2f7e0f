//! Phase `addons`: CoreDNS, metrics-server and the inventory's extra manifests, applied through
//! the API (server-side apply as `clusterctl`) once the control plane serves it. No host is
//! touched. A re-run reports every object unchanged; a dry run asks the API server what would
//! change (`dryRun=All`) and changes nothing.
//!
//! An add-on whose pods cannot run must not break the cluster: an aggregated APIService
//! (metrics-server's `v1beta1.metrics.k8s.io`) that nothing serves makes every kubectl call
//! print discovery errors and blocks namespace deletion. So, per built-in add-on ([`decide`]):
//! - its image is an image item of the offline bundle (or `waitForPods: always`): applied, its
//!   Deployments waited for (up to `spec.addons.waitTimeout`), then its APIServices registered;
//! - the bundle lacks its image and no registry mirror is configured for the image's registry
//!   (an offline node cannot pull it): skipped, with the reason;
//! - otherwise (no bundle, a mirror, a chosen image, `waitForPods: never`): applied without
//!   waiting; its APIServices are registered only when its Deployments are already Available
//!   (a later run registers them).
//!
//! An APIService of a built-in add-on that is registered but unavailable (an older clusterctl
//! registered it unconditionally) is removed whenever the add-on is not known to run. The
//! report ends with one `add-on NAME: ...` line per built-in add-on: whether it runs, and why
//! not; `init` repeats them at its end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;

use crate::engine::runner::RunReport;
use crate::engine::{Context, Order, Phase, PhasePlan};
use crate::inventory::WaitForPods;
use crate::inventory::types::{MirrorUrl, RegistryHost};
use crate::kube::{self, Applied, Change, Client, Object, Summary, Wait, manifest};
use crate::render::addons::{COREDNS, METRICS_SERVER, addon_vars};

pub struct Addons;

/// The start of the report's line per built-in add-on (see [`summary_lines`]).
pub const ADDON_LINE: &str = "add-on ";

/// One manifest the phase applies.
pub struct AddonManifest {
    /// `coredns`, `metrics-server`, or `extra manifest <path as written>`.
    pub name: String,
    /// Where its text came from: a template path or a file.
    origin: String,
    objects: Vec<Object>,
    /// The image its Deployments run (built-in add-ons only: extra manifests are not waited
    /// for, and their APIServices are theirs to manage).
    image: Option<String>,
    /// Whether the inventory chose the image (`spec.addons.*.image`).
    image_chosen: bool,
}

impl AddonManifest {
    /// `(namespace, name)` of its Deployments.
    pub fn deployments(&self) -> Vec<(String, String)> {
        self.of_kind("Deployment", "apps/v1")
    }

    /// `(namespace, name)` of its Services.
    pub fn services(&self) -> Vec<(String, String)> {
        self.of_kind("Service", "v1")
    }

    /// The APIServices a built-in add-on registers only once its Deployments are available.
    pub fn gated_api_services(&self) -> Vec<String> {
        if self.image.is_none() {
            return Vec::new();
        }
        self.objects
            .iter()
            .filter(|o| o.kind() == "APIService")
            .map(|o| o.name().to_string())
            .collect()
    }

    fn of_kind(&self, kind: &str, api_version: &str) -> Vec<(String, String)> {
        self.objects
            .iter()
            .filter(|o| o.kind() == kind && o.api_version() == api_version)
            .map(|o| {
                (
                    o.namespace().unwrap_or("default").to_string(),
                    o.name().to_string(),
                )
            })
            .collect()
    }

    /// (applied at once, registered once its Deployments are available).
    fn split(&self) -> (Vec<Object>, Vec<Object>) {
        let gated = self.gated_api_services();
        self.objects
            .iter()
            .cloned()
            .partition(|o| !(o.kind() == "APIService" && gated.iter().any(|g| g == o.name())))
    }

    fn deployments_text(&self) -> String {
        self.deployments()
            .iter()
            .map(|(ns, n)| format!("Deployment {ns}/{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Rendered and parsed, in apply order: CoreDNS, metrics-server, then each extra manifest.
pub fn manifests(ctx: &Context) -> anyhow::Result<Vec<AddonManifest>> {
    let inv = ctx.inv();
    let a = &inv.spec.addons;
    let vars = addon_vars(inv);
    let mut out = Vec::new();
    let builtin = [
        (
            a.coredns.enabled,
            "coredns",
            COREDNS,
            inv.coredns_image(),
            a.coredns.image.is_some(),
        ),
        (
            a.metrics_server.enabled,
            "metrics-server",
            METRICS_SERVER,
            inv.metrics_server_image(),
            a.metrics_server.image.is_some(),
        ),
    ];
    for (enabled, name, template, image, chosen) in builtin {
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
            image_chosen: chosen,
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
            image_chosen: false,
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

/// The registry host an image is pulled from (`k8s.gcr.io`, `docker.io`).
fn registry_of(image: &str) -> String {
    normalize_image(image)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What a run does with a built-in add-on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Apply, wait for its Deployments, then register its APIServices.
    Wait,
    /// Apply without waiting (why not); register its APIServices only if its Deployments are
    /// already available.
    NoWait(String),
    /// Apply nothing: its pods could not run (why). An unavailable APIService of it that an
    /// earlier run registered is removed.
    Skip(String),
}

/// The decision for an add-on running `image`: `in_bundle` is None without a bundle (the
/// nodes pull from registries), else whether the bundle has the image; `chosen` when the
/// inventory set the image (a registry the operator picked); `mirrors` is
/// `spec.containerRuntime.registryMirrors`.
pub fn decide(
    wait: WaitForPods,
    image: &str,
    in_bundle: Option<bool>,
    chosen: bool,
    mirrors: &BTreeMap<RegistryHost, Vec<MirrorUrl>>,
) -> Decision {
    match (wait, in_bundle) {
        (WaitForPods::Never, _) => Decision::NoWait("spec.addons.waitForPods is never".into()),
        (WaitForPods::Always, _) | (WaitForPods::Auto, Some(true)) => Decision::Wait,
        (WaitForPods::Auto, None) => Decision::NoWait(format!(
            "image {image} is not in the bundle (spec.bundle is not set)"
        )),
        (WaitForPods::Auto, Some(false)) => {
            let registry = registry_of(image);
            if mirrors.contains_key(registry.as_str()) || mirrors.contains_key("_default") {
                Decision::NoWait(format!(
                    "image {image} is not in the bundle; the nodes pull it through the mirror configured for {registry}"
                ))
            } else if chosen {
                Decision::NoWait(format!(
                    "image {image} (set in the inventory) is not in the bundle; the nodes pull it from {registry}"
                ))
            } else {
                Decision::Skip(format!(
                    "image {image} is not in the bundle and no registry mirror is configured for {registry} (spec.containerRuntime.registryMirrors), so its pods could not start; add the image to the bundle, or set a mirror or `spec.addons.waitForPods: always`"
                ))
            }
        }
    }
}

/// [`decide`] for one of the run's manifests (None: an extra manifest).
pub fn decision(ctx: &Context, m: &AddonManifest) -> Option<Decision> {
    let image = m.image.as_deref()?;
    let want = normalize_image(image);
    let in_bundle = ctx.bundle.as_ref().map(|b| {
        b.manifest.items.iter().any(|it| {
            it.kind == crate::bundle::Kind::Image
                && it.image.as_deref().map(normalize_image).as_deref() == Some(&want)
        })
    });
    let inv = ctx.inv();
    Some(decide(
        inv.spec.addons.wait_for_pods,
        image,
        in_bundle,
        m.image_chosen,
        &inv.spec.container_runtime.registry_mirrors,
    ))
}

/// The `add-on NAME: ...` lines of a run's addons phase, for the end of its summary.
pub fn summary_lines(report: &RunReport) -> Vec<String> {
    report
        .phases
        .iter()
        .filter(|p| p.phase == "addons")
        .flat_map(|p| p.cluster.iter())
        .filter(|l| l.starts_with(ADDON_LINE))
        .cloned()
        .collect()
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

/// Removes `name` when it is registered and unavailable (nothing serves it, and every API
/// discovery fails on it); an available one is left: something serves it.
async fn remove_unserved(
    client: &Client,
    addon: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    match client.api_service(name).await? {
        Some(a) if !a.available => {
            client
                .delete_api_service(name)
                .await
                .with_context(|| format!("{addon}: removing APIService {name}"))?;
            Ok(Some(format!(
                "{addon}: removed APIService {name} that nothing serves ({}): it broke API discovery",
                a.why
            )))
        }
        _ => Ok(None),
    }
}

/// The add-on's Deployments as they are now: (all available, `ns/name: summary` each).
async fn deployments_now(client: &Client, m: &AddonManifest) -> anyhow::Result<(bool, String)> {
    let mut all = true;
    let mut seen = Vec::new();
    for (ns, name) in m.deployments() {
        let s = client.deployment_status(&ns, &name).await?;
        all &= s.available;
        seen.push(format!("Deployment {ns}/{name} {}", s.summary));
    }
    Ok((all, seen.join("; ")))
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
            let gated = m.gated_api_services();
            let d = decision(ctx, &m);
            if let Some(Decision::Skip(why)) = &d {
                plan.notes.push(format!("{}: skipped: {why}", m.name));
                continue;
            }
            let now = m.objects.len() - gated.len();
            plan.local.push(format!(
                "apply {}: {} object{} from {} (server-side apply as {})",
                m.name,
                now,
                if now == 1 { "" } else { "s" },
                m.origin,
                kube::FIELD_MANAGER
            ));
            if m.deployments().is_empty() {
                continue;
            }
            match &d {
                Some(Decision::NoWait(why)) => {
                    plan.notes.push(format!(
                        "{}: not waiting for pods: {why}; `spec.addons.waitForPods: always` waits anyway",
                        m.name
                    ));
                    for a in &gated {
                        plan.notes.push(format!(
                            "{}: APIService {a} is registered only when {} is available",
                            m.name,
                            m.deployments_text()
                        ));
                    }
                }
                Some(Decision::Wait) => {
                    plan.local.push(format!(
                        "wait up to {} s for {} to be available",
                        ctx.inv().spec.addons.wait_timeout.as_secs(),
                        m.deployments_text()
                    ));
                    for a in &gated {
                        plan.local.push(format!("then register APIService {a}"));
                    }
                }
                _ => {}
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
            let decisions: Vec<Option<Decision>> = all.iter().map(|m| decision(ctx, m)).collect();
            let mut lines = Vec::new();
            for (m, d) in all.iter().zip(&decisions) {
                if let Some(Decision::Skip(why)) = d {
                    lines.push(format!("{}: skipped: {why}", m.name));
                    continue;
                }
                let (now, gated) = m.split();
                let applied = client
                    .apply_objects(&now, dry_run)
                    .await
                    .with_context(|| format!("applying {}", m.name))?;
                if dry_run {
                    lines.extend(dry_run_lines(m, &applied));
                    for a in &gated {
                        lines.push(format!(
                            "  would register APIService {} once {} is available",
                            a.name(),
                            m.deployments_text()
                        ));
                    }
                } else {
                    lines.push(format!("{}: {}", m.name, Summary::of(&applied)));
                }
            }
            if dry_run {
                return Ok(lines);
            }
            let timeout = ctx.inv().spec.addons.wait_timeout;
            let mut verdicts = Vec::new();
            for (m, d) in all.iter().zip(&decisions) {
                let Some(d) = d else { continue };
                let (_, gated) = m.split();
                let verdict = match d {
                    Decision::Skip(why) => {
                        for a in &gated {
                            lines.extend(remove_unserved(&client, &m.name, a.name()).await?);
                        }
                        format!("NOT running: skipped: {why}")
                    }
                    Decision::Wait => {
                        for (ns, name) in m.deployments() {
                            lines
                                .push(wait_available(&client, &m.name, &ns, &name, timeout).await?);
                        }
                        register(&client, m, &gated, &mut lines).await?;
                        let (_, seen) = deployments_now(&client, m).await?;
                        format!("running ({seen})")
                    }
                    Decision::NoWait(why) => {
                        lines.push(format!("{}: not waiting for pods: {why}", m.name));
                        let (available, seen) = deployments_now(&client, m).await?;
                        if available {
                            register(&client, m, &gated, &mut lines).await?;
                            format!("running ({seen})")
                        } else {
                            for a in &gated {
                                lines.extend(remove_unserved(&client, &m.name, a.name()).await?);
                            }
                            let held: Vec<&str> = gated.iter().map(|a| a.name()).collect();
                            format!(
                                "NOT running yet ({seen}): {why}{}",
                                if held.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        "; APIService {} is not registered until then (a re-run registers it)",
                                        held.join(", ")
                                    )
                                }
                            )
                        }
                    }
                };
                verdicts.push(format!("{ADDON_LINE}{}: {verdict}", m.name));
            }
            lines.extend(verdicts);
            Ok(lines)
        })
    }
}

/// Registers an add-on's gated APIServices (its Deployments are available).
async fn register(
    client: &Client,
    m: &AddonManifest,
    gated: &[Object],
    lines: &mut Vec<String>,
) -> anyhow::Result<()> {
    if gated.is_empty() {
        return Ok(());
    }
    let applied = client
        .apply_objects(gated, false)
        .await
        .with_context(|| format!("registering the APIService of {}", m.name))?;
    lines.push(format!(
        "{}: APIService {} registered ({})",
        m.name,
        gated
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(", "),
        Summary::of(&applied)
    ));
    Ok(())
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
        assert!(plan.local[1].starts_with("apply metrics-server: 8 objects"));
        assert!(plan.local[2].starts_with("apply extra manifest extra.yaml: 2 objects"));
        assert_eq!(
            plan.notes[0],
            "coredns: not waiting for pods: image k8s.gcr.io/coredns:1.7.0 is not in the bundle (spec.bundle is not set); `spec.addons.waitForPods: always` waits anyway"
        );
    }

    fn builtin<'a>(all: &'a [AddonManifest], name: &str) -> &'a AddonManifest {
        all.iter().find(|m| m.name == name).unwrap()
    }

    #[test]
    fn waits_only_for_images_that_can_run_and_skips_those_that_cannot() {
        let (_d, c) = ctx("", &["k8s.gcr.io/coredns:1.7.0"]);
        let all = manifests(&c).unwrap();
        assert_eq!(decision(&c, builtin(&all, "coredns")), Some(Decision::Wait));
        let Some(Decision::Skip(why)) = decision(&c, builtin(&all, "metrics-server")) else {
            panic!("metrics-server's image is not in the bundle: skipped")
        };
        assert!(
            why.starts_with("image k8s.gcr.io/metrics-server/metrics-server:v0.5.2 is not in the bundle and no registry mirror is configured for k8s.gcr.io"),
            "{why}"
        );
        assert_eq!(decision(&c, all.last().unwrap()), None, "extra manifests");
        let plan = Addons.plan(&c).unwrap();
        assert_eq!(
            plan.local[..2],
            [
                "apply coredns: 6 objects from templates/addons/coredns.yaml (server-side apply as clusterctl)",
                "wait up to 300 s for Deployment kube-system/coredns to be available",
            ]
        );
        assert_eq!(plan.local.len(), 3, "metrics-server is not applied at all");
        assert!(plan.local[2].starts_with("apply extra manifest extra.yaml: 2 objects"));
        assert!(
            plan.notes[0].starts_with("metrics-server: skipped: image k8s.gcr.io/metrics-server"),
            "{:?}",
            plan.notes
        );
        // A mirror for the image's registry: applied, not waited for, the APIService held back.
        let (_d, c) = ctx(
            "  containerRuntime:\n    registryMirrors: {k8s.gcr.io: ['https://mirror.example.cn']}\n",
            &["k8s.gcr.io/coredns:1.7.0"],
        );
        let plan = Addons.plan(&c).unwrap();
        assert!(
            plan.local
                .iter()
                .any(|l| l.starts_with("apply metrics-server: 8 objects")),
            "{:?}",
            plan.local
        );
        assert!(
            plan.notes.iter().any(|n| n
                == "metrics-server: APIService v1beta1.metrics.k8s.io is registered only when Deployment kube-system/metrics-server is available"),
            "{:?}",
            plan.notes
        );
        let (_d, c) = ctx("    waitForPods: always\n", &[]);
        let all = manifests(&c).unwrap();
        assert_eq!(
            decision(&c, builtin(&all, "metrics-server")),
            Some(Decision::Wait)
        );
        let plan = Addons.plan(&c).unwrap();
        assert!(
            plan.local
                .iter()
                .any(|l| l == "then register APIService v1beta1.metrics.k8s.io"),
            "{:?}",
            plan.local
        );
        let (_d, c) = ctx(
            "    waitForPods: never\n    coredns: {enabled: false}\n",
            &["k8s.gcr.io/coredns:1.7.0"],
        );
        let all = manifests(&c).unwrap();
        assert!(matches!(
            decision(&c, builtin(&all, "metrics-server")),
            Some(Decision::NoWait(_))
        ));
        let plan = Addons.plan(&c).unwrap();
        assert!(
            plan.local[0].starts_with("apply metrics-server"),
            "coredns disabled"
        );
    }

    #[test]
    fn the_decision_table() {
        let none = BTreeMap::new();
        let img = "k8s.gcr.io/metrics-server/metrics-server:v0.5.2";
        use WaitForPods::*;
        assert_eq!(decide(Auto, img, Some(true), false, &none), Decision::Wait);
        assert_eq!(
            decide(Always, img, Some(false), false, &none),
            Decision::Wait
        );
        assert_eq!(decide(Always, img, None, false, &none), Decision::Wait);
        assert!(
            matches!(decide(Never, img, Some(true), false, &none), Decision::NoWait(w) if w.contains("never"))
        );
        // No bundle: the nodes pull from the registry; not waited for, not skipped.
        assert!(
            matches!(decide(Auto, img, None, false, &none), Decision::NoWait(w) if w.contains("spec.bundle is not set"))
        );
        // A bundle without the image, nowhere to pull it from: skipped.
        assert!(matches!(
            decide(Auto, img, Some(false), false, &none),
            Decision::Skip(_)
        ));
        // ... unless a mirror serves its registry (or every registry), or the operator chose it.
        let mirror =
            |k: &str| BTreeMap::from([(k.parse().unwrap(), vec!["https://m".parse().unwrap()])]);
        assert!(
            matches!(decide(Auto, img, Some(false), false, &mirror("k8s.gcr.io")), Decision::NoWait(w) if w.contains("mirror configured for k8s.gcr.io"))
        );
        assert!(matches!(
            decide(Auto, img, Some(false), false, &mirror("_default")),
            Decision::NoWait(_)
        ));
        assert!(matches!(
            decide(Auto, img, Some(false), false, &mirror("docker.io")),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide(
                Auto,
                "coredns/coredns:1.8.0",
                Some(false),
                false,
                &mirror("docker.io")
            ),
            Decision::NoWait(_)
        ));
        assert!(
            matches!(decide(Auto, img, Some(false), true, &none), Decision::NoWait(w) if w.contains("set in the inventory"))
        );
    }

    #[test]
    fn only_builtin_api_services_are_held_back() {
        let (_d, c) = ctx("", &[]);
        let all = manifests(&c).unwrap();
        let ms = builtin(&all, "metrics-server");
        assert_eq!(ms.gated_api_services(), ["v1beta1.metrics.k8s.io"]);
        let (now, gated) = ms.split();
        assert_eq!((now.len(), gated.len()), (8, 1));
        assert!(now.iter().all(|o| o.kind() != "APIService"));
        let extra = AddonManifest {
            name: "extra".into(),
            origin: "x".into(),
            objects: ms.objects.clone(),
            image: None,
            image_chosen: false,
        };
        assert!(extra.gated_api_services().is_empty());
        assert_eq!(extra.split().0.len(), 9);
    }
}
