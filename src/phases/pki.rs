//! pki: generate (or complete, or keep) the cluster PKI locally, then copy each host only the
//! files it needs (workers never get a CA key; etcd-only hosts only etcd certificates).
//! Hosts go one at a time: a re-issued certificate restarts the running component that uses it,
//! behind that component's health gate, so a SAN change never restarts every apiserver at once.

use std::path::Path;

use anyhow::Context as _;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::engine::{Action, Context, Executor, Mode, Order, Phase, PhasePlan, Source};
use crate::inventory::Host;
use crate::pki;

pub struct Pki;

/// The secrets-at-rest key file next to the PKI (never replaced once written).
pub const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";

/// Units that must reload when a PKI file at `remote` changes.
pub(crate) fn units_for(remote: &Path) -> Vec<&'static str> {
    let p = remote.to_string_lossy();
    let name = remote
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if p.starts_with("/etc/kubernetes/pki/etcd/") {
        // etcd reads its serving and peer certificate and key again on every TLS handshake
        // (since 3.2, etcd-io/etcd#7829), but a renewal still restarts it, leader last after a
        // hand-over: tried without the restart, a CA rotation's `reissue` (new-CA leaves
        // written under running members) cost two failed reads through the VIP (`etcd failed`
        // in /readyz and a gRPC "missing content-type" answer) within seconds, cause not
        // established, where the restarting roll had none in three runs. Its CA pool it reads
        // only at start.
        return match name.as_str() {
            "ca.crt" => vec!["etcd.service", "kube-apiserver.service"],
            n if n.starts_with("server.") || n.starts_with("peer.") => vec!["etcd.service"],
            _ => vec![],
        };
    }
    match name.as_str() {
        "ca.crt" | "ca.key" | "sa.key" => {
            vec!["kube-apiserver.service", "kube-controller-manager.service"]
        }
        "controller-manager.conf" | "ca-signing.crt" => vec!["kube-controller-manager.service"],
        "scheduler.conf" => vec!["kube-scheduler.service"],
        "kubelet.conf" => vec!["kubelet.service"],
        "kube-proxy.conf" => vec!["kube-proxy.service"],
        n if n.starts_with("kubelet") => vec!["kubelet.service"],
        n if n.starts_with("apiserver") || n.starts_with("front-proxy") || n == "sa.pub" => {
            vec!["kube-apiserver.service"]
        }
        _ => vec![],
    }
}

/// A PKI file (certificate, key or kubeconfig) on its host, from the local PKI; a change
/// restarts the systemd units that load it ([`units_for`]). In static-pods mode etcd and the
/// control plane are pods, not units: their manifests carry the hash of every file they load,
/// so the re-rendered manifest replaces the pod and no unit of theirs is named here; the
/// kubelet and kube-proxy stay units in both modes and must still restart to load a renewed
/// certificate (dropping every restart there once left a kubelet serving its old one).
pub(crate) fn file_action(ctx: &Context, f: &pki::HostFile) -> Action {
    let static_pods = ctx.inv().static_pods();
    Action::File {
        path: f.remote.to_string_lossy().into_owned(),
        mode: Mode(f.mode),
        source: Source::Local {
            path: ctx.state.root.join(&f.local),
        },
        sha256: None,
        size: None,
        restarts: units_for(&f.remote)
            .into_iter()
            .filter(|u| {
                !(static_pods
                    && u.strip_suffix(".service")
                        .is_some_and(|c| super::prepare::RUN_FROM_IMAGES.contains(&c)))
            })
            .map(str::to_string)
            .collect(),
    }
}

#[derive(Serialize)]
struct EncryptionConfiguration {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    resources: Vec<EncryptedResources>,
}

#[derive(Serialize)]
struct EncryptedResources {
    resources: Vec<&'static str>,
    providers: Vec<serde_json::Value>,
}

/// Writes `pki/encryption-config.yaml` with a new random AES-CBC key, unless it exists.
fn ensure_encryption_config(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(ENCRYPTION_CONFIG);
    if path.exists() {
        return Ok(());
    }
    use base64::Engine as _;
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let cfg = EncryptionConfiguration {
        api_version: "apiserver.config.k8s.io/v1",
        kind: "EncryptionConfiguration",
        resources: vec![EncryptedResources {
            resources: vec!["secrets"],
            providers: vec![
                serde_json::json!({"aescbc": {"keys": [{"name": "key1", "secret": base64::engine::general_purpose::STANDARD.encode(key)}]}}),
                serde_json::json!({"identity": {}}),
            ],
        }],
    };
    let text = serde_saphyr::to_string(&cfg).context("rendering the encryption config")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{ENCRYPTION_CONFIG}.tmp"));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

impl Phase for Pki {
    fn name(&self) -> &'static str {
        "pki"
    }
    fn summary(&self) -> &'static str {
        "certificates and kubeconfigs: generated or kept locally, each host gets what it needs"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        // Hosts where nothing that reads these files runs yet get them together; where etcd or
        // an apiserver runs, one host at a time behind its health gate.
        let mut plan = PhasePlan::new(self, Order::Rolling);
        plan.local.push(format!(
            "generate or complete the PKI in {} (valid certificates are kept, changed ones re-issued after a backup; CAs are never replaced)",
            ctx.state.pki().display()
        ));
        if ctx.inv().spec.control_plane.encrypt_secrets {
            plan.local.push(format!(
                "write {} once (the key that encrypts Secrets at rest)",
                ctx.state.pki().join(ENCRYPTION_CONFIG).display()
            ));
        }
        for h in ctx.hosts_where(|_| true) {
            let files = pki::files_for_host(ctx.inv(), h);
            if files.is_empty() {
                continue;
            }
            let actions = files.iter().map(|f| file_action(ctx, f)).collect();
            plan.host(h, actions);
        }
        Ok(plan)
    }
    fn apply_local(&self, ctx: &Context) -> anyhow::Result<()> {
        let settings =
            pki::generate::Settings::from_inventory(ctx.inv(), |p| ctx.loaded.resolve(p))?;
        let layout = pki::generate::Layout::new(&ctx.state);
        let outcome = pki::generate::generate(ctx.inv(), &settings, &layout)?;
        for b in &outcome.backups {
            eprintln!("pki: backed up {}", b.display());
        }
        if ctx.inv().spec.control_plane.encrypt_secrets {
            ensure_encryption_config(&ctx.state.pki())?;
        }
        if ctx.inv().spec.ha.mode == crate::inventory::HaMode::Vip {
            pki::vrrp::ensure(&ctx.state.pki())?;
        }
        Ok(())
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        // Whatever runs on the host must be healthy again before the next host is touched: a
        // unit that is active, or (static-pods mode) a static pod with a manifest.
        Box::pin(async move {
            let o = exec
                .query(
                    host,
                    &"for c in etcd kube-apiserver; do \
                       if systemctl is-active --quiet $c.service || [ -e /etc/kubernetes/manifests/$c.yaml ]; \
                       then echo \"$c runs\"; fi; done"
                        .into(),
                )
                .await?;
            let runs = |c: &str| o.stdout.lines().any(|l| l == format!("{c} runs"));
            let mut report = Vec::new();
            if runs("etcd") {
                report.extend(super::etcd::Etcd.verify(ctx, host, exec).await?);
            }
            if runs("kube-apiserver") {
                report.extend(
                    super::control_plane::ControlPlane
                        .verify(ctx, host, exec)
                        .await?,
                );
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_restart_the_components_that_load_them() {
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/etcd/server.crt")),
            ["etcd.service"]
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/etcd/peer.key")),
            ["etcd.service"]
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/etcd/ca.crt")),
            ["etcd.service", "kube-apiserver.service"]
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/etcd/healthcheck-client.crt")),
            Vec::<&str>::new()
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/apiserver.crt")),
            ["kube-apiserver.service"]
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/pki/apiserver-etcd-client.key")),
            ["kube-apiserver.service"]
        );
        assert_eq!(
            units_for(Path::new("/etc/kubernetes/scheduler.conf")),
            ["kube-scheduler.service"]
        );
        assert!(
            units_for(Path::new("/etc/kubernetes/pki/ca.crt"))
                .contains(&"kube-controller-manager.service")
        );
    }

    #[test]
    fn encryption_config_is_written_once_with_a_private_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        ensure_encryption_config(d.path()).unwrap();
        let p = d.path().join(ENCRYPTION_CONFIG);
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(
            first.contains("aescbc") && first.contains("EncryptionConfiguration"),
            "{first}"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        ensure_encryption_config(d.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            first,
            "the key is never replaced"
        );
    }
}
