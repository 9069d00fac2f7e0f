//! reset-host: on each reset host, what clusterctl installed goes, what cannot be re-created
//! is kept on the host first. In order: the kubelet stops, the pods' containers are killed,
//! every unit clusterctl runs there is stopped and disabled (containerd last); the etcd data
//! and /etc/kubernetes are backed up into /var/backups/clusterctl/ on the host (0700; the
//! tarballs, which hold keys, 0600); kube-proxy's KUBE-* iptables chains and clusterctl's pod
//! masquerade rules are removed (the whole dump is kept beside the backups, 0600), ipsets and
//! kube-ipvs0 too; the routes into the pod CIDR and the CNI bridge go; what bundle archives
//! unpacked, the files clusterctl wrote (the init playbook's plans name them), then
//! /etc/kubernetes, the kubelet's, kube-proxy's, CNI's, clusterctl's and etcd's data, then
//! the directories clusterctl made (when empty). Each step runs only while its work is there
//! (`unless`), so a re-run finishes a killed reset and a second reset changes nothing. The
//! check after the steps reports what remains (packages from the bundle, the backups).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::BoxFuture;

use crate::engine::executor::q;
use crate::engine::{Action, Cmd, Context, Executor, Order, Phase, PhasePlan, Script};
use crate::inventory::{Host, Role};

pub struct ResetHost;

/// Where a reset keeps, on the host, what it removes and cannot be re-created.
pub const BACKUP_DIR: &str = "/var/backups/clusterctl";

/// Data directories a reset deletes on every host (etcd's data directory too on etcd hosts).
const DATA_DIRS: &[&str] = &[
    "/etc/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/kube-proxy",
    "/var/lib/cni",
    "/var/cache/clusterctl",
    "/var/lib/clusterctl",
];

/// Directories never removed even when empty.
const KEEP_DIRS: &[&str] = &[
    "/",
    "/etc",
    "/etc/systemd",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/opt",
    "/usr",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/cache",
    "/var/backups",
];

/// What clusterctl put on one host, from the init playbook's plans.
#[derive(Debug, Default)]
pub struct Installed {
    pub units: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub dirs: BTreeSet<String>,
    /// Archives clusterctl unpacked: (the archive on the host, where it was unpacked, the
    /// item's name for its marker file).
    pub archives: Vec<(String, String, String)>,
}

/// Per host, the units, files and directories the plans manage.
pub fn installed(plans: &[PhasePlan]) -> BTreeMap<String, Installed> {
    let mut m: BTreeMap<String, Installed> = BTreeMap::new();
    for p in plans {
        for hp in &p.hosts {
            let e = m.entry(hp.host.clone()).or_default();
            for a in &hp.actions {
                match a {
                    Action::Service { unit, .. } => {
                        e.units.insert(unit.clone());
                    }
                    Action::File { path, restarts, .. } => {
                        e.files.insert(path.clone());
                        e.units.extend(restarts.iter().cloned());
                    }
                    Action::Directory { path, .. } => {
                        e.dirs.insert(path.clone());
                    }
                    _ => {}
                }
            }
        }
    }
    m
}

/// The private keys of the cluster's CAs (`pki/ca.key`, `pki/etcd/ca.key`, `pki/front-proxy-ca.key`)
/// and the service-account signing key, as tar exclude patterns.
pub const CA_KEY_NAMES: [&str; 3] = ["ca.key", "front-proxy-ca.key", "sa.key"];

/// What `init` installs on the selected hosts, with the bundle archives it unpacked.
fn installed_on(ctx: &Context) -> anyhow::Result<BTreeMap<String, Installed>> {
    let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
    let pb =
        crate::phases::playbook::load("init", Some(&ctx.state.root.join("playbooks")), &known)?;
    let runner = pb.runner(&Default::default())?;
    let mut all = installed(&runner.plan(ctx)?);
    for h in ctx.hosts_where(|_| true) {
        let Some(inst) = all.get_mut(h.name.as_str()) else {
            continue;
        };
        for it in crate::phases::prepare::items_for(ctx, h)? {
            let (crate::bundle::manifest::Kind::Archive, Some(install)) = (it.kind, &it.install)
            else {
                continue;
            };
            let prefix = format!("{}/{}_", crate::phases::prepare::ARCHIVE_DIR, it.name);
            if let Some(f) = inst.files.iter().find(|f| f.starts_with(&prefix)) {
                inst.archives
                    .push((f.clone(), install.path.clone(), it.name.clone()));
            }
        }
    }
    Ok(all)
}

/// The steps that reset one host. `etcd_data`: the member's data directory on an etcd host.
pub fn actions(
    host: &str,
    inst: &Installed,
    etcd_data: Option<&str>,
    pod_cidr: &str,
) -> Vec<Action> {
    let mut a = Vec::new();
    // The kubelet first (it would restart pods), containerd last (the pods' tasks are killed
    // through it).
    let mut units: Vec<&str> = inst.units.iter().map(String::as_str).collect();
    units.sort_by_key(|u| match *u {
        "kubelet.service" => 0,
        "containerd.service" => 2,
        _ => 1,
    });
    if inst.units.contains("kubelet.service") {
        a.push(Action::run(
            "stop the kubelet (it would restart the pods)",
            "systemctl stop kubelet.service",
            Some("! systemctl is-active -q kubelet.service".into()),
        ));
    }
    if inst.units.contains("containerd.service") {
        // A container that outlives this (its task did not die in 10 s) is a warning: the
        // units stop next either way, and a re-run tries again.
        let mut kill = Action::run(
            "kill the pods' containers",
            "for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s SIGKILL \"$t\" >/dev/null 2>&1; done; \
             for i in $(seq 20); do [ -z \"$(ctr -n k8s.io tasks ls -q 2>/dev/null)\" ] && break; sleep 0.5; done; \
             for t in $(ctr -n k8s.io tasks ls -q 2>/dev/null); do ctr -n k8s.io tasks delete -f \"$t\" >/dev/null 2>&1; done; \
             for c in $(ctr -n k8s.io containers ls -q 2>/dev/null); do ctr -n k8s.io containers delete \"$c\" >/dev/null 2>&1; done; \
             [ -z \"$(ctr -n k8s.io containers ls -q 2>/dev/null)\" ]",
            Some(
                "! command -v ctr >/dev/null || ! systemctl is-active -q containerd.service || [ -z \"$(ctr -n k8s.io containers ls -q 2>/dev/null)\" ]".into(),
            ),
        );
        if let Action::Run { warn_only, .. } = &mut kill {
            *warn_only = true;
        }
        a.push(kill);
    }
    if !units.is_empty() {
        const STOPPED: &str = r#"for x in "$@"; do { systemctl is-enabled -q "$x" 2>/dev/null || systemctl is-active -q "$x"; } && exit 1; done; exit 0"#;
        const STOP: &str = r#"for u in "$@"; do systemctl disable --now "$u" >/dev/null 2>&1 || systemctl stop "$u"; done
for x in "$@"; do { systemctl is-enabled -q "$x" 2>/dev/null || systemctl is-active -q "$x"; } && exit 1; done; exit 0"#;
        a.push(Action::run(
            &format!("stop and disable {}", units.join(", ")),
            Script::new(STOP).args(&units),
            Some(Script::new(STOPPED).args(&units).into()),
        ));
    }
    // Backups of what cannot be re-created: 0700 directory, 0600 tarballs (they hold the CA
    // keys and every secret etcd stores), written under a temporary name and renamed, so a
    // killed run never leaves a partial tarball that looks complete.
    // `exclude`: file names left out of the tarball (tar patterns, matched per path component).
    let backup = |what: &str, dir: &str, name: &str, exclude: &[&str]| {
        // Arguments: backup dir, tarball name, host, the directory, then tar's --exclude options.
        const BACKUP: &str = r#"set -e; umask 077; b=$1 name=$2 h=$3 d=$4; shift 4
install -d -m 0700 "$b"; chmod -R go-rwx "$b"; t="$b/$name-$h-$(date -u +%Y%m%dT%H%M%SZ).tar.gz"
tar -C "$d" "$@" -czf "$t.part" . && mv "$t.part" "$t""#;
        Action::run(
            &format!("back up {what} to {BACKUP_DIR}/{name}-{host}-<UTC time>.tar.gz (0600)"),
            Script::new(BACKUP)
                .arg(BACKUP_DIR)
                .arg(name)
                .arg(host)
                .arg(dir)
                .args(exclude.iter().map(|p| format!("--exclude={p}"))),
            Some(
                Script::new(r#"[ ! -d "$1" ] || [ -z "$(ls -A "$1")" ]"#)
                    .arg(dir)
                    .into(),
            ),
        )
    };
    if let Some(d) = etcd_data {
        a.push(backup(&format!("the etcd data ({d})"), d, "etcd-data", &[]));
    }
    // The CA keys (and sa.key, which mints service-account tokens) stay out of the tarball
    // left on a reset host: whoever later reads that host's disk must not be able to sign
    // certificates or tokens for the cluster. The certificates are kept; the keys live in the
    // operator's clusters/<name>/pki and in the sealed backups, and every join uploads them
    // again from there.
    a.push(backup(
        "/etc/kubernetes (without the CA keys and sa.key)",
        "/etc/kubernetes",
        "etc-kubernetes",
        &CA_KEY_NAMES,
    ));
    // Arguments: backup dir, host.
    const KUBE_RULES: &str = r#"set -e; umask 077; b=$1 h=$2; install -d -m 0700 "$b"
for ipt in iptables ip6tables; do command -v $ipt-save >/dev/null || continue
  if $ipt-save 2>/dev/null | grep -q -e 'KUBE-' -e 'clusterctl-pod-masq'; then
    d="$b/$ipt-$h-$(date -u +%Y%m%dT%H%M%SZ).rules"; $ipt-save > "$d"
    grep -v -e 'KUBE-' -e 'clusterctl-pod-masq' "$d" | $ipt-restore
  fi
done"#;
    a.push(Action::run(
        &format!("remove kube-proxy's KUBE-* chains and clusterctl's masquerade rules (the iptables dump kept in {BACKUP_DIR}, 0600)"),
        Script::new(KUBE_RULES).arg(BACKUP_DIR).arg(host),
        Some(
            "for ipt in iptables ip6tables; do command -v $ipt-save >/dev/null || continue; \
             if $ipt-save 2>/dev/null | grep -q -e 'KUBE-' -e 'clusterctl-pod-masq'; then exit 1; fi; done; exit 0"
                .into(),
        ),
    ));
    a.push(Action::run(
        "remove kube-proxy's ipsets and kube-ipvs0",
        "if command -v ipset >/dev/null; then for s in $(ipset list -n 2>/dev/null | grep '^KUBE-'); do ipset destroy \"$s\"; done; fi; \
         if ip link show kube-ipvs0 >/dev/null 2>&1; then ip link del kube-ipvs0; fi",
        Some("! { command -v ipset >/dev/null && ipset list -n 2>/dev/null | grep -q '^KUBE-'; } && ! ip link show kube-ipvs0 >/dev/null 2>&1".into()),
    ));
    a.push(Action::run(
        &format!("remove the routes into the pod network {pod_cidr} and the cni0 bridge"),
        Script::new(
            r#"ip route show root "$1" | while read -r r; do ip route del $r; done
if ip link show cni0 >/dev/null 2>&1; then ip link del cni0; fi"#,
        )
        .arg(pod_cidr),
        Some(
            Script::new(
                r#"[ -z "$(ip route show root "$1" 2>/dev/null)" ] && ! ip link show cni0 >/dev/null 2>&1"#,
            )
            .arg(pod_cidr)
            .into(),
        ),
    ));
    // What archives unpacked goes before the archives themselves (they list it).
    for (file, dir, name) in &inst.archives {
        // Arguments: the archive, the directory it was unpacked into, the item's name.
        const UNPACKED: &str = r#"f=$1 d=$2 n=$3
tar -tf "$f" | grep -v '/$' | while read -r x; do rm -f "$d/$x"; done; rm -f "$d/.clusterctl-$n-"*; rm -f "$f""#;
        a.push(Action::run(
            &format!("remove what {file} unpacked into {dir}"),
            Script::new(UNPACKED).arg(file).arg(dir).arg(name),
            Some(Cmd::new("[").args(["!", "-f", file.as_str(), "]"]).into()),
        ));
    }
    if !inst.files.is_empty() {
        a.push(Action::run(
            &format!("remove the {} file(s) clusterctl wrote", inst.files.len()),
            Script::new(r#"for f in "$@"; do rm -f "$f"; done; systemctl daemon-reload"#)
                .args(&inst.files),
            Some(
                Script::new(r#"for x in "$@"; do [ -e "$x" ] && exit 1; done; exit 0"#)
                    .args(&inst.files)
                    .into(),
            ),
        ));
    }
    let mut data: Vec<&str> = DATA_DIRS.to_vec();
    data.extend(etcd_data);
    // Arguments: the run's own marker, then the directories. The marker (engine::lock) stays:
    // the runner removes it when the run ends, and a later reset takes a new one, which must
    // not count as data left behind.
    const DELETE: &str = r#"marker=$1; shift
for m in $(awk '$2 ~ "^/var/lib/kubelet/" {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
for d in "$@"; do [ -d "$d" ] || continue; find "$d" -mindepth 1 ! -path "$marker" -delete 2>/dev/null; rmdir "$d" 2>/dev/null || true; done"#;
    // A directory that is a mount point stays, empty.
    const DELETED: &str = r#"marker=$1; shift
for x in "$@"; do [ -n "$(find "$x" -mindepth 1 ! -path "$marker" -print -quit 2>/dev/null)" ] && exit 1; done; exit 0"#;
    a.push(Action::run(
        &format!(
            "delete {} (mounts under /var/lib/kubelet unmounted first)",
            data.iter().map(|d| q(d)).collect::<Vec<_>>().join(", ")
        ),
        Script::new(DELETE)
            .arg(crate::engine::lock::HOST_MARKER)
            .args(&data),
        Some(
            Script::new(DELETED)
                .arg(crate::engine::lock::HOST_MARKER)
                .args(&data)
                .into(),
        ),
    ));
    let mut dirs: Vec<&String> = inst
        .dirs
        .iter()
        .filter(|d| !KEEP_DIRS.contains(&d.as_str()))
        .collect();
    // Deepest first, so a parent is empty when its turn comes.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    if !dirs.is_empty() {
        a.push(Action::run(
            "remove the directories clusterctl made (when empty)",
            Script::new(r#"for d in "$@"; do rmdir "$d" 2>/dev/null || true; done"#).args(&dirs),
            // An empty mount point stays (rmdir cannot remove it): no work left there.
            Some(
                Script::new(
                    r#"for x in "$@"; do { [ -d "$x" ] && [ -z "$(ls -A "$x")" ] && ! mountpoint -q "$x"; } && exit 1; done; exit 0"#,
                )
                .args(&dirs)
                .into(),
            ),
        ));
    }
    a
}

impl Phase for ResetHost {
    fn name(&self) -> &'static str {
        super::DONE_PHASE
    }
    fn summary(&self) -> &'static str {
        "units stopped, pods killed, etcd data and /etc/kubernetes backed up on the host, KUBE-* rules removed (dump kept), clusterctl's files and data deleted"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let installed = installed_on(ctx)?;
        let empty = Installed::default();
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in ctx.hosts_where(|_| true) {
            plan.host(
                h,
                actions(
                    &h.name,
                    installed.get(h.name.as_str()).unwrap_or(&empty),
                    h.has(Role::Etcd).then_some(inv.spec.etcd.data_dir.as_str()),
                    &inv.spec.network.pod_cidr.to_string(),
                ),
            );
        }
        Ok(plan)
    }
    /// What remains on the host, for the report.
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let mut remains = Vec::new();
            let o = exec
                .query(
                    host,
                    &Script::new(r#"ls "$1" 2>/dev/null | tr '\n' ' '"#)
                        .arg(BACKUP_DIR)
                        .into(),
                )
                .await?;
            if !o.stdout.trim().is_empty() {
                remains.push(format!("backups in {BACKUP_DIR}: {}", o.stdout.trim()));
            }
            let debs: Vec<String> = crate::phases::prepare::items_for(ctx, host)
                .unwrap_or_default()
                .iter()
                .filter(|i| i.kind == crate::bundle::manifest::Kind::Deb)
                .map(|i| format!("{} {}", i.name, i.version))
                .collect();
            if !debs.is_empty() {
                remains.push(format!(
                    "packages installed from the bundle (not removed; their units are stopped and disabled): {}",
                    debs.join(", ")
                ));
            }
            remains.push(
                "kernel settings applied at runtime (sysctls, modules) until the next reboot"
                    .into(),
            );
            Ok(remains
                .into_iter()
                .map(|r| format!("what remains on {}: {r}", host.name))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Installed {
        Installed {
            units: [
                "containerd.service",
                "kube-proxy.service",
                "kubelet.service",
            ]
            .map(String::from)
            .into(),
            files: ["/etc/kubernetes/kubelet.conf".to_string()].into(),
            dirs: ["/usr/local/bin", "/etc/kubernetes/pki", "/etc/kubernetes"]
                .map(String::from)
                .into(),
            archives: vec![(
                "/var/cache/clusterctl/archives/cni-plugins_1.1.1.tar.gz".into(),
                "/opt/cni/bin".into(),
                "cni-plugins".into(),
            )],
        }
    }

    fn commands(a: &[Action]) -> Vec<(String, String)> {
        a.iter()
            .filter_map(|a| match a {
                Action::Run {
                    description,
                    command,
                    unless,
                    ..
                } => {
                    assert!(unless.is_some(), "{description}: every step is guarded");
                    Some((description.clone(), command.to_string()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_kubelet_stops_first_and_containerd_last_and_system_dirs_stay() {
        let steps = commands(&actions("w1", &inst(), None, "10.244.0.0/16"));
        assert_eq!(steps[0].1, "systemctl stop kubelet.service");
        assert!(steps[1].0.contains("kill the pods"));
        // Each step is fixed script text with the host's values as its arguments (after `sh`).
        assert!(
            steps[2]
                .1
                .ends_with(" sh kubelet.service kube-proxy.service containerd.service"),
            "{}",
            steps[2].1
        );
        let dirs = &steps.last().unwrap().1;
        assert!(!dirs.contains("/usr/local/bin"), "{dirs}");
        assert!(
            dirs.contains(r#"rmdir "$d""#)
                && dirs.ends_with(" sh /etc/kubernetes/pki /etc/kubernetes"),
            "{dirs}"
        );
        let all: String = steps.iter().map(|s| s.1.clone() + "\n").collect();
        assert!(all.contains(r#"ip route show root "$1""#) && all.contains(" sh 10.244.0.0/16\n"));
        // The archive's files go before the archive itself and the other files.
        let unpack = all
            .find(" sh /var/cache/clusterctl/archives/cni-plugins_1.1.1.tar.gz /opt/cni/bin cni-plugins\n")
            .unwrap();
        let files = all.find(" sh /etc/kubernetes/kubelet.conf").unwrap();
        assert!(unpack < files);
        // Nothing is deleted before it was backed up.
        let backup = all
            .find(" sh /var/backups/clusterctl etc-kubernetes w1 ")
            .unwrap();
        let delete = all
            .find(r#"find "$d" -mindepth 1 ! -path "$marker" -delete"#)
            .unwrap();
        assert!(
            all[delete..]
                .contains(" sh /var/lib/clusterctl/run.lock /etc/kubernetes /var/lib/kubelet"),
            "{all}"
        );
        assert!(backup < delete && all.find("umask 077").unwrap() < backup);
    }

    /// The /etc/kubernetes tarball a reset leaves runs through a real tar: the CA keys and
    /// sa.key are not in it, the certificates and the host's own keys are.
    #[test]
    fn the_reset_tarball_keeps_certificates_and_drops_the_ca_keys() {
        let steps = commands(&actions("w1", &inst(), None, "10.244.0.0/16"));
        let cmd = &steps
            .iter()
            .find(|s| s.1.contains(" etc-kubernetes w1 "))
            .unwrap()
            .1;
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        for f in [
            "pki/ca.key",
            "pki/ca.crt",
            "pki/etcd/ca.key",
            "pki/etcd/ca.crt",
            "pki/front-proxy-ca.key",
            "pki/sa.key",
            "pki/sa.pub",
            "pki/apiserver.key",
            "pki/etcd/server.key",
            "admin.conf",
        ] {
            let p = etc.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        let out = d.path().join("out");
        let cmd = cmd.replace(
            " sh /var/backups/clusterctl etc-kubernetes w1 /etc/kubernetes ",
            &format!(" sh {} etc-kubernetes w1 {} ", out.display(), etc.display()),
        );
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let tarball = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let list = std::process::Command::new("tar")
            .arg("-tzf")
            .arg(&tarball)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        let names: Vec<&str> = list.lines().map(|l| l.trim_start_matches("./")).collect();
        for kept in [
            "pki/ca.crt",
            "pki/etcd/ca.crt",
            "pki/sa.pub",
            "pki/apiserver.key",
            "pki/etcd/server.key",
            "admin.conf",
        ] {
            assert!(names.contains(&kept), "{kept} not in {names:?}");
        }
        for gone in [
            "pki/ca.key",
            "pki/etcd/ca.key",
            "pki/front-proxy-ca.key",
            "pki/sa.key",
        ] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
    }

    #[test]
    fn an_etcd_host_backs_up_its_data_and_deletes_it_after() {
        let steps = commands(&actions(
            "e1",
            &Installed::default(),
            Some("/var/lib/etcd"),
            "10.244.0.0/16",
        ));
        let backup = steps
            .iter()
            .position(|s| {
                s.1.ends_with(" sh /var/backups/clusterctl etcd-data e1 /var/lib/etcd")
            })
            .unwrap();
        let delete = steps
            .iter()
            .position(|s| s.0.starts_with("delete ") && s.0.contains("/var/lib/etcd"))
            .unwrap();
        assert!(backup < delete);
        assert!(steps[backup].1.contains(r#"tar -C "$d""#));
    }
}
