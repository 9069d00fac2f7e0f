//! PKI generation checked from the outside: `openssl verify` for every chain, x509-parser for
//! subjects, SANs, usages and dates, byte comparisons for idempotence and backups.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clusterctl::inventory::{self, Inventory};
use clusterctl::pki::generate::{self, Action, Layout, Select, Settings};
use clusterctl::pki::inspect::{self, CertInfo};
use clusterctl::pki::kubeconfig::Kubeconfig;
use clusterctl::pki::spec::{self, San};
use clusterctl::state::StateDir;

const YEAR: i64 = 365 * 86400;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    inv: Inventory,
    layout: Layout,
}

impl Fixture {
    fn new(yaml: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.yaml");
        // The examples name ~/.ssh/id_ed25519; validation wants a key file that exists.
        std::fs::write(dir.path().join("id_test"), "not read by the PKI\n").unwrap();
        std::fs::write(&path, yaml.replace("~/.ssh/id_ed25519", "id_test")).unwrap();
        let loaded = inventory::load(&path).unwrap_or_else(|d| panic!("{d}"));
        let layout = Layout::new(&StateDir::new(dir.path(), loaded.inventory.name()));
        Fixture {
            _dir: dir,
            path,
            inv: loaded.inventory,
            layout,
        }
    }

    fn example(name: &str) -> Fixture {
        Fixture::new(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("examples")
                    .join(name),
            )
            .unwrap(),
        )
    }

    /// Replaces the inventory (same state directory).
    fn edit(&mut self, f: impl Fn(&str) -> String) {
        let text = f(&std::fs::read_to_string(&self.path).unwrap());
        std::fs::write(&self.path, text).unwrap();
        self.inv = inventory::load(&self.path)
            .unwrap_or_else(|d| panic!("{d}"))
            .inventory;
    }

    fn settings(&self) -> Settings {
        let loaded_dir = self.path.parent().unwrap().to_path_buf();
        Settings::from_inventory(&self.inv, |p| loaded_dir.join(p)).unwrap()
    }

    fn generate(&self) -> generate::Outcome {
        generate::generate(&self.inv, &self.settings(), &self.layout).unwrap()
    }

    fn pki(&self, rel: &str) -> PathBuf {
        self.layout.pki.join(rel)
    }

    fn cert(&self, rel: &str) -> CertInfo {
        let p = self.pki(rel);
        inspect::from_pem(
            &std::fs::read_to_string(&p).unwrap(),
            &p.display().to_string(),
        )
        .unwrap()
    }

    fn kubeconfig(&self, rel: &str) -> (Kubeconfig, CertInfo) {
        let p = self.layout.kubeconfig.join(rel);
        let k = Kubeconfig::from_yaml(&std::fs::read_to_string(&p).unwrap(), rel).unwrap();
        let c = inspect::from_pem(&k.client_cert_pem().unwrap().unwrap(), rel).unwrap();
        (k, c)
    }

    /// Every file under pki/ and kubeconfig/ with its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(d: &Path, root: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else {
                    out.insert(
                        p.strip_prefix(root).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.layout.pki, &self.layout.root, &mut out);
        walk(&self.layout.kubeconfig, &self.layout.root, &mut out);
        out
    }
}

fn sans(items: &[&str]) -> Vec<San> {
    let mut v: Vec<San> = items.iter().map(|s| San::parse(s)).collect();
    v.sort();
    v
}

/// `openssl verify -CAfile ca certs...`: every cert must chain to `ca`.
fn openssl_verify(ca: &Path, certs: &[PathBuf]) {
    assert!(!certs.is_empty());
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .args(certs)
        .output()
        .expect("openssl must be installed (apt-get install -y openssl)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openssl verify failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in certs {
        assert!(
            stdout.contains(&format!("{}: OK", c.display())),
            "not verified: {}\n{stdout}",
            c.display()
        );
    }
}

/// Every leaf of the table verified against its CA with openssl; kubeconfig certs are written
/// out to a temp dir first. Returns how many were verified.
fn verify_all_chains(f: &Fixture) -> usize {
    let tmp = tempfile::tempdir().unwrap();
    let mut by_ca: BTreeMap<spec::Ca, Vec<PathBuf>> = BTreeMap::new();
    for (i, c) in spec::cert_list(&f.inv).iter().enumerate() {
        let path = match (&c.files, &c.kubeconfig) {
            (Some(b), _) => f.layout.pki.join(spec::crt_path(b)),
            (None, Some(k)) => {
                let (kc, _) = f.kubeconfig(k.file.to_str().unwrap());
                let p = tmp.path().join(format!("{i}.crt"));
                std::fs::write(&p, kc.client_cert_pem().unwrap().unwrap()).unwrap();
                p
            }
            (None, None) => unreachable!(),
        };
        by_ca.entry(c.ca).or_default().push(path);
    }
    let mut n = 0;
    for (ca, certs) in by_ca {
        openssl_verify(&f.pki(&format!("{}.crt", ca.base())), &certs);
        n += certs.len();
    }
    n
}

fn assert_leaf(c: &CertInfo, cn: &str, orgs: &[&str], server: bool, client: bool, issuer_cn: &str) {
    assert_eq!(c.common_name, cn, "{}", c.subject);
    assert_eq!(c.organizations, orgs, "{}", c.subject);
    assert_eq!(
        (c.server_auth, c.client_auth),
        (server, client),
        "EKU of {}",
        c.subject
    );
    assert!(
        !c.is_ca && !c.key_cert_sign,
        "{} must not be a CA",
        c.subject
    );
    assert!(c.digital_signature, "{}: DigitalSignature", c.subject);
    assert!(
        !c.key_encipherment,
        "{}: ECDSA leaf must not claim KeyEncipherment",
        c.subject
    );
    assert_eq!(c.issuer, format!("CN={issuer_cn}"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let left = c.not_after - now;
    assert!(
        (50 * YEAR - 3600..=50 * YEAR).contains(&left),
        "{}: 50y lifetime, got {left}s",
        c.subject
    );
    assert!(c.not_before <= now);
}

#[test]
fn ha_vip_every_cert_chains_and_has_the_right_fields() {
    let f = Fixture::example("ha-vip.yaml");
    let out = f.generate();
    assert_eq!(
        out.count(Action::Created),
        39,
        "3 CAs + sa + 35 leaves (an apiserver certificate per control-plane host): {:#?}",
        out.items
    );
    assert_eq!(verify_all_chains(&f), 35);

    // CAs: self-signed, CA:TRUE, keyCertSign, 100 years.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for (rel, cn) in [
        ("ca.crt", "kubernetes"),
        ("etcd/ca.crt", "etcd-ca"),
        ("front-proxy-ca.crt", "front-proxy-ca"),
    ] {
        let c = f.cert(rel);
        assert_eq!(
            (c.common_name.as_str(), c.issuer.as_str()),
            (cn, format!("CN={cn}").as_str())
        );
        assert!(c.is_ca && c.key_cert_sign);
        assert!((100 * YEAR - 3600..=100 * YEAR).contains(&(c.not_after - now)));
        openssl_verify(&f.pki(rel), &[f.pki(rel)]);
    }

    // Each control-plane host's own serving certificate (kubeadm's per-node apiserver.crt).
    let api = f.cert("nodes/cp1/apiserver.crt");
    assert_leaf(&api, "kube-apiserver", &[], true, false, "kubernetes");
    assert_eq!(
        api.sans,
        sans(&[
            "cp1",
            "192.168.56.11",
            "192.168.56.10",
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
            "k8s.example.internal",
        ])
    );
    assert_eq!(api.authority_key_id, f.cert("ca.crt").subject_key_id);
    assert_leaf(
        &f.cert("apiserver-kubelet-client.crt"),
        "kube-apiserver-kubelet-client",
        &["system:masters"],
        false,
        true,
        "kubernetes",
    );
    assert_leaf(
        &f.cert("apiserver-etcd-client.crt"),
        "kube-apiserver-etcd-client",
        &["system:masters"],
        false,
        true,
        "etcd-ca",
    );
    assert_leaf(
        &f.cert("front-proxy-client.crt"),
        "front-proxy-client",
        &[],
        false,
        true,
        "front-proxy-ca",
    );
    assert_leaf(
        &f.cert("etcd/healthcheck-client.crt"),
        "kube-etcd-healthcheck-client",
        &[],
        false,
        true,
        "etcd-ca",
    );
    for (h, ip) in [
        ("cp1", "192.168.56.11"),
        ("cp2", "192.168.56.12"),
        ("cp3", "192.168.56.13"),
    ] {
        for kind in ["server", "peer"] {
            let c = f.cert(&format!("nodes/{h}/etcd/{kind}.crt"));
            assert_leaf(&c, h, &[], true, true, "etcd-ca");
            assert_eq!(c.sans, sans(&[h, ip, "127.0.0.1", "::1", "localhost"]));
        }
        let (k, c) = f.kubeconfig(&format!("nodes/{h}/controller-manager.conf"));
        assert_leaf(
            &c,
            "system:kube-controller-manager",
            &[],
            false,
            true,
            "kubernetes",
        );
        assert_eq!(
            k.current_cluster().unwrap().server,
            format!("https://{ip}:6443")
        );
        let (k, c) = f.kubeconfig(&format!("nodes/{h}/scheduler.conf"));
        assert_leaf(&c, "system:kube-scheduler", &[], false, true, "kubernetes");
        assert_eq!(
            k.current_cluster().unwrap().server,
            format!("https://{ip}:6443")
        );
    }
    assert!(
        !f.pki("nodes/w1/etcd").exists(),
        "workers are no etcd members"
    );
    for (h, ip) in [
        ("cp1", "192.168.56.11"),
        ("w1", "192.168.56.21"),
        ("w2", "192.168.56.22"),
    ] {
        let serving = f.cert(&format!("nodes/{h}/kubelet.crt"));
        assert_leaf(&serving, h, &[], true, false, "kubernetes");
        assert_eq!(serving.sans, sans(&[h, ip]));
        let client = f.cert(&format!("nodes/{h}/kubelet-client.crt"));
        assert_leaf(
            &client,
            &format!("system:node:{h}"),
            &["system:nodes"],
            false,
            true,
            "kubernetes",
        );
        let (k, embedded) = f.kubeconfig(&format!("nodes/{h}/kubelet.conf"));
        assert_eq!(
            embedded, client,
            "kubelet.conf embeds the kubelet-client cert"
        );
        assert_eq!(
            k.current_cluster().unwrap().server,
            "https://192.168.56.10:8443"
        );
        let (k, c) = f.kubeconfig(&format!("nodes/{h}/kube-proxy.conf"));
        assert_leaf(&c, "system:kube-proxy", &[], false, true, "kubernetes");
        assert_eq!(
            k.current_cluster().unwrap().server,
            "https://192.168.56.10:8443"
        );
    }
    let (k, admin) = f.kubeconfig("admin.conf");
    assert_leaf(
        &admin,
        "kubernetes-admin",
        &["system:masters"],
        false,
        true,
        "kubernetes",
    );
    assert_eq!(
        k.current_cluster().unwrap().server,
        "https://192.168.56.10:8443"
    );
    assert_eq!(
        k.ca_pem().unwrap().unwrap(),
        std::fs::read_to_string(f.pki("ca.crt")).unwrap()
    );

    // Random, distinct serials (rcgen would otherwise derive them from the key).
    let serials: BTreeSet<String> = spec::cert_list(&f.inv)
        .iter()
        .map(|c| match (&c.files, &c.kubeconfig) {
            (Some(b), _) => f.cert(spec::crt_path(b).to_str().unwrap()).serial,
            (None, Some(k)) => f.kubeconfig(k.file.to_str().unwrap()).1.serial,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(serials.len(), 35);
    assert!(
        serials.iter().all(|s| s.len() == 16 * 3 - 1),
        "16-byte serials: {serials:?}"
    );

    // Modes: keys and kubeconfigs 0600, certs 0644, directories 0700.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for (rel, _) in f.snapshot() {
        let p = f.layout.root.join(&rel);
        let s = rel.to_str().unwrap();
        let want = if s.ends_with(".key") || s.ends_with(".conf") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(&p), want, "{s}");
        assert_eq!(
            mode(p.parent().unwrap()),
            0o700,
            "{}",
            p.parent().unwrap().display()
        );
    }
    assert_eq!(mode(&f.layout.pki), 0o700);
}

#[test]
fn local_proxy_endpoints() {
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    assert_eq!(verify_all_chains(&f), 35);
    let api = f.cert("nodes/cp3/apiserver.crt");
    assert_eq!(
        api.sans,
        sans(&[
            "cp3",
            "192.168.56.13",
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ])
    );
    for h in ["cp1", "cp2", "w1", "w2"] {
        for conf in ["kubelet.conf", "kube-proxy.conf"] {
            let (k, _) = f.kubeconfig(&format!("nodes/{h}/{conf}"));
            assert_eq!(
                k.current_cluster().unwrap().server,
                "https://127.0.0.1:6443",
                "{h} {conf}"
            );
        }
    }
    let (k, _) = f.kubeconfig("nodes/cp3/controller-manager.conf");
    assert_eq!(
        k.current_cluster().unwrap().server,
        "https://192.168.56.13:6443"
    );
    // The operator's machine has no local proxy: admin.conf goes to the first control plane.
    let (k, _) = f.kubeconfig("admin.conf");
    assert_eq!(
        k.current_cluster().unwrap().server,
        "https://192.168.56.11:6443"
    );
}

#[test]
fn second_run_keeps_everything_and_a_new_san_reissues_only_the_apiserver() {
    let mut f = Fixture::example("ha-vip.yaml");
    f.generate();
    let first = f.snapshot();
    let out = f.generate();
    assert_eq!(out.count(Action::Kept), 39, "{:#?}", out.items);
    assert!(out.backups.is_empty());
    assert!(f.snapshot() == first, "a second run changes no byte");

    // A new extra SAN: only the apiserver serving cert changes; the old one is backed up.
    f.edit(|t| {
        t.replace(
            "extraSANs: [k8s.example.internal]",
            "extraSANs: [k8s.example.internal, 10.0.0.99]",
        )
    });
    let out = f.generate();
    let changed: Vec<&str> = out
        .items
        .iter()
        .filter(|i| i.action != Action::Kept)
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(changed, ["apiserver@cp1", "apiserver@cp2", "apiserver@cp3"]);
    let reason = out
        .items
        .iter()
        .find(|i| i.name == "apiserver@cp1")
        .unwrap()
        .reason
        .clone()
        .unwrap();
    assert!(reason.contains("SANs"), "{reason}");
    let second = f.snapshot();
    let diff: Vec<&PathBuf> = first.keys().filter(|k| first[*k] != second[*k]).collect();
    let want: Vec<PathBuf> = ["cp1", "cp2", "cp3"]
        .iter()
        .flat_map(|h| ["crt", "key"].map(|e| PathBuf::from(format!("pki/nodes/{h}/apiserver.{e}"))))
        .collect();
    assert_eq!(diff, want.iter().collect::<Vec<_>>());
    assert!(
        f.cert("nodes/cp2/apiserver.crt")
            .sans
            .contains(&San::parse("10.0.0.99"))
    );
    assert_eq!(out.backups.len(), 6);
    for b in &out.backups {
        let rel = b.strip_prefix(&f.layout.root).unwrap();
        let mut parts = rel.iter();
        assert_eq!(parts.next().unwrap(), "pki-backup");
        parts.next(); // timestamp
        let orig: PathBuf = parts.collect();
        assert_eq!(
            std::fs::read(b).unwrap(),
            first[&orig],
            "backup of {} holds the old bytes",
            orig.display()
        );
    }

    // A fourth control-plane host: cp4 gets its own certificates (its apiserver's among them)
    // and kubeconfigs; nothing else moves: no CA, no other apiserver's certificate.
    f.edit(|t| {
        t.replace(
            "    - name: w1\n",
            "    - name: cp4\n      address: 192.168.56.14\n      roles: [control-plane]\n    - name: w1\n",
        )
    });
    let before = f.snapshot();
    let out = f.generate();
    let mut changed: Vec<(String, Action)> = out
        .items
        .iter()
        .filter(|i| i.action != Action::Kept)
        .map(|i| (i.name.clone(), i.action))
        .collect();
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, Action)> = [
        ("apiserver@cp4", Action::Created),
        ("controller-manager.conf@cp4", Action::Created),
        ("kube-proxy.conf@cp4", Action::Created),
        ("kubelet-client@cp4", Action::Created),
        ("kubelet@cp4", Action::Created),
        ("scheduler.conf@cp4", Action::Created),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), *a))
    .collect();
    assert_eq!(changed, want);
    let after = f.snapshot();
    for (k, v) in &before {
        assert!(&after[k] == v, "{} must not change", k.display());
    }
    let cp4 = f.cert("nodes/cp4/apiserver.crt");
    assert!(cp4.sans.contains(&San::parse("cp4")));
    assert!(!cp4.sans.contains(&San::parse("cp1")));
    verify_all_chains(&f);
}

#[test]
fn renew_gives_new_serials_from_the_same_ca() {
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let before = f.snapshot();
    let old_api = f.cert("nodes/cp1/apiserver.crt");
    let (_, old_admin) = f.kubeconfig("admin.conf");

    let names = vec!["apiserver@cp1".to_string(), "admin.conf".to_string()];
    let out = generate::renew(&f.inv, &f.settings(), &f.layout, Select::Names(&names)).unwrap();
    assert_eq!(out.count(Action::Reissued), 2);
    let api = f.cert("nodes/cp1/apiserver.crt");
    assert_ne!(api.serial, old_api.serial);
    assert_ne!(api.spki, old_api.spki, "a renewed cert gets a new key");
    assert_eq!(
        (api.subject.as_str(), &api.sans),
        (old_api.subject.as_str(), &old_api.sans)
    );
    assert!(api.not_after >= old_api.not_after);
    let (_, admin) = f.kubeconfig("admin.conf");
    assert_ne!(admin.serial, old_admin.serial);
    assert_eq!(admin.subject, old_admin.subject);
    let after = f.snapshot();
    for ca in [
        "pki/ca.crt",
        "pki/ca.key",
        "pki/etcd/ca.crt",
        "pki/etcd/ca.key",
        "pki/front-proxy-ca.crt",
        "pki/sa.key",
    ] {
        assert_eq!(before[Path::new(ca)], after[Path::new(ca)], "{ca} is kept");
    }
    assert_eq!(
        before[Path::new("pki/nodes/w1/kubelet.crt")],
        after[Path::new("pki/nodes/w1/kubelet.crt")]
    );

    // Everything: every leaf re-issued with a new serial, still chaining to the same CAs.
    let out = generate::renew(&f.inv, &f.settings(), &f.layout, Select::All).unwrap();
    assert_eq!(out.count(Action::Reissued), 35);
    assert_eq!(out.count(Action::Kept), 4, "3 CAs and the SA key");
    let last = f.snapshot();
    for (k, v) in &after {
        let s = k.to_str().unwrap();
        let is_ca = s.contains("ca.") || s.ends_with("ca-signing.crt") || s.starts_with("pki/sa.");
        assert_eq!(is_ca, &last[k] == v, "{s}: only CA files and sa.* stay");
    }
    assert_eq!(verify_all_chains(&f), 35);

    let bad = generate::renew(
        &f.inv,
        &f.settings(),
        &f.layout,
        Select::Names(&["nope".to_string()]),
    );
    assert!(format!("{:#}", bad.err().unwrap()).contains("no certificate named `nope`"));
}

#[test]
fn renew_needs_existing_cas() {
    let f = Fixture::example("local-proxy.yaml");
    let err = generate::renew(&f.inv, &f.settings(), &f.layout, Select::All).unwrap_err();
    assert!(
        format!("{err:#}").contains("run `clusterctl certs generate` first"),
        "{err:#}"
    );
}

#[test]
fn a_ca_is_never_replaced_silently() {
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let ca = std::fs::read(f.pki("ca.crt")).unwrap();
    std::fs::remove_file(f.pki("ca.key")).unwrap();
    let err = generate::generate(&f.inv, &f.settings(), &f.layout).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ca.key") && msg.contains("never replaces a CA"),
        "{msg}"
    );
    assert_eq!(std::fs::read(f.pki("ca.crt")).unwrap(), ca);
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn external_ca_is_used_instead_of_generating() {
    let mut f = Fixture::example("local-proxy.yaml");
    let ext = f.path.parent().unwrap().join("external");
    std::fs::create_dir_all(ext.join("etcd")).unwrap();
    let e = |p: &str| ext.join(p).to_str().unwrap().to_string();
    // Cluster CA: OpenSSL's SEC1 `EC PRIVATE KEY`; etcd CA: kubeadm-style PKCS#1 RSA key.
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &e("ca.key"),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &e("ca.key"),
        "-subj",
        "/CN=corp-k8s-ca",
        "-days",
        "3650",
        "-out",
        &e("ca.crt"),
    ]);
    openssl(&["genrsa", "-traditional", "-out", &e("etcd/ca.key"), "2048"]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &e("etcd/ca.key"),
        "-subj",
        "/CN=corp-etcd-ca",
        "-days",
        "3650",
        "-out",
        &e("etcd/ca.crt"),
    ]);
    assert!(
        std::fs::read_to_string(ext.join("etcd/ca.key"))
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY")
    );
    f.edit(|t| format!("{t}  pki:\n    externalCADir: external\n"));

    let out = f.generate();
    assert_eq!(out.action_of("ca"), Some(Action::Adopted));
    assert_eq!(out.action_of("etcd-ca"), Some(Action::Adopted));
    assert_eq!(
        out.action_of("front-proxy-ca"),
        Some(Action::Created),
        "not supplied: generated"
    );
    assert_eq!(
        std::fs::read(f.pki("ca.crt")).unwrap(),
        std::fs::read(ext.join("ca.crt")).unwrap()
    );
    assert_eq!(f.cert("nodes/cp1/apiserver.crt").issuer, "CN=corp-k8s-ca");
    assert_eq!(
        f.cert("apiserver-etcd-client.crt").issuer,
        "CN=corp-etcd-ca"
    );
    assert_eq!(verify_all_chains(&f), 35);
    assert_eq!(
        f.generate().count(Action::Kept),
        39,
        "second run keeps the adopted CAs"
    );

    // A different external CA while a local one exists: refused, nothing replaced.
    let local_ca = std::fs::read(f.pki("ca.crt")).unwrap();
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &e("ca.key"),
        "-subj",
        "/CN=other-ca",
        "-days",
        "3650",
        "-out",
        &e("ca.crt"),
    ]);
    let msg = format!(
        "{:#}",
        generate::generate(&f.inv, &f.settings(), &f.layout).unwrap_err()
    );
    assert!(msg.contains("never replaces a CA silently"), "{msg}");
    assert_eq!(std::fs::read(f.pki("ca.crt")).unwrap(), local_ca);

    // The cluster CA is mandatory in an external CA dir.
    std::fs::remove_file(ext.join("ca.key")).unwrap();
    let msg = format!(
        "{:#}",
        generate::generate(&f.inv, &f.settings(), &f.layout).unwrap_err()
    );
    assert!(
        msg.contains("externalCADir") && msg.contains("ca.key is missing"),
        "{msg}"
    );
}

#[test]
fn rsa_keys_when_asked() {
    // One control-plane host keeps the number of (slow, in debug builds) RSA keys small.
    let f = Fixture::new(
        "apiVersion: clusterctl.io/v1alpha1\nkind: Cluster\nmetadata: {name: r}\nspec:\n  kubernetesVersion: v1.20.2\n  \
         hosts:\n    - {name: cp1, address: 10.77.0.11, roles: [etcd, control-plane]}\n  \
         ha: {mode: local-proxy}\n  pki: {algorithm: rsa2048, certValidity: 400d}\n",
    );
    f.generate();
    assert_eq!(verify_all_chains(&f), 13);
    let api = f.cert("nodes/cp1/apiserver.crt");
    assert!(
        api.digital_signature && api.key_encipherment,
        "RSA leaf: DigitalSignature + KeyEncipherment"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((400 * 86400 - 3600..=400 * 86400).contains(&(api.not_after - now)));
    let out = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(f.pki("nodes/cp1/apiserver.key"))
        .args(["-noout", "-text"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Private-Key: (2048 bit"),
        "2048-bit RSA key"
    );
    assert_eq!(
        f.generate().count(Action::Kept),
        17,
        "RSA keys reload for the idempotence check"
    );
}

#[test]
fn every_host_file_exists_after_generate() {
    let f = Fixture::example("ha-vip.yaml");
    f.generate();
    for h in &f.inv.spec.hosts {
        let files = spec::files_for_host(&f.inv, h);
        assert!(!files.is_empty());
        for hf in files {
            let p = f.layout.root.join(&hf.local);
            assert!(p.is_file(), "{}: {} missing", h.name, p.display());
        }
    }
}

#[test]
fn expired_leaves_are_reissued_and_cas_kept() {
    let mut f = Fixture::example("local-proxy.yaml");
    f.edit(|t| format!("{t}  pki:\n    certValidity: 1d\n"));
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(3);
    generate::generate_at(&f.inv, &f.settings(), &f.layout, past).unwrap();
    let ca = std::fs::read(f.pki("ca.crt")).unwrap();
    let out = f.generate();
    assert_eq!(out.count(Action::Reissued), 35, "{:#?}", out.items);
    assert!(
        out.items
            .iter()
            .filter(|i| i.action == Action::Reissued)
            .all(|i| i.reason.as_deref() == Some("expired"))
    );
    assert_eq!(std::fs::read(f.pki("ca.crt")).unwrap(), ca);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(f.cert("nodes/cp1/apiserver.crt").not_after > now);
    // Old files kept in the backup, new ones chain to the same CA.
    assert_eq!(
        out.backups.len(),
        2 * 23 + 17,
        "cert+key of 23 file pairs, 17 kubeconfigs"
    );
    assert_eq!(verify_all_chains(&f), 35);
}

/// A leaf that names the current CA as its issuer but was signed by another CA of the same
/// name, without an authority key id (so names and key ids cannot tell): re-issued, because
/// the current CA's key does not verify its signature.
#[test]
fn a_leaf_signed_by_another_ca_of_the_same_name_is_reissued() {
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let ca = f.cert("ca.crt");
    let cn = ca.subject.trim_start_matches("CN=").to_string();
    assert_eq!(ca.subject, format!("CN={cn}"), "a CN-only CA subject");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, &cn);
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = p.self_signed(&other_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(other.der(), other_key).unwrap();
    let rel = "nodes/cp1/apiserver";
    let old = f.cert(&format!("{rel}.crt"));
    // The signature is checked first: names and usages need not match.
    let mut l = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    l.distinguished_name
        .push(rcgen::DnType::CommonName, &old.common_name);
    l.use_authority_key_identifier_extension = false;
    let key = rcgen::KeyPair::generate().unwrap();
    let forged = l.signed_by(&key, &issuer).unwrap();
    assert_eq!(
        inspect::from_pem(&forged.pem(), "x").unwrap().issuer_raw,
        ca.subject_raw
    );
    std::fs::write(f.pki(&format!("{rel}.crt")), forged.pem()).unwrap();
    std::fs::write(f.pki(&format!("{rel}.key")), key.serialize_pem()).unwrap();
    let out = f.generate();
    let item = out
        .items
        .iter()
        .find(|i| i.action == Action::Reissued)
        .unwrap_or_else(|| panic!("nothing re-issued: {:#?}", out.items));
    assert_eq!(out.count(Action::Reissued), 1, "{:#?}", out.items);
    assert!(
        item.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("not signed by the current")),
        "{item:#?}"
    );
    assert!(inspect::signed_by(&f.cert(&format!("{rel}.crt")), &ca));
}

/// Every certificate file under pki/ (recursively), parsed.
fn all_certs(f: &Fixture) -> Vec<(PathBuf, CertInfo)> {
    let mut out = Vec::new();
    let mut stack = vec![f.layout.pki.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "crt") {
                let c = inspect::from_pem(&std::fs::read_to_string(&p).unwrap(), "t").unwrap();
                out.push((p, c));
            }
        }
    }
    out
}

#[test]
fn a_vip_written_with_its_prefix_gives_an_ip_san_and_plain_urls() {
    let mut f = Fixture::example("ha-vip.yaml");
    f.edit(|t| t.replace("address: 192.168.56.10\n", "address: 192.168.56.10/24\n"));
    f.generate();
    let vip = San::Ip("192.168.56.10".parse().unwrap());
    let certs = all_certs(&f);
    assert!(
        certs.iter().any(|(_, c)| c.sans.contains(&vip)),
        "no certificate has IP:192.168.56.10"
    );
    for (p, c) in &certs {
        assert!(
            c.sans.iter().all(|s| !s.to_string().contains('/')),
            "{}: {:?}",
            p.display(),
            c.sans
        );
    }
    let (k, _) = f.kubeconfig("admin.conf");
    assert_eq!(
        k.current_cluster().unwrap().server,
        "https://192.168.56.10:8443"
    );
}

#[test]
fn etcd_serving_certificates_name_ipv6_localhost() {
    let f = Fixture::example("ha-vip.yaml");
    f.generate();
    for rel in ["nodes/cp1/etcd/server.crt", "nodes/cp1/etcd/peer.crt"] {
        let c = f.cert(rel);
        assert!(
            c.sans.contains(&San::Ip("::1".parse().unwrap()))
                && c.sans.contains(&San::Ip("127.0.0.1".parse().unwrap())),
            "{rel}: {:?}",
            c.sans
        );
    }
}

#[test]
fn a_leaf_never_outlives_its_ca_and_the_cap_is_said() {
    let mut f = Fixture::example("local-proxy.yaml");
    let ext = f.path.parent().unwrap().join("external");
    std::fs::create_dir_all(&ext).unwrap();
    let e = |p: &str| ext.join(p).to_str().unwrap().to_string();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &e("ca.key"),
    ]);
    // A 30-day CA; leaves default to 50 years.
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &e("ca.key"),
        "-subj",
        "/CN=short-ca",
        "-days",
        "30",
        "-out",
        &e("ca.crt"),
    ]);
    f.edit(|t| format!("{t}  pki:\n    externalCADir: external\n"));
    let out = f.generate();
    let ca = f.cert("ca.crt");
    let api = f.cert("nodes/cp1/apiserver.crt");
    assert_eq!(api.not_after, ca.not_after, "capped at the CA's notAfter");
    let when = generate::fmt_time(ca.not_after);
    let w = out
        .warnings
        .iter()
        .find(|w| w.starts_with("apiserver@cp1:"))
        .unwrap_or_else(|| panic!("no warning for apiserver: {:?}", out.warnings));
    assert!(w.contains(&when) && w.contains("the ca CA"), "{w}");
    // Certificates of the generated CAs are not capped (their CA outlives them).
    let fp = f.cert("front-proxy-client.crt");
    assert!(fp.not_after > ca.not_after + 40 * YEAR);
}

#[test]
fn changing_the_algorithm_of_an_existing_pki_is_refused_with_the_fix() {
    let mut f = Fixture::example("local-proxy.yaml");
    f.generate();
    let before = f.snapshot();
    f.edit(|t| format!("{t}  pki:\n    algorithm: rsa2048\n"));
    let msg = format!(
        "{:#}",
        generate::generate(&f.inv, &f.settings(), &f.layout).unwrap_err()
    );
    assert!(
        msg.contains("spec.pki.algorithm is rsa2048, but the existing PKI's keys are ecdsa-p256")
            && msg.contains("fix: set `spec.pki.algorithm: ecdsa-p256` again"),
        "{msg}"
    );
    assert_eq!(f.snapshot(), before, "nothing changed");
}

#[test]
fn loosened_key_files_are_tightened_with_a_warning() {
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let key = f.pki("ca.key");
    let kc = f.layout.kubeconfig.join("admin.conf");
    for p in [&key, &kc] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&f.layout.pki, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = f.generate();
    for p in [&key, &kc] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains(&p.display().to_string()) && w.contains("was mode 0644")),
            "{:?}",
            out.warnings
        );
    }
    let mode = std::fs::metadata(&f.layout.pki)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let mode = std::fs::metadata(&f.layout.root)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the state directory is the operator's alone");
    // Certificates stay readable: only secrets are tightened.
    let crt = std::fs::metadata(f.pki("ca.crt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(crt, 0o644);
    assert!(
        f.generate().warnings.is_empty(),
        "a second run has nothing to say"
    );
}

/// The local side of a CA rotation (`renew-certs --ca`), stage by stage: which CA signs, what
/// every trust bundle and kubeconfig holds, that a re-run of a stage changes nothing, that
/// sa.key never changes, and that the old CAs end in the backups.
#[test]
fn ca_rotation_stages_compose_bundles_and_reissue_from_the_new_cas() {
    use clusterctl::pki::rotation::{self, Stage};
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let s = f.settings();
    let ders =
        |rel: &str| rotation::certificates(&std::fs::read_to_string(f.pki(rel)).unwrap()).unwrap();
    let kc_ca = |rel: &str| {
        let (k, _) = f.kubeconfig(rel);
        rotation::certificates(&k.ca_pem().unwrap().unwrap()).unwrap()
    };
    let old: BTreeMap<&str, Vec<u8>> = [
        ("ca", "ca.crt"),
        ("etcd-ca", "etcd/ca.crt"),
        ("front-proxy-ca", "front-proxy-ca.crt"),
    ]
    .into_iter()
    .map(|(n, p)| (n, ders(p).remove(0)))
    .collect();
    let sa = std::fs::read(f.pki("sa.key")).unwrap();
    let old_api = f.cert("nodes/cp1/apiserver.crt");
    let stage = |st: Stage| {
        let state = rotation::read_state(&f.layout.pki).unwrap();
        let rec = rotation::apply_local(&f.layout, &s, st, state.as_ref(), "t").unwrap();
        (rec, f.generate())
    };
    // Out of order: refused before anything is written.
    let e = rotation::apply_local(&f.layout, &s, Stage::Reissue, None, "t").unwrap_err();
    assert!(e.to_string().contains("--ca trust"), "{e}");

    // trust: old + new everywhere, the old CA still signs, no leaf re-issued.
    let (rec, out) = stage(Stage::Trust);
    assert_eq!(out.count(Action::Reissued), 0);
    assert!(
        out.count(Action::Rewritten) >= 5,
        "every kubeconfig gets the bundle"
    );
    let bundle = ders("ca.crt");
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[0], old["ca"]);
    let new_ca = bundle[1].clone();
    assert_eq!(rec.new["ca"], rotation::fingerprint(&new_ca));
    assert_eq!(rec.old["ca"], rotation::fingerprint(&old["ca"]));
    assert_eq!(ders("etcd/ca.crt").len(), 2);
    assert_eq!(ders("front-proxy-ca.crt").len(), 2);
    assert_eq!(ders("ca-signing.crt"), [old["ca"].clone()]);
    assert_eq!(kc_ca("admin.conf"), bundle);
    assert_eq!(kc_ca("nodes/w1/kubelet.conf"), bundle);
    assert_eq!(f.cert("nodes/cp1/apiserver.crt").serial, old_api.serial);
    // Re-running the stage (converge, or resume after a kill) writes nothing new.
    let before = f.snapshot();
    let (_, out) = stage(Stage::Trust);
    assert_eq!(out.count(Action::Reissued), 0);
    assert_eq!(f.snapshot(), before, "trust again changed files");
    // Not finished yet: the next stage waits.
    let e = rotation::apply_local(
        &f.layout,
        &s,
        Stage::Reissue,
        rotation::read_state(&f.layout.pki).unwrap().as_ref(),
        "t",
    )
    .unwrap_err();
    assert!(e.to_string().contains("has not finished"), "{e}");
    rotation::mark_finished(&f.layout, "x").unwrap();

    // reissue: the new CA signs every leaf; the bundles keep the old CA (second).
    let (_, out) = stage(Stage::Reissue);
    assert_eq!(out.count(Action::Reissued), 35);
    assert_eq!(ders("ca.crt"), [new_ca.clone(), old["ca"].clone()]);
    assert_eq!(ders("ca-signing.crt"), std::slice::from_ref(&new_ca));
    assert_ne!(f.cert("nodes/cp1/apiserver.crt").serial, old_api.serial);
    let new_info = inspect::from_der(&new_ca, "new").unwrap();
    let old_info = inspect::from_der(&old["ca"], "old").unwrap();
    let api = f.cert("nodes/cp1/apiserver.crt");
    assert!(rotation::signed_by(&api, &new_info));
    assert!(
        !rotation::signed_by(&api, &old_info),
        "same CA name, told apart by the signature"
    );
    assert!(!rotation::signed_by(&old_api, &new_info));
    assert_eq!(
        verify_all_chains(&f),
        35,
        "every chain verifies against the bundles"
    );
    let before = f.snapshot();
    let (_, out) = stage(Stage::Reissue);
    assert_eq!(
        out.count(Action::Reissued),
        0,
        "a resumed reissue issues nothing again"
    );
    assert_eq!(f.snapshot(), before);
    rotation::mark_finished(&f.layout, "x").unwrap();

    // finish: only the new CAs; the old ones in the backups; sa.key never changed.
    let (_, out) = stage(Stage::Finish);
    assert_eq!(out.count(Action::Reissued), 0);
    for (rel, name) in [
        ("ca.crt", "ca"),
        ("etcd/ca.crt", "etcd-ca"),
        ("front-proxy-ca.crt", "front-proxy-ca"),
    ] {
        let d = ders(rel);
        assert_eq!(d.len(), 1, "{rel}");
        assert_ne!(d[0], old[name], "{rel}");
    }
    assert_eq!(kc_ca("admin.conf"), std::slice::from_ref(&new_ca));
    assert_eq!(
        kc_ca("nodes/w1/kube-proxy.conf"),
        std::slice::from_ref(&new_ca)
    );
    assert_eq!(verify_all_chains(&f), 35);
    let done = rotation::mark_finished(&f.layout, "x").unwrap().unwrap();
    assert!(done.finished);
    let backup = done.backup.unwrap();
    assert_eq!(
        rotation::certificates(&std::fs::read_to_string(backup.join("old/ca.crt")).unwrap())
            .unwrap(),
        [old["ca"].clone()]
    );
    assert!(backup.join("old/etcd/ca.key").is_file());
    assert!(!rotation::work_dir(&f.layout.pki).exists());
    assert_eq!(std::fs::read(f.pki("sa.key")).unwrap(), sa);
    // A finished rotation: generate keeps everything, and a new rotation may start.
    let before = f.snapshot();
    assert_eq!(f.generate().count(Action::Reissued), 0);
    assert_eq!(f.snapshot(), before);
    let state = rotation::read_state(&f.layout.pki).unwrap();
    assert_eq!(
        rotation::step(state.as_ref(), Stage::Trust).unwrap(),
        rotation::Step::Start
    );
    // The next rotation's old CA is this one's new CA, even when a run was killed before
    // this one's CAs moved to the backups (they are moved first, not taken for the next's).
    std::fs::rename(&backup, rotation::work_dir(&f.layout.pki)).unwrap();
    let (rec, out) = stage(Stage::Trust);
    assert_eq!(out.count(Action::Reissued), 0);
    assert_eq!(ders("ca.crt")[0], new_ca);
    assert_ne!(ders("ca.crt")[1], new_ca);
    assert_eq!(rec.old["ca"], rotation::fingerprint(&new_ca));
    assert!(backup.join("old/ca.crt").is_file());
}

/// `certs check-expiration`'s view of a real rotation: every CA of each bundle is its own row,
/// old or new, and each leaf is attributed to the CA whose key signed it, even where the
/// bundle's first CA is the other one (a leaf left from before a killed `reissue`).
#[test]
fn check_expiration_names_every_ca_of_a_bundle_and_the_ca_that_signed_each_leaf() {
    use clusterctl::pki::expiry::{self, CertSource, LocalDir, Row};
    use clusterctl::pki::rotation::{self, Stage};
    let f = Fixture::example("local-proxy.yaml");
    f.generate();
    let s = f.settings();
    let report = || {
        let local = LocalDir {
            pki: f.layout.pki.clone(),
            kubeconfig: f.layout.kubeconfig.clone(),
        };
        let sources: [&dyn CertSource; 1] = [&local];
        let mut rows = expiry::report(&sources, 0, 0).unwrap();
        let state = rotation::read_state(&f.layout.pki).unwrap();
        expiry::authorities(&mut rows, state.as_ref());
        rows
    };
    let stage = |st: Stage| {
        let state = rotation::read_state(&f.layout.pki).unwrap();
        rotation::apply_local(&f.layout, &s, st, state.as_ref(), "t").unwrap();
        f.generate();
        rotation::mark_finished(&f.layout, "x").unwrap();
    };
    let bundle_rows = |rows: &[Row], name: &str| {
        rows.iter()
            .filter(|r| r.is_ca && r.name == name)
            .map(|r| r.rotation)
            .collect::<Vec<_>>()
    };
    let ca_of = |rows: &[Row], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .certificate_authority
            .clone()
    };
    let leaves = |rows: &[Row]| rows.iter().filter(|r| !r.is_ca).count();
    let trusts = |rows: &[Row], name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .trusts
            .clone()
    };

    let r = report();
    assert_eq!(bundle_rows(&r, "ca"), [None]);
    assert_eq!(ca_of(&r, "nodes/cp1/apiserver"), "ca");
    let n = leaves(&r);
    assert!(n >= 35, "{n}");

    stage(Stage::Trust);
    let r = report();
    for b in ["ca", "etcd/ca", "front-proxy-ca"] {
        assert_eq!(bundle_rows(&r, b), [Some("old"), Some("new")], "{b}");
    }
    assert_eq!(ca_of(&r, "nodes/cp1/apiserver"), "ca (old)");
    assert_eq!(ca_of(&r, "nodes/cp1/etcd/server"), "etcd-ca (old)");
    assert_eq!(ca_of(&r, "front-proxy-client"), "front-proxy-ca (old)");
    assert_eq!(ca_of(&r, "admin.conf"), "ca (old)");
    assert_eq!(trusts(&r, "admin.conf"), ["ca (old)", "ca (new)"]);
    assert_eq!(
        trusts(&r, "nodes/w1/kubelet.conf"),
        ["ca (old)", "ca (new)"]
    );
    assert!(r.iter().filter(|r| !r.is_ca).all(|r| r.signer.is_some()));
    let old_api = std::fs::read(f.pki("nodes/cp1/apiserver.crt")).unwrap();

    stage(Stage::Reissue);
    // The leaf of a host the killed run had not reached yet: still the old CA's, though the
    // bundle now starts with the new one.
    std::fs::write(f.pki("nodes/cp1/apiserver.crt"), &old_api).unwrap();
    let r = report();
    assert_eq!(bundle_rows(&r, "ca"), [Some("new"), Some("old")]);
    assert_eq!(ca_of(&r, "nodes/cp1/apiserver"), "ca (old)");
    assert_eq!(ca_of(&r, "nodes/cp2/apiserver"), "ca (new)");
    assert_eq!(ca_of(&r, "admin.conf"), "ca (new)");
    assert_eq!(trusts(&r, "admin.conf"), ["ca (new)", "ca (old)"]);
    let text = expiry::table(&r, "180d");
    assert!(text.contains("ROTATION"), "{text}");
    assert_eq!(
        f.generate().count(Action::Reissued),
        1,
        "generate puts the new one back"
    );

    stage(Stage::Finish);
    let r = report();
    assert_eq!(bundle_rows(&r, "ca"), [None]);
    assert_eq!(bundle_rows(&r, "etcd/ca"), [None]);
    assert_eq!(ca_of(&r, "nodes/cp1/apiserver"), "ca");
    assert_eq!(trusts(&r, "admin.conf"), ["ca"]);
    assert_eq!(leaves(&r), n);
    assert!(!expiry::table(&r, "180d").contains("ROTATION"));
}
