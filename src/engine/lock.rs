//! One run at a time per cluster.
//!
//! - On the operator's machine, `clusters/<name>/run.lock`: an exclusive `flock` held for the
//!   whole run, with the owner (pid, machine, user, start time, command) written inside. The
//!   kernel frees it when the process ends, however it ends: a killed run never leaves it
//!   behind.
//! - On every host a run changes, `/var/lib/clusterctl/run.lock` with the same owner: a run
//!   from another machine (another clone of the state, a colleague's laptop) sees it and is
//!   refused. A marker left by a killed run from *this* machine is stale by construction (this
//!   run holds the operator lock, so its writer is gone) and is taken over; one left by another
//!   machine that died is broken with `--break-lock`.
//!
//! Read-only commands (plan, status, check-expiration) take neither; `--dry-run` takes only
//! the operator lock.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::executor::Executor;
use super::{Script, Shell};
use crate::diag::UserError;
use crate::inventory::Host;

/// Where a host records the run that changes it.
pub const HOST_MARKER: &str = "/var/lib/clusterctl/run.lock";

/// Who runs: written into both locks and named when another run is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    /// Unique per run: machine id, pid and start time.
    pub id: String,
    pub command: String,
    pub pid: u32,
    /// The operator machine's host name (for people) and machine id (to recognise it).
    pub machine: String,
    pub machine_id: String,
    pub user: String,
    /// RFC 3339, and as seconds since the epoch for the age.
    pub started: String,
    pub started_unix: i64,
}

impl Owner {
    /// This process, running `command`.
    pub fn current(command: &str) -> Owner {
        let now = time::OffsetDateTime::now_utc();
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| machine.clone());
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .or_else(user_of_this_process)
            .unwrap_or_else(|| "unknown".into());
        let pid = std::process::id();
        Owner {
            id: format!("{machine_id}-{pid}-{}", now.unix_timestamp_nanos()),
            command: command.into(),
            pid,
            machine,
            machine_id,
            user,
            started: now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            started_unix: now.unix_timestamp(),
        }
    }

    /// "`clusterctl init` (pid 4242, root on ops1), started 2026-12-04T22:01:07Z, 3m12s ago".
    pub fn describe(&self) -> String {
        let age = (time::OffsetDateTime::now_utc().unix_timestamp() - self.started_unix).max(0);
        format!(
            "`clusterctl {}` (pid {}, {} on {}), started {}, {} ago",
            self.command,
            self.pid,
            self.user,
            self.machine,
            self.started,
            humantime::format_duration(std::time::Duration::from_secs(age as u64))
        )
    }
}

/// The name of this process's user from /etc/passwd (cron and CI set no USER).
fn user_of_this_process() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2) == Some(&uid.as_str())).then(|| f[0].to_string())
    })
}

/// The operator machine's lock on a cluster, held until dropped.
#[derive(Debug)]
pub struct OperatorLock {
    file: File,
    pub path: PathBuf,
    pub owner: Owner,
}

impl OperatorLock {
    /// Takes `<state>/run.lock` for `command`, or refuses with who holds it.
    pub fn acquire(state_root: &Path, command: &str) -> anyhow::Result<OperatorLock> {
        std::fs::create_dir_all(state_root)
            .with_context(|| format!("creating {}", state_root.display()))?;
        let path = state_root.join("run.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let who = serde_json::from_str::<Owner>(&text)
                    .map(|o| o.describe())
                    .unwrap_or_else(|_| "another clusterctl process".into());
                return Err(UserError::failed(format!(
                    "{} is held by {who}: one run at a time changes a cluster. Wait for it to finish (the lock is freed when that process ends, even when it is killed)",
                    path.display()
                ))
                .into());
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let owner = Owner::current(command);
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", serde_json::to_string(&owner)?)?;
        file.sync_all()?;
        Ok(OperatorLock { file, path, owner })
    }
}

impl Drop for OperatorLock {
    fn drop(&mut self) {
        // The flock goes with the file; the emptied file says nobody holds it.
        let _ = self.file.set_len(0);
    }
}

/// How a host's marker was found when taking it (for the run's report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// No marker, or this run's own.
    Free,
    /// Left by a run of this machine that was killed: taken over.
    Stale(Owner),
    /// Another machine's, taken with `--break-lock`.
    Broken(Owner),
    /// A marker that could not be read: taken over.
    Unreadable(String),
}

/// What the exclusive take prints when the host had no marker.
const TAKEN: &str = "clusterctl: run marker taken";

/// A command that writes `owner` as the host's run marker, root only. `exclusive`: only if
/// there is none (`set -C`: the shell creates it with O_EXCL, so of two runs that find the
/// host free at the same instant exactly one gets it), printing [`TAKEN`], else printing the
/// marker that is there; otherwise replaced atomically.
fn write_marker(owner: &Owner, exclusive: bool) -> anyhow::Result<Shell> {
    // Arguments: the marker's path, the owner as JSON, what to print when taken.
    const EXCLUSIVE: &str = r#"umask 077 && install -d -m 0700 "$(dirname "$1")" &&
if (set -C && printf '%s\n' "$2" >"$1") 2>/dev/null; then echo "$3"; else cat "$1"; fi"#;
    const REPLACE: &str = r#"umask 077 && install -d -m 0700 "$(dirname "$1")" &&
printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1""#;
    let json = serde_json::to_string(owner)?;
    Ok(if exclusive {
        Script::new(EXCLUSIVE)
            .arg(HOST_MARKER)
            .arg(json)
            .arg(TAKEN)
            .into()
    } else {
        Script::new(REPLACE).arg(HOST_MARKER).arg(json).into()
    })
}

/// Whether a process with this pid runs on this machine.
pub(super) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes the run marker on `host` for `owner`, in one round trip when the host has none:
/// refused (an error naming the owner and its age, and `--break-lock`) when another run holds
/// it. A marker of this machine whose process is gone is stale (killed runs leave one) and is
/// taken over.
pub async fn take_host(
    exec: &dyn Executor,
    host: &Host,
    owner: &Owner,
    break_lock: bool,
) -> anyhow::Result<Taken> {
    let o = exec
        .change(host, &write_marker(owner, true)?)
        .await
        .with_context(|| format!("{}: taking {HOST_MARKER}", host.name))?;
    if o.status != 0 {
        anyhow::bail!(
            "{}: taking {HOST_MARKER}: exit {}: {}",
            host.name,
            o.status,
            o.stderr.trim()
        );
    }
    let text = o.stdout.trim();
    if text == TAKEN {
        return Ok(Taken::Free);
    }
    let taken = match serde_json::from_str::<Owner>(text) {
        Ok(o) if o.id == owner.id => return Ok(Taken::Free),
        Ok(o) if o.machine_id == owner.machine_id && !alive(o.pid) => Taken::Stale(o),
        Ok(o) if break_lock => Taken::Broken(o),
        Ok(o) => {
            return Err(UserError::failed(format!(
                "{}: {HOST_MARKER} says another run changes this cluster: {}. Wait for it to finish; if that run is gone (its machine died or lost the network), run again with --break-lock",
                host.name,
                o.describe()
            ))
            .into());
        }
        Err(_) => Taken::Unreadable(text.chars().take(80).collect()),
    };
    let o = exec.change(host, &write_marker(owner, false)?).await?;
    if o.status != 0 {
        anyhow::bail!(
            "{}: writing {HOST_MARKER}: exit {}: {}",
            host.name,
            o.status,
            o.stderr.trim()
        );
    }
    Ok(taken)
}

/// Removes the marker on `host` if it is still `owner`'s.
pub async fn release_host(exec: &dyn Executor, host: &Host, owner: &Owner) {
    let cmd = Script::new(r#"if grep -qF -e "$2" "$1" 2>/dev/null; then rm -f "$1"; fi"#)
        .arg(HOST_MARKER)
        .arg(format!("\"id\":\"{}\"", owner.id));
    let _ = exec.change(host, &cmd.into()).await;
}

/// Takes the markers on every host of `hosts` in parallel. When one is refused, the markers
/// already taken are released again and the refusal is returned. Returns lines for the report
/// (markers taken over or broken).
pub async fn take_hosts(
    exec: &dyn Executor,
    hosts: &[&Host],
    owner: &Owner,
    break_lock: bool,
) -> anyhow::Result<Vec<String>> {
    let results = futures::future::join_all(
        hosts
            .iter()
            .map(|h| async move { (*h, take_host(exec, h, owner, break_lock).await) }),
    )
    .await;
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut taken = Vec::new();
    for (h, r) in results {
        match r {
            Ok(t) => {
                taken.push(h);
                match t {
                    Taken::Free => {}
                    Taken::Stale(o) => lines.push(format!(
                        "{}: took over the run marker of an interrupted run from this machine: {}",
                        h.name,
                        o.describe()
                    )),
                    Taken::Broken(o) => lines.push(format!(
                        "{}: --break-lock: broke the run marker of {}",
                        h.name,
                        o.describe()
                    )),
                    Taken::Unreadable(t) => lines.push(format!(
                        "{}: replaced an unreadable run marker ({t})",
                        h.name
                    )),
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        release_hosts(exec, &taken, owner).await;
        if errors.len() == 1 {
            return Err(errors.remove(0));
        }
        let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        return Err(UserError::failed(all.join("\n")).into());
    }
    Ok(lines)
}

/// Releases the markers of `owner` on `hosts`, in parallel.
pub async fn release_hosts(exec: &dyn Executor, hosts: &[&Host], owner: &Owner) {
    futures::future::join_all(hosts.iter().map(|h| release_host(exec, h, owner))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::executor::{Blob, CmdOutput};
    use futures::future::BoxFuture;

    /// Runs the real commands with bash on this machine, /var/lib/clusterctl moved into a
    /// temporary directory: the marker's shell is tested as the hosts run it.
    struct LocalShell(tempfile::TempDir);

    impl LocalShell {
        fn new() -> LocalShell {
            LocalShell(tempfile::tempdir().unwrap())
        }
        fn run(&self, cmd: &str) -> BoxFuture<'_, anyhow::Result<CmdOutput>> {
            let cmd = cmd.replace(
                "/var/lib/clusterctl",
                &self.0.path().join("lib").display().to_string(),
            );
            Box::pin(async move {
                let o = std::process::Command::new("bash")
                    .args(["-c", &cmd])
                    .output()?;
                Ok(CmdOutput {
                    status: o.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&o.stdout).into(),
                    stderr: String::from_utf8_lossy(&o.stderr).into(),
                })
            })
        }
        fn marker(&self) -> Option<String> {
            std::fs::read_to_string(self.0.path().join("lib/run.lock")).ok()
        }
    }

    impl Executor for LocalShell {
        fn query<'a>(
            &'a self,
            _: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            self.run(cmd)
        }
        fn change<'a>(
            &'a self,
            _: &'a Host,
            cmd: &'a crate::ssh::shell::Shell,
        ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
            let cmd = cmd.as_str();
            self.run(cmd)
        }
        fn put<'a>(
            &'a self,
            _: &'a Host,
            _: &'a str,
            _: &'a Blob,
            _: &'a str,
            _: u32,
        ) -> BoxFuture<'a, anyhow::Result<u64>> {
            unreachable!("markers are written by shell commands")
        }
    }

    fn host() -> Host {
        serde_saphyr::from_str("{name: h1, address: 10.77.0.11, roles: [etcd]}").unwrap()
    }

    fn owner(machine: &str, pid: u32) -> Owner {
        Owner {
            id: format!("{machine}-{pid}-1"),
            command: "init".into(),
            pid,
            machine: machine.into(),
            machine_id: format!("id-{machine}"),
            user: "ops".into(),
            started: "2026-12-04T22:00:00Z".into(),
            started_unix: time::OffsetDateTime::now_utc().unix_timestamp() - 125,
        }
    }

    #[test]
    fn a_second_run_on_the_operator_machine_is_refused_until_the_first_ends() {
        let d = tempfile::tempdir().unwrap();
        let first = OperatorLock::acquire(d.path(), "init").unwrap();
        let held = std::fs::read_to_string(d.path().join("run.lock")).unwrap();
        assert!(
            held.contains(&format!("\"pid\":{}", std::process::id())),
            "{held}"
        );
        let e = OperatorLock::acquire(d.path(), "renew-certs").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("`clusterctl init`"),
            "names the command: {msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("ago"), "says its age: {msg}");
        assert_eq!(
            e.downcast_ref::<UserError>().map(|u| u.code),
            Some(crate::diag::EXIT_FAILED)
        );
        drop(first);
        // (Other tests of this process spawn shells: a child between fork and exec briefly
        // shares the lock's open file, so allow it a moment.)
        let mut again = OperatorLock::acquire(d.path(), "renew-certs");
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            again = OperatorLock::acquire(d.path(), "renew-certs");
        }
        again.expect("freed with its holder");
    }

    #[tokio::test]
    async fn another_machines_run_is_refused_with_its_owner_and_age_until_broken() {
        let sh = LocalShell::new();
        let h = host();
        let a = owner("ops-a", std::process::id());
        assert_eq!(take_host(&sh, &h, &a, false).await.unwrap(), Taken::Free);
        assert!(sh.marker().unwrap().contains(&a.id));
        // Re-entrant for the same run (join takes it once per etcd member).
        assert_eq!(take_host(&sh, &h, &a, false).await.unwrap(), Taken::Free);

        let b = owner("ops-b", 1);
        let e = take_host(&sh, &h, &b, false).await.unwrap_err();
        let msg = format!("{e:#}");
        for want in [
            "h1",
            "`clusterctl init`",
            "ops on ops-a",
            "2m 5s ago",
            "--break-lock",
        ] {
            assert!(msg.contains(want), "{want:?} in {msg}");
        }
        assert!(
            sh.marker().unwrap().contains(&a.id),
            "a refusal changes nothing"
        );
        // A release by someone else leaves it.
        release_host(&sh, &h, &b).await;
        assert!(sh.marker().is_some());

        let taken = take_host(&sh, &h, &b, true).await.unwrap();
        assert!(matches!(&taken, Taken::Broken(o) if *o == a));
        assert!(sh.marker().unwrap().contains(&b.id));
        release_host(&sh, &h, &b).await;
        assert!(sh.marker().is_none(), "released by its owner");
    }

    #[tokio::test]
    async fn a_marker_left_by_a_killed_run_of_this_machine_is_taken_over() {
        let sh = LocalShell::new();
        let h = host();
        // pid 4194304 is above Linux's pid_max: that process is gone.
        let killed = owner("ops-a", 4_194_304);
        assert_eq!(
            take_host(&sh, &h, &killed, false).await.unwrap(),
            Taken::Free
        );
        let mut next = owner("ops-a", std::process::id());
        next.id = "ops-a-next".into();
        let taken = take_host(&sh, &h, &next, false).await.unwrap();
        assert!(
            matches!(&taken, Taken::Stale(o) if *o == killed),
            "{taken:?}"
        );
        // But a live process of this machine (a run not holding the operator lock) is not
        // overrun.
        let mut third = owner("ops-a", 4_194_305);
        third.id = "third".into();
        assert!(take_host(&sh, &h, &third, false).await.is_err());
    }

    #[tokio::test]
    async fn one_refusing_host_releases_the_markers_taken_on_the_others() {
        let (sh1, sh2) = (LocalShell::new(), LocalShell::new());
        let (h1, mut h2) = (host(), host());
        h2.name = "h2".parse().unwrap();
        let other = owner("ops-b", 1);
        take_host(&sh2, &h2, &other, false).await.unwrap();
        // One executor per host: route by name.
        struct Two<'a>(&'a LocalShell, &'a LocalShell);
        impl Executor for Two<'_> {
            fn query<'a>(
                &'a self,
                h: &'a Host,
                c: &'a crate::ssh::shell::Shell,
            ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
                let c = c.as_str();
                if h.name == "h1" {
                    self.0.run(c)
                } else {
                    self.1.run(c)
                }
            }
            fn change<'a>(
                &'a self,
                h: &'a Host,
                c: &'a crate::ssh::shell::Shell,
            ) -> BoxFuture<'a, anyhow::Result<CmdOutput>> {
                self.query(h, c)
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
        let me = owner("ops-a", std::process::id());
        let e = take_hosts(&Two(&sh1, &sh2), &[&h1, &h2], &me, false)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("h2:"), "{e:#}");
        assert!(sh1.marker().is_none(), "h1's marker was given back");
        assert!(sh2.marker().unwrap().contains(&other.id));
    }
}
