//! The balancer rotation: taking an apiserver out of every haproxy before its restart and
//! putting it back once its gate passed, through haproxy's runtime API. The engine owns it
//! because every playbook that restarts an apiserver needs it, and a drain clusterctl left
//! behind (a killed run) is reconciled at the start of every run and shown by `status`.

use crate::engine::executor::{Pending, pending_clear_command, pending_write_command};
use crate::engine::{Cmd, Context, Executor, Script, Shell};
use crate::inventory::{HaMode, Host};
use crate::render::ADMIN_SOCKET;

/// The hosts whose haproxy balances the apiservers: the VIP's balancers, or every node in
/// local-proxy mode; none with an external balancer.
pub fn balancers(inv: &crate::inventory::Inventory) -> Vec<&Host> {
    match inv.spec.ha.mode {
        HaMode::Vip => inv.lb_hosts(),
        HaMode::LocalProxy => inv
            .spec
            .hosts
            .iter()
            .filter(|h| inv.runs_kubelet(h))
            .collect(),
        HaMode::External => Vec::new(),
    }
}

/// A shell command that sends `command` to the local haproxy's runtime API (perl is on every
/// Debian/Ubuntu host: perl-base is essential; no socat needed). Exits 0 with a note when the
/// host's haproxy has no socket yet (not installed, or its config predates the socket); exits
/// 1 with haproxy's answer when haproxy refuses the command (its answer is empty on success).
pub fn runtime_api_command(command: &str) -> Shell {
    runtime_api(command, "command")
}

/// A shell command that prints the local haproxy's answer to a read-only runtime API
/// `command` (exit 0), or [`NO_SOCKET`] when the host's haproxy has no socket.
pub fn runtime_api_query(command: &str) -> Shell {
    runtime_api(command, "query")
}

/// `mode`: `command` (an answer is haproxy refusing: printed, exit 1) or `query` (printed).
fn runtime_api(command: &str, mode: &str) -> Shell {
    // Arguments: the socket, the command, what to print when there is no socket, the mode.
    const API: &str = r#"if [ ! -S "$1" ]; then echo "$3"; exit 0; fi
perl -MIO::Socket::UNIX -e '$s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "$ARGV[0]: $!\n"; print $s "$ARGV[1]\n"; $r = join("", <$s>);
if ($ARGV[2] eq "command") { $r =~ s/\s+$//; if ($r ne "") { print "$r\n"; exit 1 } } else { print $r }' "$1" "$2" "$4""#;
    Script::new(API)
        .arg(ADMIN_SOCKET)
        .arg(command)
        .arg(NO_SOCKET)
        .arg(mode)
        .into()
}

/// What [`runtime_api_query`] prints on a host whose haproxy has no runtime API socket.
pub const NO_SOCKET: &str = "no haproxy runtime API socket";

/// The haproxy backend in front of the apiservers (see templates/haproxy/haproxy.cfg).
pub const BACKEND: &str = "kube-apiserver";

/// One balancer's view of one apiserver backend (`show servers state`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    /// The server's name: the control-plane host's name.
    pub server: String,
    /// haproxy's operational state: UP, DOWN, STARTING or STOPPING.
    pub state: String,
    /// `set server … state drain` is in force: no new connection reaches it.
    pub drained: bool,
    /// Put in maintenance through the runtime API.
    pub maintenance: bool,
    /// Its health check runs (clusterctl pauses it while it drains a backend).
    pub health_check: bool,
}

impl ServerView {
    /// Taken out of the rotation by hand or by a run that did not put it back.
    pub fn out_of_rotation(&self) -> bool {
        self.drained || self.maintenance || !self.health_check
    }
}

/// Parses `show servers state kube-apiserver`. None when the answer is not such a table
/// (no socket, an unknown backend, an error).
pub fn parse_servers_state(out: &str) -> Option<Vec<ServerView>> {
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let header: Vec<&str> = loop {
        let l = lines.next()?;
        if let Some(h) = l.strip_prefix("# ") {
            break h.split_whitespace().collect();
        }
    };
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (name, op, admin, check) = (
        col("srv_name")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_check_state")?,
    );
    let mut v = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u32>().ok());
        let (Some(server), Some(op), Some(admin), Some(check)) =
            (f.get(name), num(op), num(admin), num(check))
        else {
            continue;
        };
        // haproxy's flags: admin 0x01/0x02/0x04/0x20/0x40 maintenance, 0x08 forced drain;
        // check 0x02 configured, 0x04 enabled.
        v.push(ServerView {
            server: server.to_string(),
            state: match op {
                0 => "DOWN",
                1 => "STARTING",
                2 => "UP",
                _ => "STOPPING",
            }
            .into(),
            drained: admin & 0x08 != 0,
            maintenance: admin & 0x67 != 0,
            health_check: check & 0x02 == 0 || check & 0x04 != 0,
        });
    }
    Some(v)
}

/// Runtime API commands (`{server}`: the backend's server) that take an apiserver out of the
/// rotation and put it back (see [`Rotation::take_out`]).
pub const TAKE_OUT: &str = "disable health {server}; set server {server} state drain";
pub const PUT_BACK: &str = "set server {server} state ready; enable health {server}";

/// Takes an apiserver out of every balancer's rotation before a change restarts it, and puts
/// it back after its health gate: no new request meets a stopping or starting apiserver (its
/// own `/readyz`-based health check alone would leave ~2 s where new connections still reach
/// it while it fails `/readyz` on purpose). Used by the runner for every phase.
pub struct Rotation<'a> {
    ctx: &'a Context,
    exec: &'a dyn Executor,
    out: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// How long [`Rotation::reconcile`] waits for a drained apiserver's `/readyz`.
    ready_within: std::time::Duration,
}

impl<'a> Rotation<'a> {
    pub fn new(ctx: &'a Context, exec: &'a dyn Executor) -> Rotation<'a> {
        Rotation {
            ctx,
            exec,
            out: Default::default(),
            // An apiserver the interrupted run had just restarted may still be starting: the
            // time a start takes.
            ready_within: std::time::Duration::from_secs(30),
        }
    }

    /// Sets the state of `host`'s backend on every balancer; returns the balancers that did
    /// not take it (with why), which the caller reports as warnings: their own health checks
    /// still take a stopped apiserver out within ~2 s.
    async fn set(&self, host: &Host, commands: &str) -> Vec<String> {
        let cmd = runtime_api_command(
            &commands.replace("{server}", &format!("kube-apiserver/{}", host.name)),
        );
        let all = futures::future::join_all(balancers(self.ctx.inv()).into_iter().map(|b| {
            let cmd = cmd.clone();
            async move {
                match self.exec.change(b, &cmd).await {
                    Ok(o) if o.status == 0 => None,
                    Ok(o) => Some(format!("{}: {}", b.name, o.stdout.trim())),
                    Err(e) => Some(format!("{}: {e:#}", b.name)),
                }
            }
        }))
        .await;
        all.into_iter().flatten().collect()
    }

    /// Whether `units` (what a change on a host is about to restart or replace) include its
    /// apiserver: its unit, or its static pod's manifest.
    pub fn concerns(units: &[String]) -> bool {
        units
            .iter()
            .any(|u| u == "kube-apiserver.service" || u.ends_with("/manifests/kube-apiserver.yaml"))
    }

    /// Before a change that restarts `host`'s apiserver: out of rotation (only when other
    /// apiservers can take the requests). `drain` with its health check paused, not `maint`:
    /// entering maintenance counts as "marked down", and `on-marked-down shutdown-sessions`
    /// would cut every open connection at once, requests in flight included (a read probe saw
    /// "unexpected EOF" at that instant, ~1 in 700). Drained, it gets no new connection, and the
    /// ones it has end as the apiserver stops gracefully; unchecked, its failing `/readyz`
    /// during --shutdown-delay-duration does not mark it down either.
    ///
    /// The host's pending record says so first (a `drain` entry), so a run killed while the
    /// backend is out leaves a trace that the next run's [`Rotation::reconcile`] acts on.
    pub async fn take_out(&self, host: &Host) -> Vec<String> {
        if self.ctx.inv().control_plane_hosts().count() < 2 || balancers(self.ctx.inv()).is_empty()
        {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        let mark = pending_write_command(&[Pending::Drain]);
        match self.exec.change(host, &mark).await {
            Ok(o) if o.status == 0 => {}
            Ok(o) => warnings.push(format!(
                "recording the drain on {}: {}",
                host.name,
                o.stderr.trim()
            )),
            Err(e) => warnings.push(format!("recording the drain on {}: {e:#}", host.name)),
        }
        self.out.lock().unwrap().insert(host.name.to_string());
        warnings.extend(
            self.set(host, TAKE_OUT)
                .await
                .into_iter()
                .map(|w| format!("taking {} out of the balancer: {w}", host.name)),
        );
        warnings
    }

    /// After the host's gate (passed or not): back in rotation, where haproxy's health check
    /// decides again. A no-op for a host that was not taken out. The host's `drain` record
    /// goes only once every balancer took it back.
    pub async fn put_back(&self, host: &Host) -> Vec<String> {
        if !self.out.lock().unwrap().remove(host.name.as_str()) {
            return Vec::new();
        }
        let warnings: Vec<String> = self
            .set(host, PUT_BACK)
            .await
            .into_iter()
            .map(|w| format!("putting {} back into the balancer: {w}", host.name))
            .collect();
        if warnings.is_empty() {
            let _ = self
                .exec
                .change(host, &pending_clear_command(&[Pending::Drain]))
                .await;
        }
        warnings
    }

    /// Every balancer's view of every apiserver backend, read in parallel: (balancer, its
    /// view or why it could not be read).
    pub async fn views(&self) -> Vec<(String, Result<Vec<ServerView>, String>)> {
        let balancers: Vec<&Host> = balancers(self.ctx.inv())
            .into_iter()
            .filter(|b| self.ctx.hosts_where(|h| h.name == b.name).len() == 1)
            .collect();
        read_views(self.exec, &balancers).await
    }

    /// At the start of a run: every backend a balancer has out of rotation whose host carries
    /// clusterctl's `drain` record (a run died before putting it back) goes back into every
    /// balancer once its apiserver answers `/readyz`; its record is cleared. A backend
    /// drained by someone else (no record) is left alone. Returns (host, what happened).
    pub async fn reconcile(&self) -> Vec<(String, String)> {
        let views = self.views().await;
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (b, v) in &views {
            for s in v.iter().flatten().filter(|s| s.out_of_rotation()) {
                out.entry(s.server.clone()).or_default().push(b.clone());
            }
        }
        let mut lines = Vec::new();
        for (name, on) in out {
            let Some(host) = self
                .ctx
                .inv()
                .control_plane_hosts()
                .find(|h| h.name == name)
            else {
                continue;
            };
            let marked = self
                .exec
                .query(
                    host,
                    &Cmd::new("test").arg("-e").arg(Pending::Drain.path()).into(),
                )
                .await
                .is_ok_and(|o| o.status == 0);
            if !marked {
                lines.push((
                    name.clone(),
                    format!(
                        "out of rotation on {} but not by clusterctl (no {} on the host): left as it is",
                        on.join(", "),
                        Pending::Drain.path()
                    ),
                ));
                continue;
            }
            let ready = match self.ctx.admin_http() {
                Ok(c) => crate::kube::http::wait_ok(
                    &c,
                    &crate::kube::readyz_url(self.ctx.inv(), host),
                    self.ready_within,
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("{e:#}")),
            };
            if let Err(e) = ready {
                lines.push((
                    name.clone(),
                    format!(
                        "left drained on {} by an interrupted run, and its apiserver is not ready ({e}): it goes back after its next restart and gate",
                        on.join(", ")
                    ),
                ));
                continue;
            }
            self.out.lock().unwrap().insert(name.clone());
            let warnings = self.put_back(host).await;
            lines.push((
                name.clone(),
                if warnings.is_empty() {
                    format!(
                        "put back into the balancers (left drained on {} by an interrupted run; its apiserver is ready)",
                        on.join(", ")
                    )
                } else {
                    format!("could not be put back: {}", warnings.join("; "))
                },
            ));
        }
        lines
    }
}

/// `show servers state` on each of `balancers`, in parallel.
pub async fn read_views(
    exec: &dyn Executor,
    balancers: &[&Host],
) -> Vec<(String, Result<Vec<ServerView>, String>)> {
    let cmd = runtime_api_query(&format!("show servers state {BACKEND}"));
    futures::future::join_all(balancers.iter().map(|b| {
        let cmd = &cmd;
        async move {
            let r = match exec.query(b, cmd).await {
                Ok(o) if o.status == 0 && o.stdout.trim() == NO_SOCKET => Ok(Vec::new()),
                Ok(o) if o.status == 0 => parse_servers_state(&o.stdout)
                    .ok_or_else(|| format!("unexpected runtime API answer: {}", o.stdout.trim())),
                Ok(o) => Err(format!("exit {}: {}", o.status, o.stderr.trim())),
                Err(e) => Err(format!("{e:#}")),
            };
            (b.name.to_string(), r)
        }
    }))
    .await
}

/// Takes `host`'s apiserver out of every balancer for good, before the host leaves the
/// cluster (`reset` of a control-plane host): as for a restart, drained with its health check
/// paused, so no new connection reaches it and the open ones end as it stops gracefully. The
/// balancers' configs drop it at the next `init` (the host removed from the inventory).
/// Returns the balancers that did not take it (with why).
pub async fn leave_balancers(ctx: &Context, exec: &dyn Executor, host: &Host) -> Vec<String> {
    Rotation::new(ctx, exec)
        .set(host, TAKE_OUT)
        .await
        .into_iter()
        .map(|w| format!("taking {} out of the balancer: {w}", host.name))
        .collect()
}

impl crate::engine::executor::BeforeRestart for Rotation<'_> {
    fn before<'b>(
        &'b self,
        host: &'b Host,
        running: &'b [String],
    ) -> futures::future::BoxFuture<'b, Vec<String>> {
        Box::pin(async move {
            if Self::concerns(running) {
                self.take_out(host).await
            } else {
                Vec::new()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_changes_are_recognised() {
        assert!(Rotation::concerns(&["kube-apiserver.service".into()]));
        assert!(Rotation::concerns(&[
            "/etc/kubernetes/manifests/kube-apiserver.yaml".into()
        ]));
        assert!(!Rotation::concerns(&[
            "etcd.service".into(),
            "kube-scheduler.service".into()
        ]));
    }

    use crate::engine::executor::{Blob, CmdOutput};
    use futures::future::BoxFuture;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    /// haproxy on every balancer (its runtime API: drain / ready per server) and the pending
    /// record's `drain` entry per host, with the order things happened in.
    #[derive(Default)]
    struct Balancers {
        drained: Mutex<BTreeSet<(String, String)>>,
        marked: Mutex<BTreeSet<String>>,
        log: Mutex<Vec<String>>,
    }

    impl Executor for Balancers {
        fn query<'a>(
            &'a self,
            h: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            let mut out = String::new();
            if cmd.contains("show servers state") {
                out += "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state\n";
                for (i, s) in ["cp1", "cp2", "cp3"].iter().enumerate() {
                    let d = self
                        .drained
                        .lock()
                        .unwrap()
                        .contains(&(h.name.to_string(), s.to_string()));
                    let (admin, check) = if d { (8, 2) } else { (0, 6) };
                    out += &format!(
                        "3 kube-apiserver {i} {s} 10.0.0.{i} 2 {admin} 1 1 5 15 3 3 {check}\n"
                    );
                }
            }
            let status = if cmd.starts_with("test -e") {
                i32::from(!self.marked.lock().unwrap().contains(h.name.as_str()))
            } else {
                0
            };
            Box::pin(async move {
                Ok(CmdOutput {
                    status,
                    stdout: out,
                    stderr: String::new(),
                })
            })
        }
        fn change<'a>(
            &'a self,
            h: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            let drain = Pending::Drain.path();
            // The pending record's writer gets the entry's name as an argument.
            if cmd.contains("printf") && cmd.contains(&format!(" {} ", Pending::Drain.file_name()))
            {
                self.marked.lock().unwrap().insert(h.name.to_string());
                self.log.lock().unwrap().push(format!("mark {}", h.name));
            } else if cmd.starts_with("rm -f") && cmd.contains(&drain) {
                self.marked.lock().unwrap().remove(h.name.as_str());
                self.log.lock().unwrap().push(format!("unmark {}", h.name));
            } else if let Some(i) = cmd.find("kube-apiserver/") {
                let server: String = cmd[i + 15..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric())
                    .collect();
                let key = (h.name.to_string(), server.clone());
                if cmd.contains("state drain") {
                    self.drained.lock().unwrap().insert(key);
                    self.log
                        .lock()
                        .unwrap()
                        .push(format!("drain {server} on {}", h.name));
                } else {
                    self.drained.lock().unwrap().remove(&key);
                    self.log
                        .lock()
                        .unwrap()
                        .push(format!("ready {server} on {}", h.name));
                }
            }
            Box::pin(async { Ok(CmdOutput::default()) })
        }
        fn put<'a>(
            &'a self,
            _: &'a Host,
            _: &'a str,
            _: &'a Blob,
            _: &'a str,
            _: u32,
        ) -> BoxFuture<'a, anyhow::Result<u64>> {
            unreachable!()
        }
    }

    fn ctx(dir: &std::path::Path) -> Context {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha-vip.yaml"),
        )
        .unwrap()
        .replace("~/.ssh/id_ed25519", "key");
        std::fs::write(dir.join("key"), "").unwrap();
        let loaded = crate::inventory::load_str(&text, &dir.join("inventory.yaml"))
            .unwrap_or_else(|d| panic!("{d}"));
        Context {
            state: crate::state::StateDir::new(dir, "prod"),
            loaded,
            render: crate::render::Renderer::new(None).unwrap(),
            host_filter: vec![],
            bundle: None,
            options: Default::default(),
            facts: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_drain_is_recorded_on_the_host_first_and_cleared_once_every_balancer_took_it_back() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let lbs = Balancers::default();
        let r = Rotation::new(&ctx, &lbs);
        let cp2 = ctx.inv().host("cp2").unwrap();
        assert!(r.take_out(cp2).await.is_empty());
        let log = lbs.log.lock().unwrap().clone();
        assert_eq!(log[0], "mark cp2", "{log:?}");
        assert_eq!(log.len(), 4, "drained on each of the 3 balancers: {log:?}");
        assert_eq!(lbs.drained.lock().unwrap().len(), 3);
        assert!(r.put_back(cp2).await.is_empty());
        assert!(lbs.drained.lock().unwrap().is_empty());
        assert_eq!(lbs.log.lock().unwrap().last().unwrap(), "unmark cp2");
        assert!(lbs.marked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn reconcile_leaves_what_clusterctl_did_not_drain_and_a_backend_that_is_not_ready() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let lbs = Balancers::default();
        // A killed run left cp2 drained (with its record) on two balancers; someone drained
        // cp3 by hand on one.
        for b in ["cp1", "cp3"] {
            lbs.drained.lock().unwrap().insert((b.into(), "cp2".into()));
        }
        lbs.marked.lock().unwrap().insert("cp2".into());
        lbs.drained
            .lock()
            .unwrap()
            .insert(("cp1".into(), "cp3".into()));
        let mut r = Rotation::new(&ctx, &lbs);
        r.ready_within = std::time::Duration::ZERO;
        let views = r.views().await;
        assert_eq!(views.len(), 3);
        let out: Vec<(String, String)> = views
            .iter()
            .flat_map(|(b, v)| {
                v.as_ref()
                    .unwrap()
                    .iter()
                    .filter(|s| s.out_of_rotation())
                    .map(move |s| (b.clone(), s.server.clone()))
            })
            .collect();
        assert_eq!(out.len(), 3, "{out:?}");
        let lines: BTreeMap<String, String> = r.reconcile().await.into_iter().collect();
        assert!(lines["cp3"].contains("not by clusterctl"), "{lines:?}");
        // No apiserver answers here: cp2 stays out until its restart and gate.
        assert!(lines["cp2"].contains("not ready"), "{lines:?}");
        assert_eq!(lbs.drained.lock().unwrap().len(), 3, "nothing was put back");
        assert!(lbs.marked.lock().unwrap().contains("cp2"));
    }

    #[test]
    fn a_drained_backend_with_its_check_paused_is_out_of_rotation() {
        // haproxy 2.6's answer after TAKE_OUT on h1 (h2 untouched, h3 in maintenance).
        let out = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 kube-apiserver 1 h1 10.77.0.11 2 8 1 1 0 15 3 3 2 0 0 0 - 6443 - 0 0 - - 0\n\
3 kube-apiserver 2 h2 10.77.0.12 2 0 1 1 2 15 3 3 6 0 0 0 - 6443 - 0 0 - - 0\n\
3 kube-apiserver 3 h3 10.77.0.13 0 1 1 1 2 15 3 3 6 0 0 0 - 6443 - 0 0 - - 0\n\n";
        let v = parse_servers_state(out).unwrap();
        assert_eq!(v.len(), 3);
        assert!(v[0].drained && !v[0].health_check && v[0].out_of_rotation());
        assert_eq!(v[0].state, "UP");
        assert!(!v[1].out_of_rotation(), "{:?}", v[1]);
        assert!(v[2].maintenance && v[2].out_of_rotation());
        assert_eq!(v[2].state, "DOWN");
        assert_eq!(parse_servers_state("Can't find backend.\n"), None);
        assert_eq!(parse_servers_state(NO_SOCKET), None);
    }

    #[test]
    fn runtime_api_command_quotes_its_argument() {
        let c = runtime_api_command("set server kube-apiserver/h1 state drain").to_string();
        assert!(
            c.contains("'set server kube-apiserver/h1 state drain'"),
            "{c}"
        );
        assert!(c.contains(ADMIN_SOCKET));
    }
}
