//! `spec.controlPlane.mode: static-pods` (kubeadm's layout): etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler as static pods under /etc/kubernetes/manifests,
//! run by the host's kubelet. The etcd and control-plane phases use what is here; the flags
//! come from the same `<component>.flags` templates as the systemd units.
//!
//! - Images: the bundle's image item of the component's repository ([`choose_image`]).
//! - Restarts: a manifest carries the sha256 of every file its component loads
//!   (`clusterctl.io/inputs`, [`inputs_hash`]), so a re-issued certificate changes the manifest
//!   and the kubelet replaces the pod, as `systemctl restart` does in systemd mode.
//! - Gates: the kubelet replaces a pod on its own time, so a gate first waits until the
//!   component's process is younger than its manifest ([`wait_replaced`]), then checks health;
//!   otherwise it could pass on the old process and let the next host go.
//! - No mixing: a host running a component under the other mode is refused before anything is
//!   written ([`mode_guard`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::bundle::{Item, Kind};
use crate::engine::MANIFESTS;
use crate::engine::{Action, Context, Executor, Script, Shell};
use crate::inventory::{Host, Inventory, Role};
use crate::render::component_vars;
use crate::version::KubeVersion;

/// `Phase::gather` of the etcd and control-plane phases: in static-pods mode they write the
/// kubelet's unit on the hosts of `role` (the kubelet runs their pods), so they read the facts
/// it renders from, as the kubelet phase does ([`super::kubelet::gather_for`]).
pub fn gather_kubelet_facts<'a>(
    ctx: &'a Context,
    exec: &'a dyn Executor,
    role: Role,
) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
    let hosts = if ctx.inv().static_pods() {
        ctx.hosts_where(|h| h.has(role))
    } else {
        Vec::new()
    };
    super::kubelet::gather_for(ctx, exec, hosts)
}

/// `/etc/kubernetes/manifests/<component>.yaml`
pub fn manifest_path(component: &str) -> String {
    format!("{MANIFESTS}/{component}.yaml")
}

/// `repo/path/name:tag@digest` -> (`name`, `tag`): the repository's last path element and the
/// tag (empty when there is none). A registry's port is not a tag.
pub fn repo_and_tag(reference: &str) -> (&str, &str) {
    let r = reference.split('@').next().unwrap_or("");
    let (repo, tag) = match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (r, ""),
    };
    (repo.rsplit('/').next().unwrap_or(repo), tag)
}

/// `k8s.gcr.io/kube-apiserver:v1.20.2` -> true: an image of the static-pod control plane (the
/// repository's last path element is etcd or a kube-* control-plane program).
pub fn is_control_plane_image(reference: &str) -> bool {
    crate::phases::prepare::RUN_FROM_IMAGES.contains(&repo_and_tag(reference).0)
}

fn strip_v(s: &str) -> &str {
    s.strip_prefix('v').unwrap_or(s)
}

/// The image `component` runs from, among the references of the bundle's image items: the one
/// of its repository tagged with the cluster's version (etcd: with `spec.etcd.version` when
/// set, e.g. 3.4.23 picks `3.4.23-0`; else the only one); none of that repository: kubeadm's
/// default reference for the version (the kubelet then pulls it). Several etcd images and no
/// `spec.etcd.version`, or a pinned version the bundle lacks, is an error, never a silent pick.
pub fn choose_image(
    refs: &[&str],
    component: &str,
    version: KubeVersion,
    etcd_version: Option<&str>,
) -> anyhow::Result<String> {
    let candidates: Vec<&str> = refs
        .iter()
        .copied()
        .filter(|r| repo_and_tag(r).0 == component)
        .collect();
    if candidates.is_empty() {
        return Ok(version.default_image(component));
    }
    let tags = || {
        candidates
            .iter()
            .map(|r| repo_and_tag(r).1)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if component != "etcd" {
        let want = version.to_string();
        return Ok(candidates
            .iter()
            .find(|r| strip_v(repo_and_tag(r).1) == strip_v(&want))
            .map(|r| r.to_string())
            .unwrap_or_else(|| version.default_image(component)));
    }
    match (etcd_version, candidates.as_slice()) {
        (Some(pin), _) => {
            let pin = strip_v(pin);
            candidates
                .iter()
                .find(|r| {
                    let tag = strip_v(repo_and_tag(r).1);
                    tag == pin || tag.strip_prefix(pin).is_some_and(|s| s.starts_with('-'))
                })
                .map(|r| r.to_string())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "spec.etcd.version is {pin}, but the bundle's etcd images are {}",
                        tags()
                    )
                })
        }
        (None, [one]) => Ok(one.to_string()),
        (None, _) => anyhow::bail!(
            "the bundle holds several etcd images ({}): set spec.etcd.version to pick one",
            tags()
        ),
    }
}

/// [`choose_image`] over the bundle of the run (no bundle: kubeadm's defaults).
pub fn image(ctx: &Context, component: &str) -> anyhow::Result<String> {
    let refs: Vec<&str> = ctx
        .bundle
        .iter()
        .flat_map(|b| b.manifest.items.iter())
        .filter(|i: &&Item| i.kind == Kind::Image)
        .filter_map(|i| i.image.as_deref())
        .collect();
    let inv = ctx.inv();
    choose_image(
        &refs,
        component,
        inv.kube_version(),
        inv.spec.etcd.version.as_deref(),
    )
}

/// The files `component` loads on `h`, as (path on the host, where its bytes are locally): the
/// PKI files and kubeconfigs whose change restarts `<component>.service` in systemd mode, and
/// the apiserver's encryption config.
fn local_inputs(ctx: &Context, h: &Host, component: &str) -> Vec<(String, PathBuf)> {
    let inv = ctx.inv();
    let unit = format!("{component}.service");
    let mut v: Vec<(String, PathBuf)> = crate::pki::files_for_host(inv, h)
        .into_iter()
        .filter(|f| super::pki::units_for(&f.remote).contains(&unit.as_str()))
        .map(|f| {
            (
                f.remote.to_string_lossy().into_owned(),
                ctx.state.root.join(&f.local),
            )
        })
        .collect();
    if component == "kube-apiserver" && inv.spec.control_plane.encrypt_secrets {
        v.push((
            "/etc/kubernetes/encryption-config.yaml".into(),
            ctx.state.pki().join(super::pki::ENCRYPTION_CONFIG),
        ));
    }
    v
}

/// sha256 over the path and content hash of every file `component` loads on `h` (a file not
/// generated yet counts as absent), plus `rendered` (path, sha256) pairs of rendered files.
pub fn inputs_hash(
    ctx: &Context,
    h: &Host,
    component: &str,
    rendered: &[(String, String)],
) -> anyhow::Result<String> {
    let mut lines: Vec<String> = rendered.iter().map(|(p, s)| format!("{p} {s}")).collect();
    for (remote, local) in local_inputs(ctx, h, component) {
        let sha = match std::fs::metadata(&local) {
            Ok(_) => crate::hashing::hash_file(&local)?.0,
            Err(_) => "absent".into(),
        };
        lines.push(format!("{remote} {sha}"));
    }
    lines.sort();
    Ok(crate::engine::sha256_hex(lines.join("\n").as_bytes()))
}

/// The static pod of `component` on `h`: `/etc/kubernetes/manifests/<component>.yaml`, mode
/// 0600 like kubeadm's. No restart: the kubelet replaces the pod when the file changes.
/// `rendered` are the (path, sha256) of rendered files the component loads (the audit policy).
pub fn manifest(
    ctx: &Context,
    h: &Host,
    component: &str,
    rendered: &[(String, String)],
) -> anyhow::Result<Action> {
    let mut vars = if component == "etcd" {
        super::etcd::vars(ctx, h)?
    } else {
        component_vars(&ctx.render, ctx.inv(), h, component)?
    };
    vars.insert("image", &image(ctx, component)?);
    vars.insert("inputs", &inputs_hash(ctx, h, component, rendered)?);
    let tpl = format!("{component}/{component}.yaml");
    let text = ctx.render.render(&tpl, &vars)?;
    Ok(Action::rendered(
        manifest_path(component),
        0o600,
        &tpl,
        text,
        &[],
    ))
}

/// A guard (a check that opens the host's plan, run before anything changes): none of
/// `components` may run on the host under the other control-plane mode. clusterctl does not
/// switch a running host between modes: both would bind the same ports and the same etcd data
/// directory, and the switch would need the old member stopped before the new one starts.
pub fn mode_guard(inv: &Inventory, components: &[&str]) -> Action {
    if inv.static_pods() {
        Action::check(
            &format!(
                "no {} systemd unit here (spec.controlPlane.mode is static-pods, and clusterctl does not switch a host between modes: keep `mode: systemd` for this cluster, or reset the host)",
                components.join("/")
            ),
            Script::new(
                r#"bad=; for c in "$@"; do if systemctl is-active --quiet "$c.service" || [ -e "/etc/systemd/system/$c.service" ]; then bad="$bad $c.service"; fi; done
[ -z "$bad" ] || { echo "found$bad"; exit 1; }"#,
            )
            .args(components),
        )
    } else {
        Action::check(
            &format!(
                "no {} static pod here (spec.controlPlane.mode is systemd, and clusterctl does not switch a host between modes: keep `mode: static-pods` for this cluster, or reset the host)",
                components.join("/")
            ),
            Script::new(
                r#"m=$1; shift; bad=; for c in "$@"; do [ -e "$m/$c.yaml" ] && bad="$bad $m/$c.yaml"; done
[ -z "$bad" ] || { echo "found$bad"; exit 1; }"#,
            )
            .arg(MANIFESTS)
            .args(components),
        )
    }
}

/// For the rolling order: succeeds when one of `components` has a manifest on the host.
pub fn running_check(components: &[&str]) -> Shell {
    Script::new(r#"for m in "$@"; do [ -e "$m" ] && exit 0; done; exit 1"#)
        .args(components.iter().map(|c| manifest_path(c)))
        .into()
}

/// The shell script behind [`wait_replaced`]: succeeds once every component with a manifest
/// has a process (its command line starts with the program's name, as the manifests run it)
/// and every such process started no earlier than the manifest's last change. Exits 3 at once,
/// printing `<component>:rejected: <the kubelet's line>`, when the running kubelet rejected the
/// component's pod at admission since its manifest changed: a kubelet never retries a static
/// pod it rejected (kubernetes/kubernetes#116484), so waiting longer cannot help.
fn replaced_script(manifests: &str, components: &[&str], within: Duration) -> Shell {
    // Arguments: seconds to wait, the manifest directory, the components. Static pods are
    // named `<component>-<node>`: kubelet 1.20 logs `Failed to admit pod etcd-h1_kube-system(…)`,
    // later ones `"Pod admission denied" … pod="kube-system/etcd-h1"`. Only the lines of the
    // kubelet running now count: a restarted kubelet admits every static pod again.
    const REPLACED: &str = r#"n=$1 dir=$2; shift 2
rejected() { k=$(systemctl show -p MainPID --value kubelet.service 2>/dev/null)
  [ -n "$k" ] && [ "$k" != 0 ] || return 1
  journalctl -u kubelet.service _PID="$k" --since "@$2" -o cat --no-pager 2>/dev/null |
    grep -E -m 1 "(Failed to admit pod|Pod admission denied).*[ /]$1-" | cut -c1-400; }
for i in $(seq "$n"); do stale=; now=$(date +%s)
  for c in "$@"; do m="$dir/$c.yaml"; [ -e "$m" ] || continue; mt=$(stat -c %Y "$m")
    pids=$(pgrep -f "^$c( |$)")
    if [ -z "$pids" ]; then r=$(rejected "$c" "$mt")
      [ -n "$r" ] && { echo "$c:rejected: $r"; exit 3; }
      stale="$stale $c:not-running"; continue; fi
    for p in $pids; do e=$(ps -o etimes= -p "$p" | tr -d ' ')
      [ -n "$e" ] && [ $((now - e)) -lt "$mt" ] && stale="$stale $c:pid-$p-older-than-its-manifest"; done
  done; [ -z "$stale" ] && exit 0; sleep 1; done; echo "$stale"; exit 1"#;
    Script::bash(REPLACED)
        .arg(within.as_secs().max(1))
        .arg(manifests)
        .args(components)
        .into()
}

/// What the script above exits with when the kubelet rejected a pod.
const REJECTED: i32 = 3;

/// Where the kubelet writes its pods' container logs (`<namespace>_<pod>_<uid>/<container>/`).
const POD_LOGS: &str = "/var/log/pods";

/// The shell script behind a failed [`wait_replaced`]: for each component, the last lines of
/// its newest container log (a crash says why here) and the kubelet's last lines naming it
/// (an image it could not get, a pod it would not admit); then the kubelet's own state and
/// last lines (a kubelet that does not run runs no pod). Always succeeds.
fn why_not_replaced_script(pod_logs: &str, components: &[&str]) -> Shell {
    // Arguments: the pod log directory, the components (static pods are `<component>-<node>`
    // in kube-system).
    // The kubelet's journal is read once, for every component and its own last lines.
    const WHY: &str = r#"dir=$1; shift
j=$(journalctl -u kubelet --no-pager -n 400 2>/dev/null)
for c in "$@"; do
  f=$(ls -t "$dir"/kube-system_"$c"-*/"$c"/*.log 2>/dev/null | head -n 1)
  if [ -n "$f" ]; then echo "$c's log ($f):"; tail -n 5 "$f" | cut -c1-300; fi
  k=$(printf '%s\n' "$j" | grep -F -- "$c" | tail -n 5 | cut -c1-300)
  if [ -n "$k" ]; then echo "the kubelet about $c:"; echo "$k"; fi
done
if command -v systemctl >/dev/null; then
  echo "kubelet.service: $(systemctl is-active kubelet.service 2>/dev/null), its last lines:"
  printf '%s\n' "$j" | tail -n 5 | cut -c1-300
fi; true"#;
    Script::new(WHY).arg(pod_logs).args(components).into()
}

/// Waits until the kubelet runs every one of `components` that has a manifest on `host` from
/// its current manifest: a process exists and none is older than the file. A health check
/// right after a manifest change would otherwise still reach the old, healthy process.
///
/// A pod the kubelet rejected at admission (e.g. a kubelet seconds old, whose node status
/// lacks a resource the pod requests) is never retried by that kubelet, and a re-run would
/// wait on it forever: the kubelet is restarted once, which admits every static pod again
/// (running containers keep running), and said in the returned lines.
pub async fn wait_replaced(
    exec: &dyn Executor,
    host: &Host,
    components: &[&str],
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let wait = replaced_script(MANIFESTS, components, within);
    let mut o = exec.query(host, &wait).await?;
    if o.status == REJECTED {
        let rejected = crate::diag::escape(o.stdout.trim());
        crate::console::host_step(
            &host.name,
            "restart kubelet.service (a rejected static pod)",
        );
        let restart = exec
            .change(
                host,
                &crate::ssh::shell::systemctl(&["restart"], ["kubelet.service"]).into(),
            )
            .await?;
        if restart.status != 0 {
            anyhow::bail!(
                "the kubelet on {} rejected a static pod ({rejected}), and `systemctl restart kubelet.service` failed: {}",
                host.name,
                restart.stderr.trim()
            );
        }
        lines.push(format!(
            "{}: the kubelet had rejected a static pod, which it never retries ({rejected}): restarted the kubelet",
            host.name
        ));
        o = exec.query(host, &wait).await?;
    }
    if o.status != 0 {
        // What the host says about it, so the error names the cause (best effort).
        let why = exec
            .query(host, &why_not_replaced_script(POD_LOGS, components))
            .await
            .map(|w| {
                // Log text reaches the operator's terminal: each line escaped.
                w.stdout
                    .trim_end()
                    .lines()
                    .map(crate::diag::escape)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        anyhow::bail!(
            "the kubelet on {} did not (re)start {} from the current manifest within {} s (still: {}); see `journalctl -u kubelet` there{}",
            host.name,
            components.join(", "),
            within.as_secs(),
            crate::diag::escape(o.stdout.trim()),
            if why.is_empty() {
                String::new()
            } else {
                format!("\n{why}")
            }
        );
    }
    Ok(lines)
}

/// Plan notes: which image each static pod runs.
pub fn image_notes(ctx: &Context, components: &[&str]) -> anyhow::Result<Vec<String>> {
    components
        .iter()
        .map(|c| {
            let img = image(ctx, c)?;
            let from_bundle = ctx.bundle.as_ref().is_some_and(|b| {
                b.manifest
                    .items
                    .iter()
                    .any(|i| i.image.as_deref() == Some(img.as_str()))
            });
            Ok(format!(
                "static pod {c}: image {img} ({})",
                if from_bundle {
                    "imported from the bundle"
                } else {
                    "kubeadm's default: not in the bundle, the kubelet pulls it"
                }
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> KubeVersion {
        "v1.20.2".parse().unwrap()
    }

    #[test]
    fn references_split_into_repository_name_and_tag() {
        assert_eq!(
            repo_and_tag("k8s.gcr.io/kube-apiserver:v1.20.2"),
            ("kube-apiserver", "v1.20.2")
        );
        assert_eq!(
            repo_and_tag("registry.example.cn:5000/k8s/etcd:3.4.23-0"),
            ("etcd", "3.4.23-0")
        );
        assert_eq!(repo_and_tag("registry.example.cn:5000/etcd"), ("etcd", ""));
        assert_eq!(
            repo_and_tag("k8s.gcr.io/etcd:3.4.13-0@sha256:abc"),
            ("etcd", "3.4.13-0")
        );
    }

    #[test]
    fn images_come_from_the_bundle_by_repository() {
        let refs = [
            "k8s.gcr.io/pause:3.2",
            "docker.io/library/busybox:1.35.0",
            "k8s.gcr.io/kube-apiserver:v1.20.2",
            "registry.example.cn:5000/k8s/kube-scheduler:v1.20.2",
            "k8s.gcr.io/kube-controller-manager:v1.19.7",
            "k8s.gcr.io/etcd:3.4.23-0",
        ];
        let img = |c: &str, pin: Option<&str>| choose_image(&refs, c, v(), pin);
        assert_eq!(
            img("kube-apiserver", None).unwrap(),
            "k8s.gcr.io/kube-apiserver:v1.20.2"
        );
        // Any registry: the repository's name decides.
        assert_eq!(
            img("kube-scheduler", None).unwrap(),
            "registry.example.cn:5000/k8s/kube-scheduler:v1.20.2"
        );
        // Another version only: kubeadm's reference for this one.
        assert_eq!(
            img("kube-controller-manager", None).unwrap(),
            "k8s.gcr.io/kube-controller-manager:v1.20.2"
        );
        assert_eq!(img("etcd", None).unwrap(), "k8s.gcr.io/etcd:3.4.23-0");
        assert_eq!(
            img("etcd", Some("3.4.23")).unwrap(),
            "k8s.gcr.io/etcd:3.4.23-0"
        );
        let e = img("etcd", Some("3.5.16")).unwrap_err().to_string();
        assert!(e.contains("3.5.16") && e.contains("3.4.23-0"), "{e}");
        // No bundle (or no such image in it): kubeadm's defaults.
        assert_eq!(
            choose_image(&[], "etcd", v(), None).unwrap(),
            "k8s.gcr.io/etcd:3.4.13-0"
        );
        assert_eq!(
            choose_image(&[], "kube-scheduler", v(), None).unwrap(),
            "k8s.gcr.io/kube-scheduler:v1.20.2"
        );
    }

    #[test]
    fn several_etcd_images_need_a_pin() {
        let refs = ["k8s.gcr.io/etcd:3.4.23-0", "k8s.gcr.io/etcd:3.5.16-0"];
        let e = choose_image(&refs, "etcd", v(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.etcd.version"), "{e}");
        assert_eq!(
            choose_image(&refs, "etcd", v(), Some("3.5.16")).unwrap(),
            "k8s.gcr.io/etcd:3.5.16-0"
        );
        // 3.5.1 is not 3.5.16.
        assert!(choose_image(&refs, "etcd", v(), Some("3.5.1")).is_err());
    }

    const INV: &str = "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  controlPlane:
    mode: static-pods
    apiserverExtraArgs: {oidc-groups-prefix: 'oidc:#x'}
  etcd: {version: 3.4.23, dataDir: /data/etcd}
  bundle: lab.tar.zst
  hosts:
    - {name: cp1, address: 10.77.0.11, roles: [etcd, control-plane]}
    - {name: cp2, address: 10.77.0.12, roles: [control-plane]}
    - {name: e1, address: 10.77.0.21, roles: [etcd]}
    - {name: w1, address: 10.77.0.31, roles: [worker]}
  ha: {mode: vip, vip: {address: 10.77.0.100}}
";

    /// The lab bundle's image items (and one binary, which is no image).
    fn bundle() -> crate::engine::BundleRef {
        let item = |name: &str, version: &str, image: &str, role: &str| {
            format!(
                "  - {{name: {name}, version: '{version}', kind: image, url: 'file:///x/{name}.tar', sha256: {sha}, size: 1, image: '{image}', roles: [{role}], hashSource: test}}\n",
                sha = crate::hashing::sha256_hex(name.as_bytes())
            )
        };
        let mut m = String::from("name: lab\nversion: '1'\nitems:\n");
        m += "  - {name: etcd, version: '3.4.23', kind: binary, url: 'file:///x/etcd', sha256: 0000000000000000000000000000000000000000000000000000000000000000, size: 1, install: {path: /usr/local/bin/etcd}, roles: [etcd], hashSource: test}\n";
        m += &item(
            "pause",
            "3.2",
            "k8s.gcr.io/pause:3.2",
            "control-plane, worker",
        );
        for c in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            m += &item(
                &format!("{c}-image"),
                "1.20.2",
                &format!("k8s.gcr.io/{c}:v1.20.2"),
                "control-plane",
            );
        }
        m += &item("etcd-image", "3.4.23-0", "k8s.gcr.io/etcd:3.4.23-0", "etcd");
        crate::engine::BundleRef {
            path: "lab.tar.zst".into(),
            manifest: crate::bundle::Manifest::from_yaml(&m).unwrap(),
            trust: crate::bundle::Trust::UnsignedAllowed,
        }
    }

    fn ctx(text: &str, dir: &std::path::Path) -> Context {
        let loaded = crate::inventory::load_str(text, &dir.join("inventory.yaml"))
            .unwrap_or_else(|d| panic!("{d}"));
        Context {
            state: crate::state::StateDir::new(dir, "t"),
            loaded,
            render: crate::render::Renderer::new(None).unwrap(),
            host_filter: vec![],
            bundle: Some(bundle()),
            options: Default::default(),
            facts: Default::default(),
        }
    }

    fn yaml(a: &Action) -> serde_json::Value {
        let Action::File {
            source: crate::engine::Source::Rendered { content, .. },
            ..
        } = a
        else {
            panic!("{a:?}")
        };
        serde_saphyr::from_str(std::str::from_utf8(content).unwrap()).unwrap()
    }

    /// The arguments of ExecStart= of a rendered unit (continued over `\` lines), unquoted
    /// as systemd does: double quotes, and `%%`/`$$` for a literal `%`/`$`.
    fn unit_args(unit: &str) -> Vec<String> {
        let start = unit.find("ExecStart=").unwrap() + "ExecStart=".len();
        let mut line = String::new();
        for l in unit[start..].lines() {
            let l = l.trim();
            line.push_str(l.trim_end_matches('\\'));
            line.push(' ');
            if !l.ends_with('\\') {
                break;
            }
        }
        shlex::split(&line)
            .unwrap()
            .into_iter()
            .map(|w| w.replace("%%", "%").replace("$$", "$"))
            .collect()
    }

    #[test]
    fn each_static_pod_runs_exactly_its_units_flags() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(INV, dir.path());
        let inv = c.inv();
        let cp1 = inv.host("cp1").unwrap();
        for comp in crate::render::FLAG_COMPONENTS {
            let vars = component_vars(&c.render, inv, cp1, comp).unwrap();
            let unit = c
                .render
                .render(&format!("{comp}/{comp}.service"), &vars)
                .unwrap();
            let args = unit_args(&unit);
            assert_eq!(args[0], format!("/usr/local/bin/{comp}"));
            let pod = yaml(&manifest(&c, cp1, comp, &[]).unwrap());
            let cmd: Vec<String> = pod["spec"]["containers"][0]["command"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            assert_eq!(cmd[0], comp, "the image's PATH finds the program");
            assert_eq!(cmd[1..], args[1..], "{comp}: pod and unit flags differ");
            assert!(cmd.len() > 5, "{comp}: {cmd:?}");
        }
    }

    #[test]
    fn manifests_have_kubeadms_layout() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(INV, dir.path());
        let cp1 = c.inv().host("cp1").unwrap();
        let mounts = |pod: &serde_json::Value| -> Vec<(String, String, bool)> {
            let vols = pod["spec"]["volumes"].as_array().unwrap();
            pod["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let v = vols
                        .iter()
                        .find(|v| v["name"] == m["name"])
                        .unwrap_or_else(|| panic!("no volume {}", m["name"]));
                    assert_eq!(v["hostPath"]["path"], m["mountPath"], "{m}");
                    (
                        m["mountPath"].as_str().unwrap().to_string(),
                        v["hostPath"]["type"].as_str().unwrap().to_string(),
                        m["readOnly"] == true,
                    )
                })
                .collect()
        };
        let has = |m: &[(String, String, bool)], path: &str| m.iter().any(|x| x.0 == path);
        for (comp, image) in [
            ("etcd", "k8s.gcr.io/etcd:3.4.23-0"),
            ("kube-apiserver", "k8s.gcr.io/kube-apiserver:v1.20.2"),
            (
                "kube-controller-manager",
                "k8s.gcr.io/kube-controller-manager:v1.20.2",
            ),
            ("kube-scheduler", "k8s.gcr.io/kube-scheduler:v1.20.2"),
        ] {
            let a = manifest(&c, cp1, comp, &[]).unwrap();
            let Action::File {
                path,
                mode,
                restarts,
                ..
            } = &a
            else {
                unreachable!()
            };
            assert_eq!(path, &format!("/etc/kubernetes/manifests/{comp}.yaml"));
            assert_eq!(mode.0, 0o600);
            assert!(restarts.is_empty(), "the kubelet restarts it, not systemd");
            let pod = yaml(&a);
            assert_eq!(pod["kind"], "Pod");
            assert_eq!(pod["metadata"]["name"], comp);
            assert_eq!(pod["metadata"]["namespace"], "kube-system");
            assert_eq!(pod["metadata"]["labels"]["tier"], "control-plane");
            assert_eq!(pod["spec"]["hostNetwork"], true);
            assert_eq!(pod["spec"]["priorityClassName"], "system-node-critical");
            let ctr = &pod["spec"]["containers"][0];
            assert_eq!(ctr["image"], image);
            assert_eq!(ctr["imagePullPolicy"], "IfNotPresent");
            assert!(ctr["livenessProbe"]["httpGet"].is_object(), "{comp}");
            assert!(ctr["startupProbe"]["httpGet"].is_object(), "{comp}");
            // A just-registered kubelet knows no ephemeral-storage yet and rejects, for good,
            // a static pod that requests some (kubernetes/kubernetes#99305).
            let requests = &ctr["resources"]["requests"];
            assert!(requests["cpu"].is_string(), "{comp}: {requests}");
            assert!(
                requests["ephemeral-storage"].is_null(),
                "{comp}: {requests}"
            );
            let inputs = pod["metadata"]["annotations"]["clusterctl.io/inputs"]
                .as_str()
                .unwrap();
            assert_eq!(inputs.len(), 64, "{comp}: {inputs}");
            let m = mounts(&pod);
            match comp {
                "etcd" => {
                    assert!(m.contains(&("/data/etcd".into(), "DirectoryOrCreate".into(), false)));
                    assert!(m.contains(&(
                        "/etc/kubernetes/pki/etcd".into(),
                        "DirectoryOrCreate".into(),
                        true
                    )));
                    let probe = &ctr["livenessProbe"]["httpGet"];
                    assert_eq!(
                        (&probe["host"], &probe["port"], &probe["path"]),
                        (&"127.0.0.1".into(), &2381.into(), &"/health".into())
                    );
                    let cmd = ctr["command"].to_string();
                    assert!(
                        cmd.contains("--listen-metrics-urls=http://127.0.0.1:2381"),
                        "{cmd}"
                    );
                }
                "kube-apiserver" => {
                    for p in [
                        "/etc/kubernetes/pki",
                        "/etc/kubernetes/audit-policy.yaml",
                        "/etc/kubernetes/encryption-config.yaml",
                    ] {
                        assert!(
                            m.contains(&(
                                p.into(),
                                if p.ends_with(".yaml") {
                                    "File"
                                } else {
                                    "DirectoryOrCreate"
                                }
                                .into(),
                                true
                            )),
                            "{p}: {m:?}"
                        );
                    }
                    assert!(m.contains(&(
                        "/var/log/kubernetes".into(),
                        "DirectoryOrCreate".into(),
                        false
                    )));
                    let probe = &ctr["readinessProbe"]["httpGet"];
                    assert_eq!(
                        (
                            &probe["host"],
                            &probe["port"],
                            &probe["path"],
                            &probe["scheme"]
                        ),
                        (
                            &"10.77.0.11".into(),
                            &6443.into(),
                            &"/readyz".into(),
                            &"HTTPS".into()
                        )
                    );
                    // A user's argument with YAML's special characters is one argument.
                    assert!(
                        ctr["command"]
                            .as_array()
                            .unwrap()
                            .contains(&"--oidc-groups-prefix=oidc:#x".into())
                    );
                }
                "kube-controller-manager" => {
                    assert!(has(&m, "/etc/kubernetes/controller-manager.conf"));
                    assert!(has(&m, "/etc/kubernetes/pki"));
                    assert_eq!(ctr["livenessProbe"]["httpGet"]["port"], 10257);
                }
                _ => {
                    assert_eq!(
                        m,
                        [(
                            "/etc/kubernetes/scheduler.conf".into(),
                            "FileOrCreate".into(),
                            true
                        )]
                    );
                    assert_eq!(ctr["livenessProbe"]["httpGet"]["port"], 10259);
                }
            }
        }
        // Without audit log and encryption: neither flag nor mount.
        let text = INV.replace(
            "    mode: static-pods\n",
            "    mode: static-pods\n    auditLog: false\n    encryptSecrets: false\n",
        );
        let c = ctx(&text, dir.path());
        let pod = yaml(&manifest(&c, c.inv().host("cp1").unwrap(), "kube-apiserver", &[]).unwrap());
        let m = mounts(&pod);
        assert!(!has(&m, "/etc/kubernetes/audit-policy.yaml"), "{m:?}");
        assert!(!has(&m, "/var/log/kubernetes"), "{m:?}");
        assert!(!has(&m, "/etc/kubernetes/encryption-config.yaml"), "{m:?}");
        let cmd = pod["spec"]["containers"][0]["command"].to_string();
        assert!(
            !cmd.contains("audit") && !cmd.contains("encryption"),
            "{cmd}"
        );
    }

    #[test]
    fn a_changed_file_a_component_loads_changes_only_its_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(INV, dir.path());
        let cp1 = c.inv().host("cp1").unwrap();
        let pki = c.state.pki();
        let write = |rel: &str, body: &str| {
            let p = c.state.root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        };
        write("pki/nodes/cp1/apiserver.crt", "one");
        write("pki/nodes/cp1/etcd/server.crt", "one");
        let all = || -> Vec<String> {
            crate::render::FLAG_COMPONENTS
                .iter()
                .map(|comp| inputs_hash(&c, cp1, comp, &[]).unwrap())
                .collect()
        };
        let before = all();
        write("pki/nodes/cp1/apiserver.crt", "two");
        let after = all();
        assert_eq!(
            before
                .iter()
                .zip(&after)
                .map(|(a, b)| a != b)
                .collect::<Vec<_>>(),
            [false, true, false, false],
            "apiserver.crt: only kube-apiserver"
        );
        write("pki/nodes/cp1/etcd/server.crt", "two");
        let leaf = all();
        assert_ne!(leaf[0], after[0], "etcd/server.crt: etcd");
        assert_eq!(leaf[1..], after[1..], "etcd/server.crt: etcd only");
        let after = leaf;
        write("pki/etcd/ca.crt", "two");
        let ca = all();
        assert_ne!(ca[0], after[0], "etcd/ca.crt: etcd");
        assert_ne!(ca[1], after[1], "etcd/ca.crt: kube-apiserver");
        write("pki/ca.key", "k");
        let now = all();
        assert_eq!(
            now.iter().zip(&all()).filter(|(a, b)| a != b).count(),
            0,
            "stable"
        );
        std::fs::write(pki.join("encryption-config.yaml"), "x").unwrap();
        assert_ne!(all()[1], now[1], "encryption config: kube-apiserver");
        // A rendered input (the audit policy) counts too.
        assert_ne!(
            inputs_hash(&c, cp1, "kube-apiserver", &[("/p".into(), "1".into())]).unwrap(),
            all()[1]
        );
    }

    fn actions(plan: &crate::engine::PhasePlan, host: &str) -> Vec<serde_json::Value> {
        plan.hosts
            .iter()
            .find(|h| h.host == host)
            .unwrap_or_else(|| panic!("{} has no plan for {host}", plan.phase))
            .actions
            .iter()
            .map(|a| serde_json::to_value(a).unwrap())
            .collect()
    }

    fn paths(actions: &[serde_json::Value]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| a["path"].as_str().or(a["unit"].as_str()))
            .map(String::from)
            .collect()
    }

    #[test]
    fn etcd_and_control_plane_phases_set_up_containerd_and_the_kubelet_first() {
        use crate::engine::Phase;
        use crate::phases::{control_plane::ControlPlane, etcd::Etcd, kubelet, runtime};
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(INV, dir.path());
        let etcd = Etcd.plan(&c).unwrap();
        let cp = ControlPlane.plan(&c).unwrap();
        let rt = runtime::Runtime.plan(&c).unwrap();
        let kl = kubelet::Kubelet.plan(&c).unwrap();
        // Every host with a kubelet, the etcd-only one included.
        let hosts = |p: &crate::engine::PhasePlan| -> Vec<String> {
            p.hosts.iter().map(|h| h.host.clone()).collect()
        };
        assert_eq!(hosts(&rt), ["cp1", "cp2", "e1", "w1"]);
        assert_eq!(hosts(&kl), hosts(&rt));
        assert_eq!(hosts(&etcd), ["cp1", "e1"]);
        for (plan, host, manifests) in [
            (&etcd, "cp1", vec!["etcd"]),
            (&etcd, "e1", vec!["etcd"]),
            (
                &cp,
                "cp1",
                vec![
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                ],
            ),
        ] {
            let a = actions(plan, host);
            assert_eq!(
                a[0]["kind"], "check",
                "{}: the mode guard first",
                plan.phase
            );
            assert!(
                a[0]["command"]
                    .as_str()
                    .unwrap()
                    .contains("systemctl is-active")
            );
            // The runtime and kubelet phases plan exactly these actions: nothing left to do.
            let rt_a = actions(&rt, host);
            let kl_a = actions(&kl, host);
            assert_eq!(a[1..1 + rt_a.len()], rt_a[..], "{}/{host}", plan.phase);
            assert_eq!(
                a[1 + rt_a.len()..1 + rt_a.len() + kl_a.len()],
                kl_a[..],
                "{}/{host}",
                plan.phase
            );
            let p = paths(&a);
            assert!(
                p.iter().any(|p| p.ends_with("etcd-image_3.4.23-0.tar")),
                "{p:?}"
            );
            for m in &manifests {
                assert!(
                    p.contains(&format!("/etc/kubernetes/manifests/{m}.yaml")),
                    "{p:?}"
                );
            }
            assert!(
                !p.iter().any(|p| p.starts_with("/etc/systemd/system/etcd")
                    || p.starts_with("/etc/systemd/system/kube-")),
                "no control-plane unit in static-pods mode: {p:?}"
            );
            assert!(
                !a.iter().any(|x| x["restarts"].as_array().is_some_and(|r| r
                    .iter()
                    .any(|u| u != "containerd.service" && u != "kubelet.service"))),
                "nothing restarts a control-plane unit: {a:?}"
            );
        }
        // The control-plane images only where they run.
        let p = paths(&actions(&rt, "cp1"));
        assert!(
            p.iter().any(|p| p.contains("kube-apiserver-image")),
            "{p:?}"
        );
        let p = paths(&actions(&rt, "e1"));
        assert!(
            !p.iter().any(|p| p.contains("kube-apiserver-image")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.contains("pause")), "{p:?}");
        // The etcd binary stays off the hosts: the member runs from its image (the mode's
        // systemd counterpart sends it, see below).
        let prepare = crate::phases::prepare::Prepare.plan(&c).unwrap();
        assert!(
            !paths(&actions(&prepare, "e1")).contains(&"/usr/local/bin/etcd".to_string()),
            "{:?}",
            paths(&actions(&prepare, "e1"))
        );
        let systemd = ctx(
            &INV.replace("mode: static-pods", "mode: systemd"),
            dir.path(),
        );
        let prepare = crate::phases::prepare::Prepare.plan(&systemd).unwrap();
        assert!(paths(&actions(&prepare, "e1")).contains(&"/usr/local/bin/etcd".to_string()));
        // Rolling: a host counts as running where the manifests are, not where containerd is.
        let cp1 = c.inv().host("cp1").unwrap();
        assert!(
            Etcd.running_check(&c, cp1)
                .unwrap()
                .as_str()
                .ends_with(" sh /etc/kubernetes/manifests/etcd.yaml")
        );
        assert!(
            ControlPlane
                .running_check(&c, cp1)
                .unwrap()
                .as_str()
                .ends_with(" /etc/kubernetes/manifests/kube-scheduler.yaml")
        );
        assert!(
            etcd.notes
                .iter()
                .any(|n| n.contains("k8s.gcr.io/etcd:3.4.23-0 (imported from the bundle)")),
            "{:?}",
            etcd.notes
        );
    }

    #[test]
    fn systemd_mode_keeps_its_units_behind_the_opposite_guard() {
        use crate::engine::Phase;
        use crate::phases::{control_plane::ControlPlane, etcd::Etcd};
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(
            &INV.replace("mode: static-pods", "mode: systemd"),
            dir.path(),
        );
        let a = actions(&Etcd.plan(&c).unwrap(), "cp1");
        assert_eq!(a[0]["kind"], "check");
        assert!(
            a[0]["command"]
                .as_str()
                .unwrap()
                .ends_with(" sh /etc/kubernetes/manifests etcd")
        );
        assert_eq!(
            paths(&a[1..]),
            [
                "/data/etcd",
                "/etc/systemd/system/etcd.service",
                "etcd.service"
            ]
        );
        assert!(
            Etcd.running_check(&c, c.inv().host("cp1").unwrap())
                .is_none()
        );
        let p = paths(&actions(&ControlPlane.plan(&c).unwrap(), "cp1"));
        assert!(p.contains(&"/etc/systemd/system/kube-apiserver.service".to_string()));
        assert!(
            !p.iter()
                .any(|p| p.contains("containerd") || p.contains("manifests")),
            "{p:?}"
        );
    }

    #[tokio::test]
    async fn the_guard_refuses_a_host_running_the_other_mode() {
        use crate::engine::executor::{CmdOutput, converge};
        // A host that answers the guard as bash would, with its units in `units`: there an
        // etcd unit file exists, and systemd knows of no active unit.
        struct Host1(std::sync::Mutex<Vec<String>>, String);
        impl Executor for Host1 {
            fn query<'a>(
                &'a self,
                _: &'a Host,
                cmd: &'a crate::ssh::shell::Shell,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<CmdOutput>> {
                let cmd = cmd.as_str();
                let cmd = cmd
                    .replace("/etc/systemd/system/", &self.1)
                    .replace("systemctl is-active --quiet", "false");
                Box::pin(async move {
                    let o = std::process::Command::new("bash")
                        .args(["-c", &cmd])
                        .output()?;
                    Ok(CmdOutput {
                        status: o.status.code().unwrap_or(1),
                        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                        stderr: String::new(),
                    })
                })
            }
            fn change<'a>(
                &'a self,
                _: &'a Host,
                cmd: &'a crate::ssh::shell::Shell,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<CmdOutput>> {
                let cmd = cmd.as_str();
                self.0.lock().unwrap().push(cmd.to_string());
                Box::pin(async { Ok(CmdOutput::default()) })
            }
            fn put<'a>(
                &'a self,
                _: &'a Host,
                path: &'a str,
                _: &'a crate::engine::executor::Blob,
                _: &'a str,
                _: u32,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<u64>> {
                self.0.lock().unwrap().push(format!("put {path}"));
                Box::pin(async { Ok(0) })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(INV, dir.path());
        let units = dir.path().join("units");
        std::fs::create_dir_all(&units).unwrap();
        let plan = crate::engine::HostPlan {
            host: "cp1".into(),
            address: "10.77.0.11".into(),
            actions: vec![
                mode_guard(c.inv(), &["etcd"]),
                Action::dir(&format!("{}/new", dir.path().display()), 0o700),
            ],
        };
        let exec = Host1(Default::default(), format!("{}/", units.display()));
        let h = c.inv().host("cp1").unwrap().clone();
        let resolve = |_: &crate::engine::Source| -> anyhow::Result<crate::engine::executor::Blob> {
            unreachable!()
        };
        // No unit: the plan goes on.
        converge(&exec, &h, &plan, &resolve).await.unwrap();
        assert_eq!(exec.0.lock().unwrap().len(), 1, "the directory was made");
        exec.0.lock().unwrap().clear();
        std::fs::write(units.join("etcd.service"), "").unwrap();
        let e = converge(&exec, &h, &plan, &resolve)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("no etcd systemd unit here")
                && e.contains("does not switch a host between modes"),
            "{e}"
        );
        assert!(e.ends_with("found etcd.service"), "{e}");
        assert!(exec.0.lock().unwrap().is_empty(), "nothing changed");
    }

    #[test]
    fn a_pod_that_was_not_replaced_shows_its_last_log_lines() {
        // Run for real, locally: the newest log of the component's container, only its own.
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("kube-system_etcd-h2_0a1b/etcd");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            logs.join("0.log"),
            "start\nmember 1 has already been removed\n",
        )
        .unwrap();
        let other = dir
            .path()
            .join("kube-system_kube-apiserver-h2_0c/kube-apiserver");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("0.log"), "not this one\n").unwrap();
        let script = why_not_replaced_script(dir.path().to_str().unwrap(), &["etcd"]);
        let o = script.local().output().unwrap();
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("etcd's log ("), "{out}");
        assert!(out.contains("member 1 has already been removed"), "{out}");
        assert!(!out.contains("not this one"), "{out}");
    }

    #[test]
    fn a_pod_the_running_kubelet_rejected_ends_the_wait_at_once() {
        // Run for real, locally, with `systemctl` and `journalctl` stand-ins on PATH: the
        // kubelet (pid 4242) logged the given lines since the manifest's mtime.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&manifests).unwrap();
        let stub = |name: &str, body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        stub("systemctl", "echo 4242");
        let log = dir.path().join("kubelet.log");
        let args = dir.path().join("journalctl.args");
        stub(
            "journalctl",
            &format!("echo \"$*\" > {}; cat {}", args.display(), log.display()),
        );
        std::fs::write(manifests.join("no-such-program-x.yaml"), "").unwrap();
        let mtime = std::fs::metadata(manifests.join("no-such-program-x.yaml"))
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let run = |kubelet_said: &str, within: u64| {
            std::fs::write(&log, kubelet_said).unwrap();
            let script = replaced_script(
                manifests.to_str().unwrap(),
                &["no-such-program-x"],
                Duration::from_secs(within),
            );
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            let t = std::time::Instant::now();
            let o = script.local().env("PATH", path).output().unwrap();
            (o, t.elapsed())
        };
        // kubelet 1.20's words, then a later kubelet's: the wait ends at once, naming them.
        for line in [
            "W1206 05:31:35.987095 5713 predicate.go:113] Failed to admit pod no-such-program-x-h3_kube-system(bac0) - Unexpected error while attempting to recover from admission failure: preemption: error finding a set of pods to preempt: no set of running pods found to reclaim resources: [(res: ephemeral-storage, q: 104857600), ]",
            r#"I0414 16:35:50.929430 12113 allocation_manager.go:706] "Pod admission denied" podUID="7183" pod="kube-system/no-such-program-x-master1" reason="UnexpectedAdmissionError""#,
        ] {
            let (o, took) = run(&format!("I0000 unrelated\n{line}\n"), 30);
            assert_eq!(o.status.code(), Some(REJECTED), "{o:?}");
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                format!("no-such-program-x:rejected: {line}")
            );
            assert!(took < Duration::from_secs(5), "{took:?}");
            let asked = std::fs::read_to_string(&args).unwrap();
            assert!(asked.contains("_PID=4242"), "{asked}");
            assert!(asked.contains(&format!("--since @{mtime}")), "{asked}");
        }
        // Another pod rejected, or this one only named: still waiting (here until the bound).
        for said in [
            "predicate.go:113] Failed to admit pod kube-apiserver-h3_kube-system(1) - x\n",
            "kubelet.go:1888] SyncLoop (ADD, \"file\"): \"no-such-program-x-h3_kube-system(1)\"\n",
        ] {
            let (o, _) = run(said, 1);
            assert_eq!(o.status.code(), Some(1), "{said}: {o:?}");
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim(),
                "no-such-program-x:not-running"
            );
        }
    }

    #[test]
    fn the_replacement_script_waits_for_a_process_per_manifest() {
        // Run for real, locally: no manifest passes at once; a manifest whose program runs
        // nowhere fails after the wait, naming it.
        let dir = tempfile::tempdir().unwrap();
        let run = |components: &[&str]| {
            let script = replaced_script(
                dir.path().to_str().unwrap(),
                components,
                Duration::from_secs(1),
            );
            script.local().output().unwrap()
        };
        assert!(run(&["etcd", "kube-apiserver"]).status.success());
        std::fs::write(dir.path().join("no-such-program-x.yaml"), "").unwrap();
        let o = run(&["no-such-program-x", "etcd"]);
        assert!(!o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "no-such-program-x:not-running"
        );
    }
}
