//! Shared by the tests: bring a lab up and down (tests/lab/lab.sh), read its outputs, run
//! commands inside its hosts, run clusterctl against it; list the repository's YAML files.
#![allow(dead_code)]

pub mod backup;
pub mod chaos;
pub mod modes;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.yaml` files of a directory of the repository, sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A lab that is torn down when dropped, even when the test panics.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
}

impl Lab {
    pub fn up(name: &str, n: usize) -> Lab {
        Lab::up_profile(name, n, "plain")
    }

    /// `n` hosts booted with lab.sh's profile (`plain`, or `k8s` for kubelet + containerd).
    pub fn up_profile(name: &str, n: usize, profile: &str) -> Lab {
        // CLUSTERCTL_LAB_PREFIX (at most two characters, e.g. "b1") renames every lab of a test
        // run, so two copies of one test (two worktrees) can run side by side on one machine.
        let name = &format!(
            "{}{name}",
            std::env::var("CLUSTERCTL_LAB_PREFIX").unwrap_or_default()
        );
        let lab = Lab {
            name: name.to_string(),
            dir: PathBuf::from("/var/lib/clusterctl-lab").join(name),
        };
        let _ = lab.sh(&["down", name]); // leftovers of an interrupted run
        let t = Instant::now();
        let out = run(Command::new(root().join("tests/lab/lab.sh"))
            .args(["up", name, &n.to_string()])
            .env("LAB_PROFILE", profile));
        assert!(out.status.success(), "lab up {name} {n}: {}", text(&out));
        eprintln!(
            "lab {name}: {n} hosts up in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        lab
    }

    pub fn sh(&self, args: &[&str]) -> Output {
        run(Command::new(root().join("tests/lab/lab.sh")).args(args))
    }

    /// `KEY=value` from the lab's env file.
    pub fn env(&self, key: &str) -> String {
        let t = std::fs::read_to_string(self.dir.join("env")).expect("lab env file");
        t.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing from the lab env"))
            .trim_matches('"')
            .to_string()
    }

    pub fn ip(&self, host: &str) -> String {
        self.env(&format!("LAB_IP_{host}"))
    }

    /// 10.77.K.<last>
    pub fn addr(&self, last: u8) -> String {
        format!("10.77.{}.{last}", self.env("LAB_SUBNET"))
    }

    /// Runs a shell command inside a host (no SSH); returns the output.
    pub fn exec(&self, host: &str, cmd: &str) -> Output {
        self.sh(&["exec", &self.name, host, "--", "bash", "-c", cmd])
    }

    pub fn exec_ok(&self, host: &str, cmd: &str) -> String {
        let o = self.exec(host, cmd);
        assert!(o.status.success(), "{host}: {cmd}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn stop_host(&self, host: &str) {
        let o = self.sh(&["stop-host", &self.name, host]);
        assert!(o.status.success(), "stop-host {host}: {}", text(&o));
    }

    pub fn start_host(&self, host: &str) {
        let o = self.sh(&["start-host", &self.name, host]);
        assert!(o.status.success(), "start-host {host}: {}", text(&o));
    }

    /// The lab's inventory, parsed, for a test to adjust and write back with `write_inventory`.
    pub fn inventory(&self) -> clusterctl::inventory::Inventory {
        clusterctl::inventory::load(&self.dir.join("inventory.yaml"))
            .expect("lab inventory")
            .inventory
    }

    /// The lab's inventory with the lab bundle and etcd 3.4.23 pinned: where init tests start.
    pub fn inventory_with_bundle(&self, bundle: &Path) -> clusterctl::inventory::Inventory {
        let mut inv = self.inventory();
        inv.spec.bundle = Some(lab_bundle_spec(bundle));
        inv.spec.etcd.version = Some("3.4.23".parse().unwrap());
        inv
    }

    /// The same behind a keepalived VIP at `addr(100)`:8443 on eth0.
    pub fn vip_inventory(&self, bundle: &Path) -> clusterctl::inventory::Inventory {
        let mut inv = self.inventory_with_bundle(bundle);
        inv.spec.ha.mode = clusterctl::inventory::HaMode::Vip;
        inv.spec.ha.vip = Some(clusterctl::inventory::Vip {
            address: self.addr(100).parse().unwrap(),
            interface: Some("eth0".parse().unwrap()),
            router_id: 51,
            port: 8443,
        });
        inv
    }

    /// Writes an inventory next to the lab's and returns its path.
    pub fn write_inventory(&self, name: &str, inv: &clusterctl::inventory::Inventory) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_saphyr::to_string(inv).unwrap()).unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("LAB_KEEP_AFTER_TEST").is_some() {
            eprintln!("LAB_KEEP_AFTER_TEST: leaving lab {} up", self.name);
            return;
        }
        let o = self.sh(&["down", &self.name]);
        if !o.status.success() {
            eprintln!("lab down {}: {}", self.name, text(&o));
        }
    }
}

/// `spec.bundle` for the lab bundle: signed by build-bundle.sh with the lab's key
/// (`<cache>/keys/lab-bundle.pub`, beside `<cache>/bundles/`), which the inventory names.
pub fn lab_bundle_spec(bundle: &Path) -> clusterctl::inventory::BundleSpec {
    let cache = bundle
        .parent()
        .and_then(Path::parent)
        .expect("the lab bundle is in <cache>/bundles/");
    clusterctl::inventory::BundleSpec {
        path: bundle.to_path_buf(),
        public_key: Some(cache.join("keys/lab-bundle.pub")),
        allow_unsigned: false,
    }
}

/// The lab bundle with the Kubernetes build re-stamped as `version` added (binaries and the
/// static-pod images; cached like the plain one): what the upgrade tests move to.
pub fn restamped_bundle(version: &str) -> PathBuf {
    let out = run(Command::new("bash")
        .arg(root().join("tests/lab/build-bundle.sh"))
        .args(["--restamped", version])
        .env("CLUSTERCTL", env!("CARGO_BIN_EXE_clusterctl"))
        .env_remove("OUT_DIR"));
    assert!(out.status.success(), "build-bundle.sh: {}", text(&out));
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    );
    assert!(p.is_file(), "{}", p.display());
    p
}

/// The lab bundle (built from Debian's packages by tests/lab/build-bundle.sh, cached).
pub fn lab_bundle() -> PathBuf {
    // Use the clusterctl under test rather than a separate release build.
    let out = run(Command::new("bash")
        .arg(root().join("tests/lab/build-bundle.sh"))
        .env("CLUSTERCTL", env!("CARGO_BIN_EXE_clusterctl"))
        // `cargo test` sets OUT_DIR, which Kubernetes' own make takes for its output
        // directory (its build then fails on a missing generator); tests/run.sh runs the test
        // binaries directly and has none.
        .env_remove("OUT_DIR"));
    assert!(out.status.success(), "build-bundle.sh: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let p = PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("build-bundle.sh prints the bundle path")
            .trim(),
    );
    assert!(p.is_file(), "{} does not exist", p.display());
    p
}

pub fn clusterctl(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_clusterctl"))
        .args(args)
        .env("CI", "true"))
}

/// Polls `f` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    run(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=5s")
        .args(args))
}

// Kubernetes helpers shared by the lab tests that run workloads (nodes_lab, static_pods_lab).

use std::io::{Read as _, Write as _};
use std::process::Stdio;

/// Runs clusterctl with `args` (`-o json` among them), asserts it succeeded, prints how long it
/// took per phase; returns its report.
pub fn run_report(args: &[&str]) -> serde_json::Value {
    let t = Instant::now();
    let out = clusterctl(args);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("-o json prints the report");
    eprintln!(
        "{args:?} took {:.1}s; per phase:",
        t.elapsed().as_secs_f64()
    );
    for p in report["phases"].as_array().unwrap() {
        eprintln!(
            "  {:<14} {:>6.1}s",
            p["phase"].as_str().unwrap(),
            p["seconds"].as_f64().unwrap()
        );
    }
    report
}

/// `kubectl ARGS` that must succeed: its stdout.
pub fn kubectl_ok(admin: &Path, args: &[&str]) -> String {
    let o = kubectl(admin, args);
    assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `kubectl ARGS -o json`, parsed.
pub fn kubectl_json(admin: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(admin, &a)).unwrap()
}

/// `kubectl apply -f -` of `yaml`, which must succeed.
pub fn apply(admin: &Path, yaml: &str) {
    let mut c = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(admin)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "kubectl apply: {}", text(&o));
}

/// The test workload image of the lab bundle (Debian's busybox-static as an image).
pub fn busybox_ref(bundle: &Path) -> String {
    let out = clusterctl(&["bundle", "ls", bundle.to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success(), "bundle ls: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["items"].as_array().or_else(|| v.as_array()).unwrap();
    items
        .iter()
        .find(|i| i["name"] == "busybox" && i["kind"] == "image")
        .and_then(|i| i["image"].as_str())
        .expect("the lab bundle has a busybox image")
        .to_string()
}

/// Whether a node object says Ready=True.
pub fn node_ready(n: &serde_json::Value) -> bool {
    n["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Nodes that are Ready, by name.
pub fn ready_nodes(admin: &Path) -> Vec<String> {
    let o = kubectl(admin, &["get", "nodes", "-o", "json"]);
    if !o.status.success() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| node_ready(n))
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Sends a GET to `ip:port` from inside `pod` with busybox nc; the first line of the answer.
pub fn get_from_pod(admin: &Path, pod: &str, ip: &str, port: u16) -> String {
    let cmd = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    eventually(Duration::from_secs(30), || {
        let o = kubectl(admin, &["exec", pod, "--", "sh", "-c", &cmd]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success() && out.contains("200 OK")).then_some(out)
    })
    .unwrap_or_else(|| {
        panic!(
            "GET {ip}:{port} from {pod}: {}",
            text(&kubectl(admin, &["exec", pod, "--", "sh", "-c", &cmd]))
        )
    })
}

/// A Deployment `web` of 4 busybox httpd pods on :8080 spread over the untainted nodes, a
/// ClusterIP Service `web` (80) and a NodePort Service `web-np` (30080) in front of it.
pub fn web_yaml(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      # Spread over the nodes that can take them: in 1.20 the spread also counts tainted
      # nodes as domains unless the pod's node affinity leaves them out.
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions: [{{key: node-role.kubernetes.io/master, operator: DoesNotExist}}]
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
        - name: web
          image: {image}
          imagePullPolicy: Never
          command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && echo web-started-on-$(hostname) && exec busybox httpd -f -v -p 8080 -h /www']
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-np, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
"#
    )
}

/// A plain HTTP/1.0 GET to `addr` (ip:port) from this machine: the answer when it is a 200.
pub fn http_get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (out.starts_with("HTTP/1.") && out.lines().next()?.contains(" 200 ")).then_some(out)
}

/// The etcd leader hand-overs a run made on purpose, as its output reports them (the runner's
/// "etcd: leadership moved from A to B" before restarting or removing a leading member).
pub fn handovers(outputs: &[&str]) -> usize {
    outputs
        .iter()
        .map(|o| o.matches("leadership moved from").count())
        .sum()
}

/// A probe's failures without the answers etcd's own churn accounts for, each kind bounded by
/// what the step did, printed either way:
///
/// - "etcdserver: leader changed": at most one per leader hand-over the run reported
///   ([`handovers`]). etcd fails the linearizable reads pending at the instant its leader
///   changes (even a deliberate move-leader), and the 1.20 apiserver passes the error on
///   without retrying (kubernetes/kubernetes#112152, still open). A run that must restart a
///   leading member (a new etcd binary, a CA bundle etcd reads only at start) may cost one per
///   hand-over; a run that needs no leader change (flag rolls, joins) none.
/// - a request in flight to an etcd member at the instant it stops: at most one per member
///   the step stopped, restarted or removed (`stops`, [`EtcdProcesses::stops`]). etcd 3.4
///   with TLS stops its gRPC server without a graceful drain (etcd-io/etcd#8916): requests in
///   flight end with "transport is closing" (Unavailable) or an empty 200 answer ("missing
///   content-type field", Unknown), and the 1.20 apiserver passes either on. Seen in the lab
///   about once per 20 member stops (`renew-certs --ca` cycles), each time within
///   milliseconds of a member's SIGTERM in its journal.
pub fn without_etcd_churn(failed: Vec<String>, handovers: usize, stops: usize) -> Vec<String> {
    let (leader, rest): (Vec<String>, Vec<String>) = failed
        .into_iter()
        .partition(|f| churn(f) == Some(Churn::LeaderChanged));
    let (stopped, other): (Vec<String>, Vec<String>) = rest
        .into_iter()
        .partition(|f| churn(f) == Some(Churn::MemberStopped));
    eprintln!(
        "probe: {} 'leader changed' answers ({handovers} hand-over(s) reported): {leader:?}; {} answers of a stopping etcd member ({stops} member stop(s)): {stopped:?}",
        leader.len(),
        stopped.len()
    );
    let mut failed = other;
    if leader.len() > handovers {
        failed.extend(leader);
    }
    if stopped.len() > stops {
        failed.extend(stopped);
    }
    failed
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Churn {
    LeaderChanged,
    MemberStopped,
}

/// What etcd churn an error text shows, if any.
fn churn_of(text: &str) -> Option<Churn> {
    if text.contains("etcdserver: leader changed") {
        Some(Churn::LeaderChanged)
    } else if text.contains("desc = transport is closing")
        || text.contains("transport: missing content-type field")
        // A stopping member ends the streams it serves (gRPC over its HTTP server) without
        // trailers (kubernetes/kubernetes#65062); seen in CI as a restarting member's answer.
        || text.contains("desc = server closed the stream without sending trailers")
    {
        Some(Churn::MemberStopped)
    } else {
        None
    }
}

/// The etcd churn behind a probe failure: a read's answer, or a `/readyz` whose etcd check
/// failed (reason withheld) while every reason the apiservers logged for it then
/// ([`with_logged_etcd_reasons`]) was of that one kind. A failure with any other reason, or
/// no logged reason found, is no churn.
fn churn(f: &str) -> Option<Churn> {
    match f.split_once(LOGGED) {
        Some((answer, logged)) => {
            if !answer.contains("[-]etcd failed: reason withheld") {
                return None;
            }
            let kinds: Vec<Option<Churn>> = logged.lines().map(churn_of).collect();
            match kinds.first() {
                Some(Some(k)) if kinds.iter().all(|x| x == &Some(*k)) => Some(*k),
                _ => None,
            }
        }
        None if f.starts_with("Error from server") || f.contains(": Error from server") => {
            let last = f.trim_end().lines().last().unwrap_or("");
            churn_of(last)
        }
        None => None,
    }
}

/// The churn classification the lab probes rest on: each kind within its own bound, a
/// `/readyz` only by what the apiservers logged for it, anything else a failure.
#[test]
fn etcd_churn_answers_are_told_apart_and_bounded() {
    let leader = "at 1.0: Error from server: etcdserver: leader changed\n".to_string();
    let closing = "12:00:01 get --raw /api: Error from server: rpc error: code = Unavailable desc = transport is closing\n".to_string();
    let readyz = |logged: &str| {
        format!(
            "12:00:02 get --raw /readyz: Error from server (InternalError): an error on the server (\"[+]ping ok\\n[-]etcd failed: reason withheld\\n\"){LOGGED}{logged}"
        )
    };
    let empty_200 = readyz(
        "h1: [-]etcd failed: error getting data from etcd: rpc error: code = Unknown desc = OK: HTTP status code 200; transport: missing content-type field",
    );
    let other = "at 2.0: Error from server: etcdserver: request timed out\n".to_string();
    let all = vec![leader.clone(), closing.clone(), empty_200.clone()];
    assert!(without_etcd_churn(all.clone(), 1, 2).is_empty());
    assert_eq!(without_etcd_churn(all.clone(), 0, 2), vec![leader.clone()]);
    assert_eq!(
        without_etcd_churn(all, 1, 1).len(),
        2,
        "two member-stop answers, one stop"
    );
    assert_eq!(without_etcd_churn(vec![other.clone()], 5, 5), vec![other]);
    // A /readyz with no logged reason, or reasons of mixed kinds, is a failure.
    let unknown = readyz("");
    assert_eq!(
        without_etcd_churn(vec![unknown.clone()], 5, 5),
        vec![unknown]
    );
    let mixed = readyz(
        "h1: [-]etcd failed: etcdserver: leader changed\nh2: [-]etcd failed: context deadline exceeded",
    );
    assert_eq!(without_etcd_churn(vec![mixed.clone()], 5, 5), vec![mixed]);
    // Two apiservers reading from the one stopping member, both answered without trailers.
    let trailers = readyz(
        "h2: [-]etcd failed: error getting data from etcd: rpc error: code = Internal desc = server closed the stream without sending trailers\nh3: [-]etcd failed: error getting data from etcd: rpc error: code = Internal desc = server closed the stream without sending trailers",
    );
    assert!(without_etcd_churn(vec![trailers.clone()], 0, 1).is_empty());
    assert_eq!(
        without_etcd_churn(vec![trailers.clone()], 0, 0),
        vec![trailers]
    );
    let led =
        readyz("h2: [-]etcd failed: error getting data from etcd: etcdserver: leader changed");
    assert!(without_etcd_churn(vec![led], 1, 0).is_empty());
}

/// The etcd member process on each host ("PID start-time"; empty when none runs there), read
/// before a step: [`EtcdProcesses::stops`] counts the members the step stopped, restarted or
/// removed, in either control-plane mode (a static pod's etcd is a process of its host too).
pub struct EtcdProcesses(Vec<(String, String)>);

impl EtcdProcesses {
    pub fn read(lab: &Lab, hosts: &[&str]) -> EtcdProcesses {
        EtcdProcesses(
            hosts
                .iter()
                .map(|h| (h.to_string(), Self::on(lab, h)))
                .collect(),
        )
    }

    fn on(lab: &Lab, host: &str) -> String {
        let o = lab.exec(
            host,
            "p=$(pgrep -xo etcd) && ps -o pid=,lstart= -p \"$p\"; true",
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// How many of the members running at [`EtcdProcesses::read`] are not the same process
    /// now.
    pub fn stops(&self, lab: &Lab) -> usize {
        self.0
            .iter()
            .filter(|(h, p)| !p.is_empty() && Self::on(lab, h) != *p)
            .count()
    }
}

const LOGGED: &str = "\nwhat the apiservers logged for their etcd check then:\n";

/// `/readyz` answers "[-]etcd failed: reason withheld"; the apiserver (at `--v=2`) logs the
/// reason. Each such failure (with the Unix second it happened in) gets the etcd check
/// failures the apiservers on `hosts` logged from 3 s before to 2 s after, by host, so a
/// failed check is told apart: etcd churn ([`without_etcd_churn`]) or anything else (printed
/// with the failure).
pub fn with_logged_etcd_reasons(
    lab: &Lab,
    hosts: &[&str],
    failed: Vec<(u64, String)>,
) -> Vec<String> {
    failed
        .into_iter()
        .map(|(at, f)| {
            if !f.contains("[-]etcd failed: reason withheld") {
                return f;
            }
            let logged: Vec<String> = hosts
                .iter()
                .flat_map(|h| {
                    let o = lab.exec(
                        h,
                        &format!(
                            "journalctl -q --no-pager -o cat -u kube-apiserver --since @{} --until @{} | grep -F 'etcd failed: ' | grep -vF 'reason withheld'; true",
                            at - 3,
                            at + 2
                        ),
                    );
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(|l| format!("{h}: {}", l.trim()))
                        .collect::<Vec<_>>()
                })
                .collect();
            format!("{f}{LOGGED}{}", logged.join("\n"))
        })
        .collect()
}

/// Per endpoint (`host:port what`): the serial it serves now over TLS and the serial of the
/// certificate the PKI holds for it.
pub fn served(
    eps: &[clusterctl::phases::certs::Endpoint],
) -> std::collections::BTreeMap<String, (Option<String>, Option<String>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(futures::future::join_all(
        eps.iter().map(clusterctl::phases::certs::check_served),
    ))
    .into_iter()
    .map(|c| {
        (
            format!(
                "{}:{} {}",
                c.endpoint.host, c.endpoint.port, c.endpoint.what
            ),
            (c.served_serial, c.file_serial),
        )
    })
    .collect()
}

/// The read probe of the rolling tests: a real read through the cluster endpoint in a loop
/// (a stopping apiserver fails `/readyz` on purpose while it still serves requests, so
/// `/readyz` is not the probe), counting answers and failures until `finish`.
pub struct ReadProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl ReadProbe {
    pub fn start(admin: &Path) -> ReadProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, admin) = (stop.clone(), admin.to_path_buf());
        let handle = std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            let now = || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = now();
                let o = kubectl(&admin, &["get", "--raw", "/api/v1/namespaces/kube-system"]);
                if o.status.success() {
                    ok += 1;
                } else {
                    // When it failed, to set beside the balancers' log (balancer_events), and
                    // when it was sent, to tell a request in flight across a VIP move.
                    failed.push(format!("at {:.3} (sent {sent:.3}): {}", now(), text(&o)));
                }
            }
            (ok, failed)
        });
        ReadProbe { stop, handle }
    }

    /// Stops the probe: (requests answered, failures); every failed request counts.
    pub fn finish(self) -> (usize, Vec<String>) {
        self.finish_after(&[], 0)
    }

    /// [`ReadProbe::finish`] for a step whose `outputs` may report etcd leader hand-overs and
    /// which stopped `stops` etcd members ([`EtcdProcesses::stops`]): the answers that churn
    /// accounts for are not failures, within those bounds (see [`without_etcd_churn`]).
    pub fn finish_after(self, outputs: &[&str], stops: usize) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = self.handle.join().unwrap();
        (ok, without_etcd_churn(failed, handovers(outputs), stops))
    }
}

/// The balancer among h1-h3 that holds the VIP (`addr(100)`), if one does.
pub fn vip_holder(lab: &Lab) -> Option<String> {
    let vip = lab.addr(100);
    ["h1", "h2", "h3"]
        .into_iter()
        .find(|h| {
            let o = lab.exec(h, "ip -o -4 addr show dev eth0");
            o.status.success() && text(&o).contains(&format!(" {vip}/"))
        })
        .map(str::to_string)
}

/// What the haproxy on each of `hosts` logged about its apiserver backends (servers going
/// DOWN/UP, maintenance), with Unix times: to read beside a ReadProbe's failures.
pub fn balancer_events(lab: &Lab, hosts: &[&str]) -> String {
    hosts
        .iter()
        .map(|h| {
            let o = lab.exec(
                h,
                "journalctl -q --no-pager -o short-unix -t haproxy | tail -n 30",
            );
            format!(
                "--- haproxy on {h}:\n{}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// When `from`'s keepalived stopped after `since` and when one of `others` took the VIP
/// (Unix seconds), read from their journals.
pub fn vip_handover(
    lab: &Lab,
    from: &str,
    others: &[&str],
    since: f64,
) -> Result<(f64, f64), String> {
    let first = |host: &str, needle: &str| -> Option<f64> {
        let o = lab.exec(
            host,
            "journalctl -q --no-pager -o short-unix -t Keepalived -t Keepalived_vrrp",
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .find(|t| *t >= since)
    };
    let stopped = first(from, "Stopping").ok_or(format!("{from}: no keepalived stop logged"))?;
    let taken = others
        .iter()
        .filter_map(|h| first(h, "Entering MASTER STATE"))
        .filter(|t| *t >= stopped)
        .min_by(f64::total_cmp)
        .ok_or(format!(
            "none of {others:?} took the VIP after {from} stopped"
        ))?;
    Ok((stopped, taken))
}

/// Of a read probe's failures (`at <unix seconds> (sent <unix seconds>): <kubectl's words>`),
/// the one a VIP move may cost, and the others. A TCP connection ends on the balancer that
/// held the VIP, and that balancer loses the address when its keepalived stops: it can no
/// longer send from it, so a response still owed on such a connection never comes (the client
/// waits out its timeout), and a client packet reaching the new holder, which knows no such
/// connection, gets a reset. No VIP without connection-state sync keeps that request, and
/// kubectl does not retry it. So at most one failure is set apart: a request sent before the
/// old holder stopped that failed after it, by a reset from `vip` or by the client's timeout
/// (`handover`, from [`vip_handover`]). The probe sends one request at a time, so no second
/// one can have been in flight; every other failure stays.
pub fn split_vip_move_loss(
    mut failed: Vec<String>,
    vip: &str,
    handover: (f64, f64),
) -> (Option<String>, Vec<String>) {
    let times = |f: &String| -> Option<(f64, f64)> {
        let rest = f.strip_prefix("at ")?;
        let (at, rest) = rest.split_once(" (sent ")?;
        let (sent, _) = rest.split_once("):")?;
        Some((sent.parse().ok()?, at.parse().ok()?))
    };
    // kubectl's own timeout reads "context deadline exceeded", with "(Client.Timeout exceeded
    // while awaiting headers)" once the request was sent; an answer "from server" is no
    // client timeout.
    let timed_out = |f: &String| {
        f.contains("Unable to connect to the server:")
            && (f.contains("context deadline exceeded") || f.contains("Client.Timeout exceeded"))
    };
    let across_the_move = |f: &String| {
        let lost = (f.contains(&format!("->{vip}:")) && f.contains("connection reset by peer"))
            || timed_out(f);
        lost && times(f).is_some_and(|(sent, at)| sent < handover.0 && at > handover.0)
    };
    let moved = failed
        .iter()
        .position(across_the_move)
        .map(|i| failed.remove(i));
    (moved, failed)
}

/// The request a VIP move may cost is told apart by when it was sent and how it failed; one
/// only, and nothing sent after the old holder stopped.
#[test]
fn only_one_request_in_flight_across_a_vip_move_is_set_apart() {
    let vip = "10.77.1.100";
    let handover = (100.0, 100.6);
    let timeout = "at 105.9 (sent 99.9): Unable to connect to the server: context deadline exceeded (Client.Timeout exceeded while awaiting headers)\n".to_string();
    // Timed out before its request was sent (the connection or the TLS handshake, relayed
    // by the old holder to an apiserver): seen in CI 0.6 s before the stop.
    let handshake =
        "at 105.5 (sent 99.4): Unable to connect to the server: context deadline exceeded\n"
            .to_string();
    assert_eq!(
        split_vip_move_loss(vec![handshake.clone()], vip, handover),
        (Some(handshake), vec![])
    );
    let reset = "at 100.2 (sent 99.95): read tcp 10.77.1.1:33432->10.77.1.100:8443: read: connection reset by peer\n".to_string();
    let (moved, rest) = split_vip_move_loss(vec![timeout.clone()], vip, handover);
    assert_eq!((moved, rest.len()), (Some(timeout.clone()), 0));
    let (moved, rest) = split_vip_move_loss(vec![reset.clone(), timeout.clone()], vip, handover);
    assert_eq!((moved, rest), (Some(reset.clone()), vec![timeout]));
    // Sent into the gap without a holder: its SYN is retried and must reach the new holder.
    let late = "at 106.0 (sent 100.1): Unable to connect to the server: context deadline exceeded (Client.Timeout exceeded while awaiting headers)\n".to_string();
    assert_eq!(
        split_vip_move_loss(vec![late.clone()], vip, handover).1,
        vec![late]
    );
    // Ended before the move, or another failure, or a reset from elsewhere: not the move's.
    let before = "at 99.0 (sent 98.9): read tcp 10.77.1.1:1->10.77.1.100:8443: read: connection reset by peer\n".to_string();
    let server = "at 101.0 (sent 99.9): Error from server (Timeout): the server was unable to return a response\n".to_string();
    let other = "at 101.0 (sent 99.9): read tcp 10.77.1.1:1->10.77.1.12:6443: read: connection reset by peer\n".to_string();
    for f in [before, server, other] {
        assert_eq!(
            split_vip_move_loss(vec![f.clone()], vip, handover).1,
            vec![f]
        );
    }
}

/// The workload checks of the nodes lab tests, on a cluster whose workers are h4 and h5 and
/// whose admin kubeconfig points at the VIP (`addr(100)`:8443): a Deployment of 4 busybox web
/// pods spread over the workers reaches Running; a pod on h4 reaches a pod on h5 by IP and the
/// ClusterIP Service; the NodePort answers the machine on h4 and h1; `kubectl logs` and `exec`
/// work. Returns the pods by node: (name, IP).
pub fn check_web_workload(
    lab: &Lab,
    admin: &Path,
    bundle: &Path,
) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let busybox = busybox_ref(bundle);
    apply(admin, &web_yaml(&busybox));
    let t = Instant::now();
    let pods = eventually(Duration::from_secs(120), || {
        let v = kubectl_json(admin, &["get", "pods", "-l", "app=web"]);
        let items = v["items"].as_array().unwrap().clone();
        let running = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
            .count();
        (running == 4).then_some(items)
    })
    .unwrap_or_else(|| {
        panic!(
            "4 web pods not Running: {}",
            kubectl_ok(admin, &["get", "pods", "-o", "wide"])
        )
    });
    eprintln!(
        "4 pods Running {:.1}s after apply",
        t.elapsed().as_secs_f64()
    );
    let mut by_node: std::collections::BTreeMap<String, Vec<(String, String)>> =
        std::collections::BTreeMap::new();
    for p in &pods {
        by_node
            .entry(p["spec"]["nodeName"].as_str().unwrap().to_string())
            .or_default()
            .push((
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["status"]["podIP"].as_str().unwrap().to_string(),
            ));
    }
    assert_eq!(
        by_node.keys().cloned().collect::<Vec<_>>(),
        ["h4", "h5"],
        "pods spread over the workers only"
    );
    let (p4, _) = by_node["h4"][0].clone();
    let (p5, ip5) = by_node["h5"][0].clone();
    // Pod to pod across nodes, by IP.
    let answer = get_from_pod(admin, &p4, &ip5, 8080);
    assert!(answer.contains(&format!("hello from {p5}")), "{answer}");
    // A ClusterIP Service from a pod.
    let svc = kubectl_json(admin, &["get", "service", "web"]);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let answer = get_from_pod(admin, &p4, &cluster_ip, 80);
    assert!(answer.contains("hello from web-"), "{answer}");
    // A NodePort from the machine, on a worker and on a control-plane node.
    for h in ["h4", "h1"] {
        let addr = format!("{}:30080", lab.ip(h));
        let got = eventually(Duration::from_secs(30), || http_get(&addr));
        assert!(
            got.is_some_and(|a| a.contains("hello from web-")),
            "NodePort {addr}"
        );
    }
    // kubectl logs and exec through the VIP (the admin kubeconfig's server).
    let kc = std::fs::read_to_string(admin).unwrap();
    assert!(
        kc.contains(&format!("https://{}:8443", lab.addr(100))),
        "{kc}"
    );
    let logs = kubectl_ok(admin, &["logs", &p5]);
    assert!(logs.contains(&format!("web-started-on-{p5}")), "{logs}");
    let exec = kubectl_ok(admin, &["exec", &p5, "--", "cat", "/www/index.html"]);
    assert_eq!(exec.trim(), format!("hello from {p5}"));
    by_node
}

/// (files written, bytes sent, restarts) of a `-o json` report.
pub fn totals(report: &serde_json::Value) -> (u64, u64, u64) {
    let t = &report["totals"];
    (
        t["filesWritten"].as_u64().unwrap(),
        t["bytesSent"].as_u64().unwrap(),
        t["restarts"].as_u64().unwrap(),
    )
}

/// A .deb as Debian builds them (ar: debian-binary, control.tar.xz, data.tar.xz) whose
/// data.tar is `data`: `bundle build` refuses a `kind: deb` item that is not one, and stores
/// the xz members expanded.
pub fn deb_with_xz_data(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let xz = |bytes: &[u8]| {
        let mut v = Vec::new();
        liblzma::read::XzEncoder::new(bytes, 6)
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    let mut w = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.xz", xz(b"control")),
        ("data.tar.xz", xz(data)),
    ] {
        w.append(
            &ar::Header::new(name.into(), bytes.len() as u64),
            &bytes[..],
        )
        .unwrap();
    }
    w.into_inner().unwrap()
}
