//! `bundle build` against a real HTTP server on loopback (axum + tower-http's ServeDir, which
//! honours Range requests), with switches to drop the connection mid-body and to serve wrong
//! bytes. Shows: download, resume after a dropped connection, a clear error on a wrong hash
//! that leaves no bundle behind, and the cache making a re-run download nothing.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use clusterctl::bundle::build::{BuildOptions, HashMismatch, Origin, build};
use clusterctl::bundle::manifest::{API_VERSION, Item, Kind, Manifest, Need};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tower_http::services::ServeDir;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Send this many body bytes, then drop the connection; for the next `times` requests.
    DropAfter { bytes: usize, times: u32 },
    /// Serve other bytes of the same length.
    Corrupt,
}

#[derive(Default)]
struct Ctl {
    faults: Mutex<BTreeMap<String, Fault>>,
    /// (path, Range header) of every request.
    log: Mutex<Vec<(String, Option<String>)>>,
}

async fn faulty(State(ctl): State<Arc<Ctl>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    ctl.log.lock().unwrap().push((path.clone(), range));
    let fault = {
        let mut f = ctl.faults.lock().unwrap();
        match f.get_mut(&path) {
            Some(Fault::DropAfter { bytes, times }) if *times > 0 => {
                *times -= 1;
                Some(Fault::DropAfter {
                    bytes: *bytes,
                    times: *times,
                })
            }
            Some(Fault::Corrupt) => Some(Fault::Corrupt),
            _ => None,
        }
    };
    let resp = next.run(req).await;
    match fault {
        None => resp,
        Some(Fault::Corrupt) => {
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let flipped: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
            Response::from_parts(parts, Body::from(flipped))
        }
        Some(Fault::DropAfter { bytes: limit, .. }) => {
            let (parts, body) = resp.into_parts();
            let mut sent = 0usize;
            let stream = body.into_data_stream().map(move |chunk| {
                let chunk = chunk.map_err(std::io::Error::other)?;
                if sent >= limit {
                    return Err(std::io::Error::other("test server: connection dropped"));
                }
                let take = chunk.len().min(limit - sent);
                sent += take;
                Ok(chunk.slice(..take))
            });
            // After `limit` bytes the stream errors: hyper aborts the connection short of the
            // promised Content-Length, which is what a dropped transfer looks like to a client.
            let stream = stream.scan(false, |stop, r| {
                if *stop {
                    return futures::future::ready(None);
                }
                if r.is_err() {
                    *stop = true;
                }
                futures::future::ready(Some(r))
            });
            // Let hyper flush what was sent before the cut, as a real network would deliver it.
            let stream = stream.then(|r| async move {
                if r.is_err() {
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                }
                r
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
    }
}

struct Server {
    addr: SocketAddr,
    ctl: Arc<Ctl>,
    root: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let root = tempfile::tempdir().unwrap();
        let ctl = Arc::new(Ctl::default());
        let app = axum::Router::new()
            .fallback_service(ServeDir::new(root.path()))
            .layer(middleware::from_fn_with_state(ctl.clone(), faulty));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, ctl, root }
    }
    /// Puts a file on the server; returns its URL and sha256.
    fn put(&self, name: &str, data: &[u8]) -> (String, String) {
        std::fs::write(self.root.path().join(name), data).unwrap();
        (
            format!("http://{}/{name}", self.addr),
            hex::encode(Sha256::digest(data)),
        )
    }
    fn fault(&self, name: &str, f: Fault) {
        self.ctl
            .faults
            .lock()
            .unwrap()
            .insert(format!("/{name}"), f);
    }
    fn requests(&self, name: &str) -> Vec<Option<String>> {
        self.ctl
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == &format!("/{name}"))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed)
        .collect()
}

fn item(name: &str, url: &str, sha: &str, kind: Kind, roles: &[Need]) -> Item {
    Item {
        name: name.into(),
        version: "1.0.0".into(),
        kind,
        url: url.into(),
        sha256: Some(sha.into()),
        size: None,
        install: (kind == Kind::Binary).then(|| clusterctl::bundle::manifest::Install {
            path: format!("/usr/local/bin/{name}"),
            mode: Some("0755".into()),
        }),
        roles: roles.to_vec(),
        hash_source: "computed by the test".into(),
        hash_missing: None,
        published: None,
        image: None,
        note: None,
    }
}

fn write_manifest(dir: &Path, items: Vec<Item>) -> PathBuf {
    let m = Manifest {
        api_version: API_VERSION.into(),
        name: "test".into(),
        version: "1".into(),
        description: None,
        platform: None,
        items,
    };
    let p = dir.join("manifest.yaml");
    std::fs::write(&p, m.to_yaml().unwrap()).unwrap();
    p
}

fn opts(work: &Path, manifest: PathBuf) -> BuildOptions {
    BuildOptions {
        manifest,
        out: work.join("out/b.tar.zst"),
        cache: work.join("cache"),
        key: None,
        attempts: 4,
        quiet: false,
        pin_on_first_download: false,
        debs_as_published: false,
    }
}

/// The bytes of the ar member `name`.
fn ar_member(archive: &[u8], name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut a = ar::Archive::new(archive);
    while let Some(e) = a.next_entry() {
        let mut e = e.unwrap();
        if e.header().identifier() == name.as_bytes() {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("no member {name}")
}

/// Nothing but the finished bundle may ever appear in the output directory.
fn out_dir_entries(work: &Path) -> Vec<String> {
    match std::fs::read_dir(work.join("out")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_resumes_and_uses_the_cache() {
    let srv = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let big = data(3 << 20, 7);
    let (u1, s1) = srv.put("kubelet", &big);
    let haproxy_data = data(100_000, 9);
    let haproxy_deb = common::deb_with_xz_data(&haproxy_data);
    let (u2, s2) = srv.put("haproxy.deb", &haproxy_deb);
    // A local item, as the lab uses.
    let local = work.path().join("local.yaml");
    std::fs::write(&local, b"kind: ConfigMap\n").unwrap();
    let s3 = hex::encode(Sha256::digest(b"kind: ConfigMap\n"));
    srv.fault(
        "kubelet",
        Fault::DropAfter {
            bytes: 1_000_000,
            times: 2,
        },
    );
    let m = write_manifest(
        work.path(),
        vec![
            item(
                "kubelet",
                &u1,
                &s1,
                Kind::Binary,
                &[Need::ControlPlane, Need::Worker],
            ),
            item("haproxy", &u2, &s2, Kind::Deb, &[Need::Lb]),
            item(
                "addon",
                &format!("file://{}", local.display()),
                &s3,
                Kind::Manifest,
                &[Need::ControlPlane],
            ),
        ],
    );
    let o = opts(work.path(), m);
    let r = build(&o).await.expect("build");
    let kubelet = &r.items[0];
    assert_eq!(kubelet.origin, Origin::Downloaded);
    assert_eq!(
        kubelet.requests, 3,
        "two drops, then a resumed request that completes"
    );
    assert_eq!(kubelet.size, big.len() as u64);
    // The second and third requests resumed where the previous transfer stopped.
    let ranges = srv.requests("kubelet");
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(ranges[0], None);
    // How much of a cut-off body reaches the client varies (buffers are lost with the
    // connection), so check that each resume starts past the previous one.
    let start = |r: &Option<String>| -> u64 {
        r.as_deref()
            .and_then(|s| s.strip_prefix("bytes="))
            .and_then(|s| s.strip_suffix('-'))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a, b) = (start(&ranges[1]), start(&ranges[2]));
    assert!(
        0 < a && a <= 1_000_000 && a < b && b <= a + 1_000_000,
        "{ranges:?}"
    );
    assert_eq!(r.items[2].origin, Origin::Local);

    // The bundle verifies and holds exactly the downloaded bytes.
    let v = clusterctl::bundle::verify(&o.out, None).unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.items, 3);
    let head = clusterctl::bundle::read_head(&o.out).unwrap();
    assert_eq!(
        head.manifest.items[0].size,
        Some(big.len() as u64),
        "build fills in sizes"
    );
    let got = clusterctl::bundle::read_item(&o.out, &head.manifest.items[0]).unwrap();
    assert!(got == big);
    // The .deb is stored with data.tar.xz expanded; its published hash stays on record.
    let deb = &head.manifest.items[1];
    let published = deb
        .published
        .as_ref()
        .expect("the published .deb on record");
    assert_eq!(published.sha256, s2);
    assert_eq!(published.size, haproxy_deb.len() as u64);
    assert_eq!(published.expanded, ["control.tar.xz", "data.tar.xz"]);
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(["bundle", "ls"])
        .arg(&o.out)
        .output()
        .unwrap();
    assert!(ls.status.success(), "{ls:?}");
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains(&format!(
            "    published: sha256 {s2}, control.tar.xz, data.tar.xz stored expanded\n"
        )),
        "bundle ls shows the published .deb: {ls}"
    );
    let stored = clusterctl::bundle::read_item(&o.out, deb).unwrap();
    assert_eq!(deb.size, Some(stored.len() as u64));
    assert_ne!(deb.sha256.as_deref(), Some(s2.as_str()));
    assert!(ar_member(&stored, "data.tar") == haproxy_data);
    assert!(ar_member(&stored, "control.tar") == b"control");
    assert!(ar_member(&stored, "debian-binary") == ar_member(&haproxy_deb, "debian-binary"));
    assert_eq!(out_dir_entries(work.path()), ["b.tar.zst"]);

    // A re-run downloads nothing: verified downloads are cached by hash.
    std::fs::remove_file(&o.out).unwrap();
    let before = srv.ctl.log.lock().unwrap().len();
    let r2 = build(&o).await.expect("rebuild");
    assert_eq!(
        srv.ctl.log.lock().unwrap().len(),
        before,
        "no request on a cached re-run"
    );
    assert_eq!(r2.items[0].origin, Origin::Cached);
    assert_eq!(r2.items[1].origin, Origin::Cached);
    assert!(clusterctl::bundle::verify(&o.out, None).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_hash_names_the_item_and_leaves_no_bundle() {
    let srv = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let (u1, s1) = srv.put("etcd", &data(50_000, 1));
    let (u2, s2) = srv.put("runc", &data(70_000, 2));
    srv.fault("runc", Fault::Corrupt);
    let wrong = hex::encode(Sha256::digest(
        data(70_000, 2)
            .iter()
            .map(|b| b ^ 0x5a)
            .collect::<Vec<u8>>(),
    ));
    let m = write_manifest(
        work.path(),
        vec![
            item("etcd", &u1, &s1, Kind::Binary, &[Need::Etcd]),
            item("runc", &u2, &s2, Kind::Binary, &[Need::All]),
        ],
    );
    let o = opts(work.path(), m);
    let e = build(&o).await.unwrap_err();
    let mm = e
        .downcast_ref::<HashMismatch>()
        .expect("a HashMismatch error");
    assert_eq!(mm.item, "runc 1.0.0");
    assert_eq!(mm.expected, s2);
    assert_eq!(mm.actual, wrong);
    let msg = e.to_string();
    assert!(
        msg.contains("item `runc 1.0.0`") && msg.contains(&s2) && msg.contains(&wrong),
        "{msg}"
    );
    assert!(!o.out.exists());
    assert!(
        out_dir_entries(work.path()).is_empty(),
        "no partial bundle: {:?}",
        out_dir_entries(work.path())
    );
    // The bad download is not kept anywhere in the cache either.
    let cached: Vec<String> = std::fs::read_dir(o.cache.join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached, [s1], "only the good etcd download is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_transfer_that_never_completes_fails_without_a_bundle() {
    let srv = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let (u1, s1) = srv.put("kube-apiserver", &data(400_000, 3));
    // Every request is cut short (after 0 new bytes once resumed there is nothing to gain).
    srv.fault(
        "kube-apiserver",
        Fault::DropAfter {
            bytes: 100_000,
            times: 100,
        },
    );
    let m = write_manifest(
        work.path(),
        vec![item(
            "kube-apiserver",
            &u1,
            &s1,
            Kind::Binary,
            &[Need::ControlPlane],
        )],
    );
    let mut o = opts(work.path(), m);
    o.attempts = 2;
    let e = build(&o).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("kube-apiserver 1.0.0") && msg.contains("failed after 2 attempts"),
        "{msg}"
    );
    assert!(out_dir_entries(work.path()).is_empty());
    // The partial download is kept, and a later run resumes from it.
    let partial = o.cache.join("sha256").join(format!("{s1}.partial"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(0 < kept && kept <= 200_000, "{kept}");
    srv.fault("kube-apiserver", Fault::DropAfter { bytes: 0, times: 0 });
    let r = build(&o).await.expect("resumed build");
    assert_eq!(r.items[0].requests, 1);
    assert_eq!(
        srv.requests("kube-apiserver").last().unwrap().as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(clusterctl::bundle::verify(&o.out, None).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_without_a_published_hash_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut it = item(
        "crictl",
        "https://example.invalid/crictl",
        "",
        Kind::Binary,
        &[Need::All],
    );
    it.sha256 = None;
    it.hash_missing = Some("no published sha256 found for this version".into());
    let m = write_manifest(work.path(), vec![it]);
    let e = build(&opts(work.path(), m)).await.unwrap_err().to_string();
    assert!(
        e.contains("refusing to build")
            && e.contains("crictl 1.0.0: no published sha256")
            && e.contains("--pin-on-first-download"),
        "{e}"
    );
    assert!(out_dir_entries(work.path()).is_empty());
}

/// With --pin-on-first-download, a hash-less item is downloaded once and the bundle's
/// manifest records the hash that arrived, marked as pinned; items with a published hash are
/// still checked against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_on_first_download_records_the_downloaded_hash() {
    let srv = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let bytes = data(200_000, 3);
    let (url, sha) = srv.put("kube-apiserver", &bytes);
    let (u2, s2) = srv.put("kubelet", &data(50_000, 5));
    let mut it = item(
        "kube-apiserver",
        &url,
        "",
        Kind::Binary,
        &[Need::ControlPlane],
    );
    it.sha256 = None;
    it.hash_missing = Some("no published sha256 found for this version".into());
    let m = write_manifest(
        work.path(),
        vec![it, item("kubelet", &u2, &s2, Kind::Binary, &[Need::Worker])],
    );
    let mut o = opts(work.path(), m);
    o.pin_on_first_download = true;
    build(&o).await.expect("build with pinning");
    let packed = clusterctl::bundle::load_manifest_any(&o.out).unwrap();
    let api = &packed.items[0];
    assert_eq!(api.sha256.as_deref(), Some(sha.as_str()));
    assert!(api.hash_missing.is_none());
    assert!(
        api.hash_source.starts_with("pinned on first download (")
            && api.hash_source.contains(&url)
            && api.hash_source.contains("no published sha256 found"),
        "{}",
        api.hash_source
    );
    assert_eq!(packed.items[1].hash_source, "computed by the test");
    assert!(clusterctl::bundle::verify(&o.out, None).unwrap().ok());
    // Downloaded once: the pinned bytes sit in the cache under their hash.
    assert_eq!(srv.requests("kube-apiserver").len(), 1);
    assert!(work.path().join("cache/sha256").join(&sha).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_local_file_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("etcd");
    std::fs::write(&f, b"not etcd").unwrap();
    let sha = hex::encode(Sha256::digest(b"etcd"));
    let m = write_manifest(
        work.path(),
        vec![item(
            "etcd",
            &format!("file://{}", f.display()),
            &sha,
            Kind::Binary,
            &[Need::Etcd],
        )],
    );
    let e = build(&opts(work.path(), m)).await.unwrap_err();
    let mm = e.downcast_ref::<HashMismatch>().unwrap();
    assert_eq!(mm.expected, sha);
    assert_eq!(mm.actual, hex::encode(Sha256::digest(b"not etcd")));
    assert!(out_dir_entries(work.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_entry_is_downloaded_again() {
    let srv = Server::start().await;
    let work = tempfile::tempdir().unwrap();
    let (u1, s1) = srv.put("kubectl", &data(80_000, 5));
    let m = write_manifest(
        work.path(),
        vec![item(
            "kubectl",
            &u1,
            &s1,
            Kind::Binary,
            &[Need::ControlPlane],
        )],
    );
    let o = opts(work.path(), m);
    build(&o).await.unwrap();
    std::fs::write(o.cache.join("sha256").join(&s1), b"bit rot").unwrap();
    std::fs::remove_file(&o.out).unwrap();
    let r = build(&o).await.unwrap();
    assert_eq!(r.items[0].origin, Origin::Downloaded);
    assert_eq!(srv.requests("kubectl").len(), 2);
    assert!(clusterctl::bundle::verify(&o.out, None).unwrap().ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debs_as_published_are_stored_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let deb = common::deb_with_xz_data(&data(50_000, 3));
    let path = work.path().join("p.deb");
    std::fs::write(&path, &deb).unwrap();
    let sha = hex::encode(Sha256::digest(&deb));
    let m = write_manifest(
        work.path(),
        vec![item(
            "p",
            &format!("file://{}", path.display()),
            &sha,
            Kind::Deb,
            &[Need::All],
        )],
    );
    let mut o = opts(work.path(), m);
    o.debs_as_published = true;
    build(&o).await.expect("build");
    let head = clusterctl::bundle::read_head(&o.out).unwrap();
    let it = &head.manifest.items[0];
    assert_eq!(it.published, None);
    assert_eq!(it.sha256.as_deref(), Some(sha.as_str()));
    assert!(clusterctl::bundle::read_item(&o.out, it).unwrap() == deb);
}
