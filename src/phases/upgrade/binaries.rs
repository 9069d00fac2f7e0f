//! The binaries an upgrade swaps, what each host runs now, the copy of the old binary kept on
//! the host before it is replaced, and the gate "the unit now runs the new binary".

use std::time::Duration;

use crate::bundle::{Item, Kind};

use crate::engine::{Action, Context, Executor, Mode, Script, Shell, Source};
use crate::inventory::Host;

/// Where the binaries an upgrade replaced are kept on each host: `<name>-<version>`, and
/// `<name>` (a symlink) naming the copy the last upgrade kept, which `--rollback` installs.
pub const PREVIOUS_DIR: &str = "/usr/local/lib/clusterctl/previous";

/// A program an upgrade swaps: its systemd unit (None: a tool, no process) and how it tells
/// its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    pub name: &'static str,
    pub unit: Option<&'static str>,
    pub version_args: &'static str,
}

const fn c(name: &'static str, unit: &'static str) -> Component {
    Component {
        name,
        unit: Some(unit),
        version_args: "--version",
    }
}

pub const ETCD: [Component; 2] = [
    c("etcd", "etcd.service"),
    Component {
        name: "etcdctl",
        unit: None,
        version_args: "version",
    },
];
pub const CONTROL_PLANE: [Component; 3] = [
    c("kube-apiserver", "kube-apiserver.service"),
    c("kube-controller-manager", "kube-controller-manager.service"),
    c("kube-scheduler", "kube-scheduler.service"),
];
pub const NODE: [Component; 2] = [
    c("kubelet", "kubelet.service"),
    c("kube-proxy", "kube-proxy.service"),
];

/// The bundle's binary item of `comp` for `h` at the inventory's (target) versions, with its
/// install path and sha256. None: the bundle has no such item for this host's roles.
pub fn target_item<'m>(
    ctx: &'m Context,
    h: &Host,
    comp: &Component,
) -> anyhow::Result<Option<&'m Item>> {
    Ok(crate::phases::prepare::items_for(ctx, h)?
        .into_iter()
        .find(|i| {
            i.name == comp.name
                && i.kind == Kind::Binary
                && i.install.is_some()
                && i.sha256.is_some()
        }))
}

fn install_path(it: &Item) -> &str {
    &it.install.as_ref().expect("checked by target_item").path
}

fn sha(it: &Item) -> &str {
    it.sha256.as_deref().expect("checked by target_item")
}

/// Description prefix of the keep actions (the driver runs them before the swap).
pub const KEEP: &str = "keep the current ";

/// Before `it` replaces the binary at its install path: the current binary is copied to
/// `PREVIOUS_DIR/<name>-<its version>` (named by what it reports) and `<name>` points at it.
/// Skipped when the target is already in place or nothing is there yet. A path that is not a
/// regular file, or a binary that reports no version, fails the host before anything changes.
pub fn keep_action(it: &Item, comp: &Component) -> Action {
    keep_action_in(it, comp, PREVIOUS_DIR)
}

/// [`keep_action`] with the directory of kept copies named (tests keep them elsewhere).
fn keep_action_in(it: &Item, comp: &Component, previous: &str) -> Action {
    // Arguments: the binary, the kept copies' directory, the component's name, the arguments
    // that make it print its version (split into words: clusterctl's own text, e.g. `version`).
    const KEEP_SCRIPT: &str = r#"f=$1 d=$2 n=$3 a=$4
if [ ! -f "$f" ]; then echo "$f is not a regular file: cannot keep it before replacing it" >&2; exit 1; fi
v=$("$f" $a 2>&1 | grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+' | head -1)
if [ -z "$v" ]; then echo "$f $a reports no version: cannot name the kept copy" >&2; exit 1; fi
s=$(sha256sum <"$f" | cut -c1-64) || exit 1; k="$n-$v"
if [ -f "$d/$k" ] && [ "$(sha256sum <"$d/$k" | cut -c1-64)" != "$s" ]; then k="$n-$v-$(echo "$s" | cut -c1-12)"; fi
mkdir -p "$d" && { [ -f "$d/$k" ] || { cp -p "$f" "$d/.$k.tmp" && mv -f "$d/.$k.tmp" "$d/$k"; }; } && ln -sfn "$k" "$d/$n" && echo "kept $f ($v) as $d/$k""#;
    let path = install_path(it);
    let n = comp.name;
    Action::run(
        &format!("{KEEP}{n} in {PREVIOUS_DIR} before replacing it"),
        Script::new(KEEP_SCRIPT)
            .arg(path)
            .arg(previous)
            .arg(n)
            .arg(comp.version_args),
        Some(
            Script::new(
                r#"! [ -e "$1" ] || [ "$(sha256sum <"$1" 2>/dev/null | cut -c1-64)" = "$2" ]"#,
            )
            .arg(path)
            .arg(sha(it))
            .into(),
        ),
    )
}

/// The target binary at its install path; a change restarts the component's unit.
pub fn swap_action(it: &Item, comp: &Component) -> Action {
    Action::File {
        path: install_path(it).to_string(),
        mode: Mode(it.mode().unwrap_or(0o755)),
        source: Source::Bundle { item: it.label() },
        sha256: it.sha256.clone(),
        size: it.size,
        restarts: comp.unit.iter().map(|u| u.to_string()).collect(),
    }
}

/// A host's upgrade plan for one stage: the leading guards of the component's own phase plan
/// (`base`), the target binaries, and the rest of `base` (its units and configs rendered for
/// the target version: the existing phases' rendering, not a copy). Keeping the current
/// binaries is not part of it: see [`keep_actions`].
pub fn host_actions(
    ctx: &Context,
    h: &Host,
    comps: &[Component],
    base: Vec<Action>,
) -> anyhow::Result<Vec<Action>> {
    let mut items = Vec::new();
    for c in comps {
        if let Some(it) = target_item(ctx, h, c)? {
            items.push((it, *c));
        }
    }
    let guards = base
        .iter()
        .take_while(|x| matches!(x, Action::Check { .. }))
        .count();
    let mut a = base;
    let rest = a.split_off(guards);
    a.extend(items.iter().map(|(it, c)| swap_action(it, c)));
    a.extend(rest);
    Ok(a)
}

/// The steps that keep `h`'s current binaries of `comps` before the targets replace them. A
/// step of their own, run before the host's plan is converged (a converge writes files before
/// it runs commands, so the copy cannot be part of the same plan).
pub fn keep_actions(ctx: &Context, h: &Host, comps: &[Component]) -> anyhow::Result<Vec<Action>> {
    let mut a = Vec::new();
    for c in comps {
        if let Some(it) = target_item(ctx, h, c)? {
            a.push(keep_action(it, c));
        }
    }
    Ok(a)
}

/// A stage's plan: the hosts of `base` (the component's own phase plan, rendered for the
/// target version), one at a time, each with [`host_actions`].
pub fn stage_plan(
    ctx: &Context,
    stage: &dyn crate::engine::Phase,
    base: crate::engine::PhasePlan,
    comps: &[Component],
) -> anyhow::Result<crate::engine::PhasePlan> {
    let mut plan = crate::engine::PhasePlan::new(stage, crate::engine::Order::OneAtATime);
    for hp in base.hosts {
        let h = ctx.inv().host(&hp.host).expect("planned hosts exist");
        plan.host(h, host_actions(ctx, h, comps, hp.actions)?);
    }
    plan.notes.extend(base.notes);
    plan.notes.push(format!(
        "before a host's binaries are replaced, the ones it has are kept in {PREVIOUS_DIR} (`upgrade --rollback`)"
    ));
    Ok(plan)
}

/// The first gate of every stage: each unit of `comps` on `h` runs its target binary (60 s).
pub async fn wait_targets(
    ctx: &Context,
    exec: &dyn Executor,
    h: &Host,
    comps: &[Component],
) -> anyhow::Result<()> {
    let want = unit_targets(ctx, h, comps)?;
    wait_running(exec, h, &want, Duration::from_secs(60)).await
}

/// (unit, sha256 of the target binary) for the components of `comps` with a unit on `h`.
pub fn unit_targets(
    ctx: &Context,
    h: &Host,
    comps: &[Component],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut v = Vec::new();
    for c in comps {
        if let (Some(u), Some(it)) = (c.unit, target_item(ctx, h, c)?) {
            v.push((u.to_string(), sha(it).to_string()));
        }
    }
    Ok(v)
}

/// Waits until each unit's main process executes the binary with that sha256 (read through
/// `/proc/<pid>/exe`, so a process still running the replaced file does not count).
pub async fn wait_running(
    exec: &dyn Executor,
    h: &Host,
    want: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    if want.is_empty() {
        return Ok(());
    }
    let script = runs_script(want);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let o = exec.query(h, &script).await?;
        if o.status == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{}: not running the new binaries after {} s: {}",
                h.name,
                timeout.as_secs(),
                o.stdout.trim().replace('\n', "; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether each unit's main process executes the binary with that sha256 now (one query).
pub async fn runs_targets(
    exec: &dyn Executor,
    h: &Host,
    want: &[(String, String)],
) -> anyhow::Result<bool> {
    if want.is_empty() {
        return Ok(true);
    }
    Ok(exec.query(h, &runs_script(want)).await?.status == 0)
}

/// A query that succeeds when every unit of `want` runs the binary with its sha256, and
/// otherwise says which does not.
fn runs_script(want: &[(String, String)]) -> Shell {
    // Arguments: pairs of unit and sha256.
    const RUNS: &str = r#"ok=1
while [ $# -gt 0 ]; do u=$1 s=$2; shift 2
  p=$(systemctl show -p MainPID --value "$u")
  if [ -z "$p" ] || [ "$p" = 0 ]; then echo "$u: not running"; ok=0
  else r=$(sha256sum </proc/$p/exe | cut -c1-64); [ "$r" = "$s" ] || { echo "$u: runs a binary with sha256 $r, not $(echo "$s" | cut -c1-12)"; ok=0; }; fi
done; [ $ok = 1 ]"#;
    Script::new(RUNS)
        .args(want.iter().flat_map(|(u, s)| [u, s]))
        .into()
}

/// What one component on one host runs now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Running {
    pub component: String,
    /// `running`, `stopped` (the binary on disk answered) or `missing`.
    pub state: String,
    /// The version the running process (or, stopped, the binary on disk) reports.
    pub version: Option<String>,
    /// sha256 of the running executable (or of the file on disk when stopped).
    pub sha256: Option<String>,
    /// sha256 of the file at the install path now.
    pub disk_sha256: Option<String>,
    /// Static-pods mode: the image the component's manifest names (what the kubelet runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Whether `comp` runs from an image on this cluster (static-pods mode: etcd and the
/// control plane are static pods; their manifests name the image, no binary is on the host).
pub fn runs_from_image(ctx: &Context, comp: &Component) -> bool {
    ctx.inv().static_pods() && crate::phases::prepare::RUN_FROM_IMAGES.contains(&comp.name)
}

/// The image `comp` moves to (the static-pods phases' own choice for the target version) when
/// the bundle holds it; None when it does not (the nodes could not pull it).
pub fn target_image(ctx: &Context, comp: &Component) -> anyhow::Result<Option<String>> {
    let want = crate::phases::static_pods::image(ctx, comp.name)?;
    let held = ctx.bundle.iter().any(|b| {
        b.manifest
            .items
            .iter()
            .any(|i| i.kind == Kind::Image && i.image.as_deref() == Some(want.as_str()))
    });
    Ok(held.then_some(want))
}

/// One query per host: for each static-pod component, the image its manifest names.
pub fn observe_images_script(comps: &[Component]) -> Shell {
    // Arguments: for each component, its name and its manifest's path.
    const OBSERVE: &str = r#"while [ $# -gt 0 ]; do n=$1 m=$2; shift 2
  i=$(sed -n 's/^[ -]*image: *//p' "$m" 2>/dev/null | head -1 | tr -d "\"'")
  if [ -n "$i" ]; then echo "$n|static-pod|$i"; else echo "$n|missing|"; fi
done; true"#;
    let paths: Vec<(String, String)> = comps
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                crate::phases::static_pods::manifest_path(c.name),
            )
        })
        .collect();
    Script::new(OBSERVE)
        .args(paths.iter().flat_map(|(n, m)| [n, m]))
        .into()
}

/// [`observe_images_script`]'s answer: the version is the image's tag (`v1.20.2`, `3.4.23-0`).
pub fn parse_observed_images(out: &str) -> Vec<Running> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, '|');
            let component = it.next()?.to_string();
            let state = it.next()?.to_string();
            let image = it.next().filter(|x| !x.is_empty()).map(str::to_string);
            let version = image
                .as_deref()
                .map(|i| crate::phases::static_pods::repo_and_tag(i).1)
                .and_then(crate::version::KubeVersion::find_in)
                .map(|(_, w)| w);
            Some(Running {
                component,
                state,
                version,
                sha256: None,
                disk_sha256: None,
                image,
            })
        })
        .collect()
}

/// One query per host: for each component, the running process's executable (through
/// /proc/<pid>/exe, which runs even when the file was replaced) asked for its version.
pub fn observe_script(comps: &[(Component, String)]) -> Shell {
    // Arguments: for each component, its name, unit, path and version arguments (split into
    // words: clusterctl's own text).
    const OBSERVE: &str = r#"while [ $# -gt 0 ]; do n=$1 u=$2 p=$3 a=$4; shift 4
  pid=$(systemctl show -p MainPID --value "$u" 2>/dev/null); ds=$(sha256sum <"$p" 2>/dev/null | cut -c1-64)
  if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -e /proc/$pid/exe ]; then
    echo "$n|running|$(sha256sum </proc/$pid/exe | cut -c1-64)|$ds|$(/proc/$pid/exe $a 2>&1 | head -1)"
  elif [ -f "$p" ]; then echo "$n|stopped|$ds|$ds|$("$p" $a 2>&1 | head -1)"
  else echo "$n|missing|||"; fi
done; true"#;
    Script::new(OBSERVE)
        .args(comps.iter().flat_map(|(c, path)| {
            [
                c.name,
                c.unit.unwrap_or("none.clusterctl"),
                path.as_str(),
                c.version_args,
            ]
        }))
        .into()
}

pub fn parse_observed(out: &str) -> Vec<Running> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.splitn(5, '|');
            let component = it.next()?.to_string();
            let state = it.next()?.to_string();
            let opt = |s: Option<&str>| s.filter(|x| !x.is_empty()).map(str::to_string);
            let sha256 = opt(it.next());
            let disk_sha256 = opt(it.next());
            let version = it
                .next()
                .and_then(crate::version::KubeVersion::find_in)
                .map(|(_, w)| w);
            Some(Running {
                component,
                state,
                version,
                sha256,
                disk_sha256,
                image: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_parse() {
        let out = "kube-apiserver|running|aaa|bbb|Kubernetes v1.20.2\nkubelet|stopped|ccc|ccc|Kubernetes v1.20.3\nkube-proxy|missing|||\n";
        let r = parse_observed(out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].version.as_deref(), Some("v1.20.2"));
        assert_eq!(r[0].sha256.as_deref(), Some("aaa"));
        assert_eq!(r[0].disk_sha256.as_deref(), Some("bbb"));
        assert_eq!(r[1].state, "stopped");
        assert_eq!(r[2].version, None);
        assert_eq!(r[2].sha256, None);
    }

    #[test]
    fn static_pod_images_are_read_from_their_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("kube-apiserver.yaml");
        std::fs::write(
            &m,
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [x]\n    image: k8s.gcr.io/kube-apiserver:v1.20.2\n    name: kube-apiserver\n",
        )
        .unwrap();
        let e = dir.path().join("etcd.yaml");
        std::fs::write(
            &e,
            "spec:\n  containers:\n  - image: \"k8s.gcr.io/etcd:3.4.23-0\"\n",
        )
        .unwrap();
        // The command as the host runs it, with this test's manifests in place of the real ones.
        let text = observe_images_script(&[ETCD[0], CONTROL_PLANE[0]])
            .as_str()
            .replace("/etc/kubernetes/manifests", dir.path().to_str().unwrap());
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .unwrap();
        let r = parse_observed_images(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(r.len(), 2, "{o:?}");
        assert_eq!(r[0].image.as_deref(), Some("k8s.gcr.io/etcd:3.4.23-0"));
        assert_eq!(r[0].version.as_deref(), Some("3.4.23-0"));
        assert_eq!(r[1].version.as_deref(), Some("v1.20.2"));
        assert_eq!(r[1].state, "static-pod");
        std::fs::remove_file(&m).unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(&text)
            .output()
            .unwrap();
        let r = parse_observed_images(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(
            (r[1].state.as_str(), r[1].version.as_deref()),
            ("missing", None)
        );
    }

    #[test]
    fn keep_names_the_copy_and_the_swap_restarts_the_unit() {
        let it: Item = serde_json::from_value(serde_json::json!({
            "name": "etcd", "version": "3.5.16", "kind": "binary",
            "url": "file:///x", "sha256": "ab".repeat(32), "size": 10,
            "install": {"path": "/usr/local/bin/etcd"},
            "roles": ["etcd"], "hashSource": "test"
        }))
        .unwrap();
        let keep = keep_action(&it, &ETCD[0]);
        let swap = swap_action(&it, &ETCD[0]);
        match &keep {
            Action::Run {
                command, unless, ..
            } => {
                assert!(
                    command.as_str().ends_with(
                        " /usr/local/bin/etcd /usr/local/lib/clusterctl/previous etcd --version"
                    ),
                    "{command}"
                );
                assert!(unless.as_ref().unwrap().as_str().contains(&"ab".repeat(32)));
            }
            a => panic!("{a:?}"),
        }
        match &swap {
            Action::File { restarts, path, .. } => {
                assert_eq!(path, "/usr/local/bin/etcd");
                assert_eq!(restarts, &["etcd.service"]);
            }
            a => panic!("{a:?}"),
        }
    }

    /// The keep script against a real shell: copies once, names the copy by the reported
    /// version, refuses a directory where the binary should be.
    #[test]
    fn keep_script_runs_in_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, "#!/bin/sh\necho 'tool Version: 3.4.23'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let it: Item = serde_json::from_value(serde_json::json!({
            "name": "tool", "version": "3.5.16", "kind": "binary",
            "url": "file:///x", "sha256": "00".repeat(32), "size": 10,
            "install": {"path": bin.to_str().unwrap()},
            "roles": ["etcd"], "hashSource": "test"
        }))
        .unwrap();
        let comp = Component {
            name: "tool",
            unit: None,
            version_args: "--version",
        };
        let prev = dir.path().join("previous");
        let Action::Run { command, .. } = keep_action_in(&it, &comp, prev.to_str().unwrap()) else {
            unreachable!()
        };
        let command = command.as_str();
        let sh = |c: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .output()
                .unwrap()
        };
        let o = sh(command);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(
            std::fs::read(prev.join("tool-3.4.23")).unwrap(),
            std::fs::read(&bin).unwrap()
        );
        assert_eq!(
            std::fs::read_link(prev.join("tool")).unwrap().to_str(),
            Some("tool-3.4.23")
        );
        assert!(sh(command).status.success(), "a second run is fine");
        std::fs::remove_file(&bin).unwrap();
        std::fs::create_dir(&bin).unwrap();
        let o = sh(command);
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("is not a regular file"),
            "{o:?}"
        );
    }
}
