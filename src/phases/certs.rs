//! `renew-certs`: re-issue leaf certificates from the existing CAs, then take them to the hosts
//! and restart what loads them in a safe order, each step one host at a time behind a gate:
//! etcd members (member healthy, serving the new certificate), apiservers (each out of the
//! balancers first, by the runner's rotation; `/readyz`), controller-managers, schedulers, then
//! kubelets and kube-proxies node by node (the kubelet serving the new certificate, node
//! Ready). Containers keep running: neither containerd nor pods are restarted. The last step
//! reads what every endpoint serves over TLS and fails unless it is the new certificate.
//!
//! One struct per step ([`Certs`]); `playbooks/renew-certs.yaml` orders them. A renewal is
//! recorded in `pki/renewal.json` until its last step passed, so a re-run after a failure
//! resumes the distribution instead of issuing yet another set.
//!
//! `renew-certs --ca STAGE` is the same playbook: `certs-renew` makes the CA rotation stage's
//! local files instead (`pki::rotation`: bundles old + new, then leaves from the new CAs, then
//! the new CAs alone), the same steps roll them to the hosts, and `certs-served` records the
//! stage finished in `pki/ca-rotation.json` once every endpoint serves the local PKI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::static_pods;
use crate::engine::{Action, Context, Executor, Order, Phase, PhasePlan, Script};
use crate::inventory::{Host, Inventory, Role};
use crate::pki;

/// The components `--component` accepts, and the certificates (by `CertSpec` base name) that
/// each one's renewal re-issues.
pub const COMPONENTS: [(&str, &[&str]); 7] = [
    (
        "etcd",
        &["etcd-server", "etcd-peer", "etcd-healthcheck-client"],
    ),
    (
        "apiserver",
        &[
            "apiserver",
            "apiserver-kubelet-client",
            "apiserver-etcd-client",
            "front-proxy-client",
        ],
    ),
    ("controller-manager", &["controller-manager.conf"]),
    ("scheduler", &["scheduler.conf"]),
    ("kubelet", &["kubelet-client", "kubelet"]),
    ("kube-proxy", &["kube-proxy.conf"]),
    ("admin", &["admin.conf"]),
];

/// The steps, in playbook order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Local: re-issue the selected leaves (old files backed up), or resume a renewal.
    Renew,
    Etcd,
    Apiserver,
    ControllerManager,
    Scheduler,
    Nodes,
    /// What every endpoint serves is the certificate the local PKI holds.
    Served,
}

pub struct Certs(pub Step);

/// The certificate names (`CertSpec::name`, e.g. `kubelet@h4`) a renewal of `components`
/// (empty: all) on `hosts` (empty: all) re-issues. Cluster-wide certificates are re-issued
/// whatever `hosts` says (they are one certificate on every host that has them).
pub fn selected(
    inv: &Inventory,
    components: &[String],
    hosts: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut bases: Vec<&str> = Vec::new();
    for c in components {
        let Some((_, b)) = COMPONENTS.iter().find(|(n, _)| n == c) else {
            anyhow::bail!(
                "--component: `{c}` is not a component (components: {})",
                COMPONENTS.map(|(n, _)| n).join(", ")
            );
        };
        bases.extend(b.iter());
    }
    Ok(pki::spec::cert_list(inv)
        .into_iter()
        .filter(|c| {
            let base = c.name.split('@').next().unwrap_or_default();
            (bases.is_empty() || bases.contains(&base))
                && (hosts.is_empty() || c.host.as_ref().is_none_or(|h| hosts.contains(h)))
        })
        .map(|c| c.name)
        .collect())
}

/// `pki/renewal.json`: a renewal whose distribution has not finished yet.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Renewal {
    started: String,
    certificates: Vec<String>,
    finished: bool,
}

fn renewal_path(ctx: &Context) -> PathBuf {
    ctx.state.pki().join("renewal.json")
}

fn read_renewal(path: &Path) -> Option<Renewal> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_renewal(path: &Path, r: &Renewal) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Which step delivers a file to host `h`: by its path on the host (kubeadm's layout), else
/// (a file shared by several components, e.g. the cluster CA on a worker, or the etcd CA on a
/// control-plane host without etcd) the first step that visits the host.
pub fn step_of(inv: &Inventory, h: &Host, remote: &Path) -> Step {
    let p = remote.to_string_lossy();
    let by_path = if p.starts_with("/etc/kubernetes/pki/etcd/") {
        Step::Etcd
    } else if p == "/etc/kubernetes/controller-manager.conf" {
        Step::ControllerManager
    } else if p == "/etc/kubernetes/scheduler.conf" {
        Step::Scheduler
    } else if p == "/etc/kubernetes/kubelet.conf"
        || p == "/etc/kubernetes/kube-proxy.conf"
        || p.starts_with("/var/lib/kubelet/")
    {
        Step::Nodes
    } else {
        // The rest of /etc/kubernetes/pki and admin.conf: the apiserver's step.
        Step::Apiserver
    };
    [by_path, Step::Etcd, Step::Apiserver, Step::Nodes]
        .into_iter()
        .find(|s| Certs(*s).takes(inv, h))
        .unwrap_or(by_path)
}

/// A TLS endpoint whose served certificate comes from the PKI.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub what: &'static str,
    /// `CertSpec::name` of the certificate it serves.
    pub certificate: String,
    /// The certificate file it serves from, on its host.
    pub remote: &'static str,
    /// The local copy (`clusters/<name>/pki/...crt`).
    #[serde(skip)]
    pub local: PathBuf,
}

/// Every endpoint of the cluster that serves a PKI certificate: etcd's client and peer ports,
/// each apiserver, each kubelet. (The controller-manager's and scheduler's secure ports listen
/// on loopback with a certificate they make themselves at start.)
pub fn endpoints(inv: &Inventory, pki_dir: &Path) -> Vec<Endpoint> {
    let certs = pki::spec::cert_list(inv);
    let local = |name: &str| {
        certs
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.files.as_ref())
            .map(|f| pki::spec::crt_path(&pki_dir.join(f)))
            .unwrap_or_default()
    };
    let mut v = Vec::new();
    for h in &inv.spec.hosts {
        let mut add = |port: u16, what: &'static str, cert: String, remote: &'static str| {
            v.push(Endpoint {
                host: h.name.to_string(),
                address: h.address.to_string(),
                port,
                what,
                remote,
                local: local(&cert),
                certificate: cert,
            })
        };
        if h.has(Role::Etcd) {
            add(
                2379,
                "etcd client",
                format!("etcd-server@{}", h.name),
                "/etc/kubernetes/pki/etcd/server.crt",
            );
            add(
                2380,
                "etcd peer",
                format!("etcd-peer@{}", h.name),
                "/etc/kubernetes/pki/etcd/peer.crt",
            );
        }
        if h.has(Role::ControlPlane) {
            add(
                inv.spec.control_plane.apiserver_port,
                "kube-apiserver",
                format!("apiserver@{}", h.name),
                "/etc/kubernetes/pki/apiserver.crt",
            );
        }
        // A TLS-bootstrap worker's kubelet serves a certificate the cluster issued it
        // (rotated by the kubelet): no local file to compare with.
        if inv.runs_kubelet(h) && !inv.kubelet_bootstraps(h) {
            add(
                10250,
                "kubelet",
                format!("kubelet@{}", h.name),
                "/var/lib/kubelet/pki/kubelet.crt",
            );
        }
    }
    v
}

/// What one endpoint serves against its local certificate.
#[derive(Debug, Clone, Serialize)]
pub struct ServedCheck {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub served_serial: Option<String>,
    pub served_not_after: Option<String>,
    pub file_serial: Option<String>,
    /// Served and local certificates are the same one.
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads what `e` serves and compares it with the local certificate.
pub async fn check_served(e: &Endpoint) -> ServedCheck {
    let file = std::fs::read_to_string(&e.local)
        .ok()
        .and_then(|t| pki::inspect::from_pem(&t, &e.certificate).ok());
    let served = crate::tls::served_certificate(&e.address, e.port, Duration::from_secs(5))
        .await
        .and_then(|der| pki::inspect::from_der(&der, &e.certificate));
    let (served_serial, served_not_after, error) = match served {
        Ok(c) => (
            Some(c.serial),
            Some(pki::generate::fmt_time(c.not_after)),
            None,
        ),
        Err(err) => (None, None, Some(format!("{err:#}"))),
    };
    let file_serial = file.map(|c| c.serial);
    ServedCheck {
        current: served_serial.is_some() && served_serial == file_serial,
        endpoint: e.clone(),
        served_serial,
        served_not_after,
        file_serial,
        error,
    }
}

/// Waits until every endpoint of `host` in `which` serves its local certificate.
async fn wait_served(ctx: &Context, host: &Host, which: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for e in endpoints(ctx.inv(), &ctx.state.pki())
        .into_iter()
        .filter(|e| e.host == host.name && which.contains(&e.what))
    {
        let mut last = None;
        for _ in 0..120 {
            let c = check_served(&e).await;
            if c.current {
                last = None;
                lines.push(format!(
                    "{} {}:{} serves serial {}",
                    e.what,
                    host.name,
                    e.port,
                    c.served_serial.unwrap_or_default()
                ));
                break;
            }
            last = Some(c);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Some(c) = last {
            anyhow::bail!(
                "{} on {}:{} still serves serial {} after 60 s, not the renewed {}{}",
                e.what,
                host.name,
                e.port,
                c.served_serial.as_deref().unwrap_or("(none)"),
                c.file_serial.as_deref().unwrap_or("(no local file)"),
                c.error.map(|e| format!(" ({e})")).unwrap_or_default()
            );
        }
    }
    Ok(lines)
}

/// Waits for a loopback TLS port of a control-plane component to listen again on `host`.
async fn wait_port(exec: &dyn Executor, host: &Host, port: u16, what: &str) -> anyhow::Result<()> {
    let o = exec
        .query(
            host,
            &Script::bash(
                r#"for i in $(seq 120); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && exit 0; sleep 0.5; done; exit 1"#,
            )
            .arg(port)
            .into(),
        )
        .await?;
    if o.status != 0 {
        anyhow::bail!(
            "{what} on {} does not listen on 127.0.0.1:{port} after 60 s: see `journalctl -u {what}`",
            host.name
        );
    }
    Ok(())
}

/// What the operator must hear at every stage: kubeconfigs made before it are not updated.
const HANDED_OUT: &str = "kubeconfigs handed out earlier (copies of admin.conf, `clusterctl kubeconfig` output, /etc/kubernetes/admin.conf copied off a host) are not updated: replace them with clusters/<name>/admin.conf after each stage (`clusterctl kubeconfig --merge`); after `--ca finish` the old ones are refused";

fn ca_stage_summary(stage: pki::rotation::Stage) -> &'static str {
    match stage {
        pki::rotation::Stage::Trust => {
            "new cluster, etcd and front-proxy CAs beside the old ones; every trust bundle (ca.crt, etcd/ca.crt, front-proxy-ca.crt, the kubeconfigs' CA data) becomes old + new and is rolled; leaves and sa.key kept"
        }
        pki::rotation::Stage::Reissue => {
            "the new CAs sign: every leaf certificate re-issued from them and rolled; the bundles keep the old CA; sa.key kept (service-account tokens stay valid)"
        }
        pki::rotation::Stage::Finish => {
            "the old CAs dropped from every trust bundle in a last roll (refused while an endpoint serves an old-CA leaf); the old CAs kept in pki-backup/"
        }
    }
}

/// `certs-renew` for `--ca STAGE`: the stage's bundles and keys (pki::rotation), then what
/// `generate` makes of them (the leaves the signing CA did not sign re-issued; every
/// kubeconfig's CA data rewritten), then the user's admin.conf.
fn ca_stage_local(ctx: &Context, stage: pki::rotation::Stage) -> anyhow::Result<()> {
    let inv = ctx.inv();
    let settings = pki::generate::Settings::from_inventory(inv, |p| ctx.loaded.resolve(p))?;
    let layout = pki::generate::Layout::new(&ctx.state);
    let state = pki::rotation::read_state(&layout.pki)?;
    let now = pki::generate::fmt_time(time::OffsetDateTime::now_utc().unix_timestamp());
    let s = pki::rotation::apply_local(&layout, &settings, stage, state.as_ref(), &now)?;
    let outcome = pki::generate::generate(inv, &settings, &layout)?;
    for b in &outcome.backups {
        eprintln!("certs-renew: backed up {}", b.display());
    }
    eprintln!(
        "certs-renew: CA rotation stage `{}` (new CA sha256 {}): {} certificate(s) re-issued, {} kubeconfig(s) rewritten",
        stage.name(),
        s.new.get("ca").map(|f| &f[..16]).unwrap_or_default(),
        outcome.count(pki::generate::Action::Reissued),
        outcome.count(pki::generate::Action::Rewritten),
    );
    // The user's copy, so that `kubectl --kubeconfig clusters/<name>/admin.conf` keeps
    // working through every stage.
    use crate::engine::Phase as _;
    super::kubeconfig::Kubeconfig.apply_local(ctx)?;
    eprintln!("certs-renew: {HANDED_OUT}");
    Ok(())
}

/// For `--ca finish`: every endpoint that does not serve a leaf of the rotation's new CA,
/// with what it serves instead (empty: the old CAs may go). Read over TLS, as
/// `certs check-expiration` reads what endpoints serve.
pub async fn old_ca_endpoints(inv: &Inventory, pki_dir: &Path) -> Vec<String> {
    let eps = endpoints(inv, pki_dir);
    let checks = futures::future::join_all(eps.iter().map(|e| async move {
        let ca = if e.what.starts_with("etcd") {
            pki::spec::Ca::Etcd
        } else {
            pki::spec::Ca::Cluster
        };
        let Some(new) = pki::rotation::new_ca(pki_dir, ca) else {
            return Some(format!(
                "{} {}:{}: no new {} CA in {} (no rotation under way?)",
                e.what,
                e.host,
                e.port,
                ca.name(),
                pki::rotation::work_dir(pki_dir).display()
            ));
        };
        let served = crate::tls::served_certificate(&e.address, e.port, Duration::from_secs(5))
            .await
            .and_then(|der| pki::inspect::from_der(&der, &e.certificate));
        match served {
            Ok(c) if pki::rotation::signed_by(&c, &new) => None,
            Ok(c) => Some(format!(
                "{} {}:{} serves serial {}, not signed by the new {} CA",
                e.what,
                e.host,
                e.port,
                c.serial,
                ca.name()
            )),
            Err(err) => Some(format!("{} {}:{}: {err:#}", e.what, e.host, e.port)),
        }
    }))
    .await;
    checks.into_iter().flatten().collect()
}

impl Certs {
    /// The component manifest (static-pods mode) this step re-renders: the certificates'
    /// hashes are among its inputs, so the kubelet replaces the pod.
    fn static_pod(&self) -> Option<&'static str> {
        match self.0 {
            Step::Etcd => Some("etcd"),
            Step::Apiserver => Some("kube-apiserver"),
            Step::ControllerManager => Some("kube-controller-manager"),
            Step::Scheduler => Some("kube-scheduler"),
            _ => None,
        }
    }

    /// Hosts this step visits.
    fn takes(&self, inv: &Inventory, h: &Host) -> bool {
        match self.0 {
            Step::Etcd => h.has(Role::Etcd),
            Step::Apiserver | Step::ControllerManager | Step::Scheduler => {
                h.has(Role::ControlPlane)
            }
            Step::Nodes => inv.runs_kubelet(h),
            Step::Renew | Step::Served => false,
        }
    }
}

impl Phase for Certs {
    fn name(&self) -> &'static str {
        match self.0 {
            Step::Renew => "certs-renew",
            Step::Etcd => "certs-etcd",
            Step::Apiserver => "certs-apiserver",
            Step::ControllerManager => "certs-controller-manager",
            Step::Scheduler => "certs-scheduler",
            Step::Nodes => "certs-nodes",
            Step::Served => "certs-served",
        }
    }
    fn summary(&self) -> &'static str {
        match self.0 {
            Step::Renew => "re-issue the selected leaf certificates from the existing CAs",
            Step::Etcd => "etcd members one at a time: new certificates, restart, health gate",
            Step::Apiserver => {
                "apiservers one at a time: out of the balancers, new certificates, restart, /readyz"
            }
            Step::ControllerManager => "controller-managers one at a time",
            Step::Scheduler => "schedulers one at a time",
            Step::Nodes => "kubelets and kube-proxies node by node; containers keep running",
            Step::Served => "every endpoint serves the renewed certificate (read over TLS)",
        }
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let mut plan = PhasePlan::new(self, Order::OneAtATime);
        match self.0 {
            Step::Renew if ctx.options.ca_stage.is_some() => {
                let stage = ctx.options.ca_stage.expect("checked");
                let pki_dir = ctx.state.pki();
                let state = pki::rotation::read_state(&pki_dir)?;
                plan.local.push(pki::rotation::describe(state.as_ref()));
                let how = pki::rotation::step(state.as_ref(), stage)?;
                plan.local.push(format!(
                    "CA rotation stage `{}` ({}): {}",
                    stage.name(),
                    match how {
                        pki::rotation::Step::Start => "start",
                        pki::rotation::Step::Resume => "resume the unfinished run",
                        pki::rotation::Step::Converge => "already done: converge again",
                    },
                    ca_stage_summary(stage)
                ));
                plan.local.push(HANDED_OUT.into());
                return Ok(plan);
            }
            Step::Renew => {
                if let Some(st) = pki::rotation::read_state(&ctx.state.pki())?
                    && !(st.stage == pki::rotation::Stage::Finish && st.finished)
                {
                    plan.notes.push(format!(
                        "{}: this renewal issues from the CAs that sign now",
                        pki::rotation::describe(Some(&st))
                    ));
                }
                let names = selected(inv, &ctx.options.renew_components, &ctx.host_filter)?;
                plan.local.push(format!(
                    "re-issue {} certificate(s) in {} (new keys and serials; the old files backed up; the CAs kept){}",
                    names.len(),
                    ctx.state.pki().display(),
                    if read_renewal(&renewal_path(ctx)).is_some_and(|r| !r.finished && r.certificates == names) {
                        " — or resume the unfinished renewal of the same certificates"
                    } else {
                        ""
                    }
                ));
                return Ok(plan);
            }
            Step::Served => {
                plan.local.push(
                    "read the certificate every etcd, apiserver and kubelet endpoint serves; each must be the renewed one".into(),
                );
                return Ok(plan);
            }
            _ => {}
        }
        for h in ctx.hosts_where(|h| self.takes(inv, h)) {
            if self.0 == Step::Nodes && inv.kubelet_bootstraps(h) {
                plan.notes.push(format!(
                    "{}: kubelet.certificates bootstrap: its kubelet (and kube-proxy) certificates are cluster-rotated, nothing to push",
                    h.name
                ));
            }
            // Static pods: the re-rendered manifest (below) replaces the pod; the kubelet and
            // kube-proxy are units in both modes (file_action).
            let mut a: Vec<Action> = pki::files_for_host(inv, h)
                .iter()
                .filter(|f| step_of(inv, h, &f.remote) == self.0)
                .map(|f| {
                    let mut a = super::pki::file_action(ctx, f);
                    // etcd's step restarts etcd only: a changed etcd CA bundle (a CA
                    // rotation) reaches the apiserver at its own step, drained and gated
                    // there (its other CA bundles change in the same stage).
                    if self.0 == Step::Etcd
                        && let Action::File { restarts, .. } = &mut a
                    {
                        restarts.retain(|u| u == "etcd.service");
                    }
                    a
                })
                .collect();
            // A CA rotation makes ca.crt a bundle, which kube-controller-manager refuses as
            // its signing certificate: its unit (flags) must read ca-signing.crt before this
            // step's ca.crt restarts it. A no-op where `init` already wrote it so; it matters
            // for clusters whose unit predates ca-signing.crt.
            if self.0 == Step::Apiserver
                && ctx.options.ca_stage.is_some()
                && !inv.static_pods()
                && !a.is_empty()
            {
                a.push(super::control_plane::unit_action(
                    ctx,
                    h,
                    "kube-controller-manager",
                )?);
            }
            if a.is_empty() {
                continue;
            }
            if inv.static_pods()
                && let Some(c) = self.static_pod()
            {
                a.push(static_pods::manifest(ctx, h, c, &[])?);
            }
            plan.host(h, a);
        }
        Ok(plan)
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        if self.0 != Step::Renew || ctx.options.dry_run {
            return Ok(());
        }
        if let Some(stage) = ctx.options.ca_stage {
            return ca_stage_local(ctx, stage);
        }
        let inv = ctx.inv();
        let names = selected(inv, &ctx.options.renew_components, &ctx.host_filter)?;
        let path = renewal_path(ctx);
        if let Some(r) = read_renewal(&path)
            && !r.finished
            && r.certificates == names
        {
            eprintln!(
                "certs-renew: resuming the renewal started {} ({} certificates): not issuing them again",
                r.started,
                names.len()
            );
            return Ok(());
        }
        let settings = pki::generate::Settings::from_inventory(inv, |p| ctx.loaded.resolve(p))?;
        let layout = pki::generate::Layout::new(&ctx.state);
        let outcome = pki::generate::renew(
            inv,
            &settings,
            &layout,
            pki::generate::Select::Names(&names),
        )?;
        for b in &outcome.backups {
            eprintln!("certs-renew: backed up {}", b.display());
        }
        write_renewal(
            &path,
            &Renewal {
                started: pki::generate::fmt_time(time::OffsetDateTime::now_utc().unix_timestamp()),
                certificates: names,
                finished: false,
            },
        )
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            match self.0 {
                Step::Etcd => {
                    let mut report = super::etcd::Etcd.verify(ctx, host, exec).await?;
                    report.extend(wait_served(ctx, host, &["etcd client", "etcd peer"]).await?);
                    Ok(report)
                }
                Step::Apiserver => {
                    let mut report = super::control_plane::ControlPlane
                        .verify(ctx, host, exec)
                        .await?;
                    report.extend(wait_served(ctx, host, &["kube-apiserver"]).await?);
                    Ok(report)
                }
                Step::ControllerManager => {
                    let mut report = Vec::new();
                    if ctx.inv().static_pods() {
                        report = static_pods::wait_replaced(
                            exec,
                            host,
                            &["kube-controller-manager"],
                            Duration::from_secs(120),
                        )
                        .await?;
                    }
                    wait_port(exec, host, 10257, "kube-controller-manager").await?;
                    Ok(report)
                }
                Step::Scheduler => {
                    let mut report = Vec::new();
                    if ctx.inv().static_pods() {
                        report = static_pods::wait_replaced(
                            exec,
                            host,
                            &["kube-scheduler"],
                            Duration::from_secs(120),
                        )
                        .await?;
                    }
                    wait_port(exec, host, 10259, "kube-scheduler").await?;
                    Ok(report)
                }
                Step::Nodes => {
                    // The restarted kubelet serves the new certificate, then its node is Ready
                    // (right after a restart the old Ready status may still stand).
                    let lines = wait_served(ctx, host, &["kubelet"]).await?;
                    super::kubelet::Kubelet.verify(ctx, host, exec).await?;
                    if ctx.inv().runs_kubelet(host) {
                        super::kube_proxy::KubeProxy.verify(ctx, host, exec).await?;
                    }
                    Ok(lines)
                }
                Step::Renew | Step::Served => Ok(vec![]),
            }
        })
    }
    fn apply_cluster<'a>(
        &'a self,
        ctx: &'a Context,
        dry_run: bool,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            if self.0 != Step::Served || dry_run {
                return Ok(vec![]);
            }
            let eps: Vec<Endpoint> = endpoints(ctx.inv(), &ctx.state.pki())
                .into_iter()
                .filter(|e| ctx.host_filter.is_empty() || ctx.host_filter.contains(&e.host))
                .collect();
            let checks = futures::future::join_all(eps.iter().map(check_served)).await;
            let stale: Vec<String> = checks
                .iter()
                .filter(|c| !c.current)
                .map(|c| {
                    format!(
                        "{} {}:{} serves {} but the PKI holds {}{}",
                        c.endpoint.what,
                        c.endpoint.host,
                        c.endpoint.port,
                        c.served_serial.as_deref().unwrap_or("nothing"),
                        c.file_serial.as_deref().unwrap_or("no certificate"),
                        c.error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    )
                })
                .collect();
            if !stale.is_empty() {
                anyhow::bail!(
                    "{} endpoint(s) do not serve the renewed certificate:\n  {}",
                    stale.len(),
                    stale.join("\n  ")
                );
            }
            let mut lines = vec![format!(
                "{} endpoint(s) serve the certificates of the local PKI",
                checks.len()
            )];
            if let Some(stage) = ctx.options.ca_stage {
                let layout = pki::generate::Layout::new(&ctx.state);
                let stamp = time::OffsetDateTime::now_utc()
                    .format(time::macros::format_description!(
                        "[year][month][day]T[hour][minute][second]Z"
                    ))
                    .unwrap_or_default();
                if let Some(s) = pki::rotation::mark_finished(&layout, &stamp)? {
                    lines.push(format!("CA rotation stage `{}` finished", stage.name()));
                    if let Some(b) = &s.backup {
                        lines.push(format!(
                            "the old CAs (and the new ones' first copies) are kept in {}",
                            b.display()
                        ));
                    }
                    lines.push(HANDED_OUT.into());
                }
            } else {
                let path = renewal_path(ctx);
                if let Some(mut r) = read_renewal(&path) {
                    r.finished = true;
                    write_renewal(&path, &r)?;
                }
            }
            Ok(lines)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        use crate::pki::spec::tests::INV;
        crate::inventory::load_str(INV, Path::new("t.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory
    }

    #[test]
    fn every_host_file_belongs_to_one_step_that_visits_its_host() {
        let inv = inv();
        for h in &inv.spec.hosts {
            for f in pki::files_for_host(&inv, h) {
                let step = Certs(step_of(&inv, h, &f.remote));
                assert!(
                    step.takes(&inv, h),
                    "{} on {} goes with {}, which does not visit {}",
                    f.remote.display(),
                    h.name,
                    step.name(),
                    h.name
                );
            }
        }
    }

    /// `--ca`: the apiserver step takes the controller-manager's unit along (it must read
    /// ca-signing.crt before ca.crt becomes a bundle), and the etcd step restarts etcd only
    /// (a changed etcd CA bundle reaches the apiserver at its drained step).
    #[test]
    fn a_ca_stage_rolls_the_controller_managers_unit_and_etcd_restarts_only_etcd() {
        use crate::engine::{RunOptions, Source};
        let dir = tempfile::tempdir().unwrap();
        let ctx = |ca_stage| {
            crate::engine::guarded_fake::test_context(
                crate::pki::spec::tests::INV,
                dir.path(),
                &[],
                RunOptions {
                    ca_stage,
                    ..Default::default()
                },
            )
        };
        let kcm_units = |c: &Context| -> Vec<String> {
            let plan = Certs(Step::Apiserver).plan(c).unwrap();
            plan.hosts
                .iter()
                .flat_map(|hp| &hp.actions)
                .filter_map(|a| match a {
                    Action::File {
                        path,
                        source: Source::Rendered { content, .. },
                        ..
                    } if path == "/etc/systemd/system/kube-controller-manager.service" => {
                        Some(String::from_utf8_lossy(content).into_owned())
                    }
                    _ => None,
                })
                .collect()
        };
        let rotating = ctx(Some(pki::rotation::Stage::Trust));
        let units = kcm_units(&rotating);
        assert_eq!(units.len(), rotating.inv().control_plane_hosts().count());
        assert!(
            units
                .iter()
                .all(|u| u
                    .contains("--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signing.crt")),
            "{units:?}"
        );
        assert!(
            kcm_units(&ctx(None)).is_empty(),
            "a plain renewal leaves it"
        );
        let plan = Certs(Step::Etcd).plan(&rotating).unwrap();
        let mut ca_seen = 0;
        for a in plan.hosts.iter().flat_map(|hp| &hp.actions) {
            if let Action::File { path, restarts, .. } = a {
                assert!(
                    restarts.iter().all(|u| u == "etcd.service"),
                    "{path}: {restarts:?}"
                );
                ca_seen +=
                    usize::from(path == "/etc/kubernetes/pki/etcd/ca.crt" && !restarts.is_empty());
            }
        }
        assert!(ca_seen > 0, "the etcd CA bundle restarts etcd");
    }

    /// Static-pods mode: a renewed kubelet certificate restarts the kubelet (a unit in both
    /// modes), while a control-plane certificate names no unit and re-renders the pod's
    /// manifest instead. Renewals there once restarted nothing at all, and the kubelet kept
    /// serving its old certificate.
    #[test]
    fn static_pods_renewals_restart_the_kubelet_and_replace_pods_by_their_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = crate::pki::spec::tests::INV
            .replace("  hosts:", "  controlPlane: {mode: static-pods}\n  hosts:")
            .replace("roles: [control-plane]}", "roles: [etcd, control-plane]}");
        let ctx =
            crate::engine::guarded_fake::test_context(&yaml, dir.path(), &[], Default::default());
        assert!(ctx.inv().static_pods());
        let files = |step| -> Vec<(String, Vec<String>)> {
            Certs(step)
                .plan(&ctx)
                .unwrap()
                .hosts
                .iter()
                .flat_map(|hp| &hp.actions)
                .filter_map(|a| match a {
                    Action::File { path, restarts, .. } => Some((path.clone(), restarts.clone())),
                    _ => None,
                })
                .collect()
        };
        let nodes = files(Step::Nodes);
        let kubelet_files: Vec<_> = nodes
            .iter()
            .filter(|(p, _)| p.contains("kubelet"))
            .collect();
        assert!(!kubelet_files.is_empty());
        for (path, restarts) in kubelet_files {
            assert_eq!(restarts, &["kubelet.service"], "{path}");
        }
        let apiserver = files(Step::Apiserver);
        assert!(
            apiserver
                .iter()
                .any(|(p, _)| p == "/etc/kubernetes/manifests/kube-apiserver.yaml"),
            "{apiserver:?}"
        );
        let etcd = files(Step::Etcd);
        assert!(
            etcd.iter()
                .any(|(p, _)| p == "/etc/kubernetes/manifests/etcd.yaml"),
            "{etcd:?}"
        );
        for (path, restarts) in apiserver.iter().chain(&etcd) {
            assert!(restarts.is_empty(), "{path}: {restarts:?}");
        }
    }

    #[test]
    fn components_select_their_certificates_and_hosts_narrow_per_host_ones() {
        let inv = inv();
        let all = selected(&inv, &[], &[]).unwrap();
        assert_eq!(all.len(), pki::spec::cert_list(&inv).len());
        let etcd = selected(&inv, &["etcd".into()], &[]).unwrap();
        assert!(etcd.iter().all(|n| n.starts_with("etcd-")), "{etcd:?}");
        assert!(etcd.contains(&"etcd-healthcheck-client".to_string()));
        let h = inv.etcd_hosts().next().unwrap().name.to_string();
        let one = selected(&inv, &["etcd".into()], std::slice::from_ref(&h)).unwrap();
        assert!(
            one.iter()
                .all(|n| !n.contains('@') || n.ends_with(&format!("@{h}"))),
            "{one:?}"
        );
        assert!(one.contains(&"etcd-healthcheck-client".to_string()));
        let e = selected(&inv, &["etcd-server".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("components: etcd, apiserver"), "{e}");
    }

    #[test]
    fn endpoints_cover_etcd_apiservers_and_kubelets_with_their_local_files() {
        let inv = inv();
        let eps = endpoints(&inv, Path::new("/x/pki"));
        let cp = inv.control_plane_hosts().count();
        assert_eq!(
            eps.iter().filter(|e| e.what == "kube-apiserver").count(),
            cp
        );
        let e = eps.iter().find(|e| e.port == 2380).unwrap();
        assert_eq!(
            e.local,
            Path::new(&format!("/x/pki/nodes/{}/etcd/peer.crt", e.host))
        );
        let k = eps.iter().find(|e| e.what == "kubelet").unwrap();
        assert!(k.local.ends_with(format!("nodes/{}/kubelet.crt", k.host)));
    }

    /// A TLS-bootstrap worker: no kubelet endpoint to compare with a local file, nothing of
    /// it among the certificates a renewal re-issues, and the control-plane nodes' kubelets
    /// still in both.
    #[test]
    fn a_bootstrap_worker_is_left_to_its_kubelet() {
        use crate::pki::spec::tests::INV;
        let text = INV.replace(
            "  ha: {mode: vip",
            "  kubelet: {certificates: bootstrap}\n  ha: {mode: vip",
        );
        let inv = crate::inventory::load_str(&text, Path::new("t.yaml"))
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory;
        let kubelets: Vec<String> = endpoints(&inv, Path::new("/x/pki"))
            .into_iter()
            .filter(|e| e.what == "kubelet")
            .map(|e| e.host)
            .collect();
        assert!(!kubelets.contains(&"w1".to_string()), "{kubelets:?}");
        assert!(kubelets.contains(&"cp1".to_string()), "{kubelets:?}");
        let names = selected(&inv, &["kubelet".into(), "kube-proxy".into()], &[]).unwrap();
        assert!(!names.iter().any(|n| n.ends_with("@w1")), "{names:?}");
        assert!(names.contains(&"kubelet@cp1".to_string()), "{names:?}");
    }
}
