//! prepare: kernel settings, directories, and the bundle's binaries and packages each host's
//! roles need (content-addressed: nothing is sent that the host already has).

use std::collections::BTreeMap;

use crate::bundle::{Item, Kind};
use crate::engine::{Action, Cmd, Context, Mode, Order, Phase, PhasePlan, Script, Shell, Source};
use crate::inventory::{HaMode, Host, Inventory, ProtectKernelDefaults, Role};
use crate::render::host_vars;
use futures::future::BoxFuture;

use super::kernel::{self, KernelFacts, Stage};

pub struct Prepare;

/// The module names of modules-kubernetes.conf, read on the host.
macro_rules! modules_list {
    () => {
        "$(grep -v '^#' /etc/modules-load.d/kubernetes.conf)"
    };
}

/// Applies the sysctl.d file `path` (`sysctl -p`), skipped when every setting in it already
/// has its value. `warn_only`: a failure is a warning (a container cannot set most of them).
fn apply_sysctl_file(description: &str, path: &str, warn_only: bool) -> Action {
    Action::Run {
        description: description.into(),
        command: Cmd::new("sysctl")
            .args(["-q", "-p", path])
            .raw("2>&1")
            .into(),
        unless: Some(sysctls_match(path)),
        warn_only,
    }
}

/// Succeeds when every setting of the sysctl.d file `path` already has its value.
pub(crate) fn sysctls_match(path: &str) -> Shell {
    const MATCH: &str = r#"grep -v '^#' "$1" | tr -d ' ' | while IFS='=' read -r k v; do
  [ -z "$k" ] || [ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || exit 1; done"#;
    Script::new(MATCH).arg(path).into()
}

/// Where .deb items wait on a host before dpkg installs them.
pub const DEB_DIR: &str = "/var/cache/clusterctl/debs";

/// Roles used to pick bundle items: a host that runs a load balancer for the HA mode (the VIP
/// holders, or every node in local-proxy mode) needs the `lb` items too, an etcd-only node
/// (static-pods mode) the worker's.
pub fn bundle_roles(inv: &Inventory, h: &Host) -> Vec<Role> {
    let mut roles = h.roles.clone();
    let runs_lb = match inv.spec.ha.mode {
        HaMode::Vip => inv.lb_hosts().iter().any(|l| l.name == h.name),
        HaMode::LocalProxy => inv.runs_kubelet(h),
        HaMode::External => false,
    };
    if runs_lb && !roles.contains(&Role::Lb) {
        roles.push(Role::Lb);
    }
    // An etcd-only node of static-pods mode needs what every node needs (containerd, runc,
    // kubelet, kube-proxy, CNI plugins, pause): the worker's items.
    if inv.is_etcd_only_node(h) {
        roles.push(Role::Worker);
    }
    roles
}

/// Which version of a component to take when the bundle holds several.
pub fn pins(inv: &Inventory) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    let k = inv.spec.kubernetes_version.to_string();
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
    ] {
        p.insert(c.to_string(), k.clone());
    }
    if let Some(v) = &inv.spec.etcd.version {
        p.insert("etcd".into(), v.to_string());
        p.insert("etcdctl".into(), v.to_string());
    }
    p
}

/// The bundle items `h` needs, in the manifest's order.
pub fn items_for<'m>(ctx: &'m Context, h: &Host) -> anyhow::Result<Vec<&'m Item>> {
    let Some(b) = &ctx.bundle else {
        return Ok(Vec::new());
    };
    let inv = ctx.inv();
    let mut pins = pins(inv);
    // The manifest may write versions with or without the leading v: accept both.
    for (name, v) in pins.clone() {
        if !b
            .manifest
            .items
            .iter()
            .any(|i| i.name == name && i.version == v)
        {
            let alt = v
                .strip_prefix('v')
                .map(str::to_string)
                .unwrap_or_else(|| format!("v{v}"));
            if b.manifest
                .items
                .iter()
                .any(|i| i.name == name && i.version == alt)
            {
                pins.insert(name, alt);
            } else if !b.manifest.items.iter().any(|i| i.name == name)
                || b.manifest.items.iter().filter(|i| i.name == name).count() == 1
            {
                pins.remove(&name);
            }
        }
    }
    // The control plane's images: the ones the static-pods phases choose for the cluster's
    // versions (by reference), so a bundle holding two versions of them (what an upgrade
    // moves between) needs no other pin.
    for comp in RUN_FROM_IMAGES {
        let Ok(chosen) = super::static_pods::image(ctx, comp) else {
            continue;
        };
        if let Some(it) = b
            .manifest
            .items
            .iter()
            .find(|i| i.kind == Kind::Image && i.image.as_deref() == Some(chosen.as_str()))
        {
            pins.insert(it.name.clone(), it.version.clone());
        }
    }
    let mut items = crate::bundle::items_for_roles(&b.manifest, &bundle_roles(inv, h), &pins)
        .map_err(|e| {
            anyhow::anyhow!(
                "host {}: {e} (set spec.etcd.version or spec.kubernetesVersion to pick)",
                h.name
            )
        })?;
    if inv.spec.ha.mode != HaMode::Vip {
        items.retain(|i| i.name != "keepalived");
    }
    // Static pods run etcd and the control plane from their images: their binaries would be
    // sent (~300 MB per host) and never run. etcdctl and kubectl stay: clusterctl's health
    // checks and backups use them on the host.
    // In systemd mode their images are never run: not sent either.
    if inv.static_pods() {
        items.retain(|i| i.kind != Kind::Binary || !RUN_FROM_IMAGES.contains(&i.name.as_str()));
    } else {
        items.retain(|i| {
            i.kind != Kind::Image
                || !super::static_pods::is_control_plane_image(i.image.as_deref().unwrap_or(""))
        });
    }
    Ok(items)
}

/// The programs that static-pods mode runs from their images, not from a binary on the host.
pub const RUN_FROM_IMAGES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Where archive items wait on a host before they are unpacked.
pub const ARCHIVE_DIR: &str = "/var/cache/clusterctl/archives";
/// Where image tarballs wait on a host; markers of imported ones are in `IMAGE_MARKS`.
pub const IMAGE_DIR: &str = "/var/cache/clusterctl/images";
pub const IMAGE_MARKS: &str = "/var/lib/clusterctl/images";

/// The bundle item `it` as the file `path` on a host (sent only when its sha256 differs).
fn item_file(it: &Item, path: &str, mode: u32) -> Action {
    Action::File {
        path: path.to_string(),
        mode: Mode(mode),
        source: Source::Bundle { item: it.label() },
        sha256: it.sha256.clone(),
        size: it.size,
        restarts: Vec::new(),
    }
}

fn cache_name(it: &Item, ext: &str) -> String {
    format!("{}_{}.{ext}", it.name, it.version.replace(':', "%3a"))
}

/// An archive item unpacked into its `install.path`: sent once (content-addressed), unpacked
/// unless the marker of this exact archive is there.
pub fn archive_actions(it: &Item) -> anyhow::Result<Vec<Action>> {
    let (Some(install), Some(sha)) = (&it.install, &it.sha256) else {
        anyhow::bail!(
            "bundle item {}: an archive needs install.path and sha256",
            it.label()
        );
    };
    let ext = if it.url.ends_with(".tar") {
        "tar"
    } else {
        "tar.gz"
    };
    let file = format!("{ARCHIVE_DIR}/{}", cache_name(it, ext));
    let mark = format!("{}/.clusterctl-{}-{}", install.path, it.name, &sha[..16]);
    // Arguments: the archive, the directory, the item's name, the marker of this version.
    const UNPACK: &str =
        r#"tar -xf "$1" -C "$2" --no-same-owner 2>&1 && rm -f "$2/.clusterctl-$3-"* && touch "$4""#;
    Ok(vec![
        Action::dir(ARCHIVE_DIR, 0o755),
        Action::dir(&install.path, 0o755),
        item_file(it, &file, 0o644),
        Action::run(
            &format!("unpack {} into {}", it.label(), install.path),
            Script::new(UNPACK)
                .arg(&file)
                .arg(&install.path)
                .arg(&it.name)
                .arg(&mark),
            Some(Cmd::new("test").arg("-e").arg(&mark).into()),
        ),
    ])
}

/// Image items imported into containerd's `k8s.io` namespace (where the kubelet's images
/// live): each tarball sent once, imported unless this exact tarball was imported before and
/// its reference is still there. Needs containerd running.
pub fn image_actions(items: &[&Item]) -> anyhow::Result<Vec<Action>> {
    let mut a = Vec::new();
    if items.is_empty() {
        return Ok(a);
    }
    a.push(Action::dir(IMAGE_DIR, 0o755));
    a.push(Action::dir(IMAGE_MARKS, 0o755));
    for it in items {
        let (Some(image), Some(sha)) = (&it.image, &it.sha256) else {
            anyhow::bail!(
                "bundle item {}: an image needs `image` and sha256",
                it.label()
            );
        };
        let file = format!("{IMAGE_DIR}/{}", cache_name(it, "tar"));
        let mark = format!("{IMAGE_MARKS}/{sha}");
        a.push(item_file(it, &file, 0o644));
        // Arguments: the tarball, the image reference, the marker of this tarball.
        const IMPORT: &str = r#"ctr -n k8s.io images import "$1" 2>&1 && ctr -n k8s.io images ls -q | grep -qxF -e "$2" && echo "$2" > "$3""#;
        // Not a marker alone: the image itself must still be there (garbage collection or a
        // `crictl rmi` removes it, and an air-gapped node cannot pull it back).
        const IMPORTED: &str = r#"test -e "$2" && ctr -n k8s.io images ls -q | grep -qxF -e "$1""#;
        a.push(Action::run(
            &format!("import image {image}"),
            Script::new(IMPORT).arg(&file).arg(image).arg(&mark),
            Some(Script::new(IMPORTED).arg(image).arg(&mark).into()),
        ));
    }
    Ok(a)
}

fn bundle_actions(items: &[&Item]) -> Vec<Action> {
    let mut a = Vec::new();
    let mut debs = Vec::new();
    for it in items {
        match it.kind {
            Kind::Binary => {
                let Some(install) = &it.install else { continue };
                a.push(item_file(it, &install.path, it.mode().unwrap_or(0o755)));
            }
            Kind::Deb => {
                let file = format!(
                    "{DEB_DIR}/{}_{}.deb",
                    it.name,
                    it.version.replace(':', "%3a")
                );
                a.push(item_file(it, &file, 0o644));
                debs.push((it.name.clone(), it.version.clone(), file));
            }
            // Archives, images and add-on manifests are installed by the phases that use them.
            _ => {}
        }
    }
    if !debs.is_empty() {
        // Arguments: pairs of package name and version; installed when each is at its version.
        const INSTALLED: &str = r#"while [ $# -gt 0 ]; do
  [ "$(dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null)" = "install ok installed $2" ] || exit 1; shift 2
done"#;
        a.push(Action::run(
            &format!(
                "install {} package(s) from the bundle with dpkg",
                debs.len()
            ),
            Cmd::new("env")
                .args([
                    "DEBIAN_FRONTEND=noninteractive",
                    "dpkg",
                    "-i",
                    "--force-confold",
                ])
                .args(debs.iter().map(|(_, _, f)| f))
                .raw("2>&1"),
            Some(
                Script::new(INSTALLED)
                    .args(debs.iter().flat_map(|(n, v, _)| [n, v]))
                    .into(),
            ),
        ));
    }
    a
}

impl Phase for Prepare {
    fn name(&self) -> &'static str {
        "prepare"
    }
    fn summary(&self) -> &'static str {
        "sysctls, kernel modules, directories, and the bundle's binaries and packages"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        match &ctx.bundle {
            None => plan.notes.push(
                "no bundle (spec.bundle): binaries and packages must already be on the hosts"
                    .into(),
            ),
            Some(b) => plan.notes.push(format!(
                "bundle {} {} ({}): {}",
                b.manifest.name,
                b.manifest.version,
                b.path.display(),
                b.trust
            )),
        }
        for h in ctx.hosts_where(|_| true) {
            let vars = host_vars(ctx.inv(), h);
            let sysctl = ctx.render.render("system/sysctl-kubernetes.conf", &vars)?;
            let modules = ctx.render.render("system/modules-kubernetes.conf", &vars)?;
            let mut actions = vec![
                Action::dir("/etc/kubernetes", 0o755),
                Action::dir("/etc/kubernetes/pki", 0o700),
                Action::dir("/usr/local/bin", 0o755),
                Action::dir(DEB_DIR, 0o755),
                Action::rendered(
                    "/etc/modules-load.d/kubernetes.conf",
                    0o644,
                    "system/modules-kubernetes.conf",
                    modules,
                    &[],
                ),
                Action::rendered(
                    "/etc/sysctl.d/90-kubernetes.conf",
                    0o644,
                    "system/sysctl-kubernetes.conf",
                    sysctl,
                    &[],
                ),
                // In a container (the lab, LXC) modules cannot be loaded and only net.* sysctls
                // can be set: warn, don't fail.
                Action::Run {
                    description: "load kernel modules".into(),
                    command: concat!(
                        "for m in ",
                        modules_list!(),
                        "; do [ -d \"/sys/module/$m\" ] || modprobe \"$m\" 2>&1 || exit 1; done"
                    )
                    .into(),
                    unless: Some(
                        concat!(
                            "for m in ",
                            modules_list!(),
                            "; do [ -d \"/sys/module/$m\" ] || exit 1; done"
                        )
                        .into(),
                    ),
                    warn_only: true,
                },
                apply_sysctl_file("apply sysctls", "/etc/sysctl.d/90-kubernetes.conf", true),
            ];
            if ctx.inv().runs_kubelet(h) {
                actions.extend(kubelet_tunables(ctx, h, &mut plan.notes));
            }
            actions.extend(bundle_actions(&items_for(ctx, h)?));
            plan.host(h, actions);
        }
        Ok(plan)
    }
    /// After applying: the kernel settings the kubelet checks are read back again, the fact
    /// the kubelet phase plans `protectKernelDefaults` from (see `kernel`).
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn crate::engine::Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if !ctx.inv().runs_kubelet(host) {
                return Ok(vec![]);
            }
            kernel::read_into_facts(ctx, exec, host, Stage::Applied).await?;
            Ok(vec![])
        })
    }
}

/// A node's sysctl.d file with the kernel settings the kubelet checks, and their apply: not
/// where `kubelet.protectKernelDefaults` is false or where preflight found the host cannot
/// write them (a container: writing there would only fail `systemd-sysctl` at every boot).
/// The apply is fatal only when the inventory forces protectKernelDefaults on.
fn kubelet_tunables(ctx: &Context, h: &Host, notes: &mut Vec<String>) -> Vec<Action> {
    let setting = ctx.inv().spec.kubelet.protect_kernel_defaults;
    if setting == ProtectKernelDefaults::Off {
        return Vec::new();
    }
    let facts = ctx
        .facts
        .get(&h.name, kernel::FACT)
        .map(|f| KernelFacts::from_fact(&f));
    if let Some(why) = facts.as_ref().and_then(KernelFacts::cannot_set) {
        notes.push(format!(
            "{}: {} not written: {why}",
            h.name,
            kernel::SYSCTL_FILE
        ));
        return Vec::new();
    }
    vec![
        Action::rendered(
            kernel::SYSCTL_FILE,
            0o644,
            "(built in: phases/kernel.rs)",
            kernel::sysctl_file(),
            &[],
        ),
        apply_sysctl_file(
            "apply the kernel settings the kubelet checks",
            kernel::SYSCTL_FILE,
            setting != ProtectKernelDefaults::On,
        ),
    ]
}
