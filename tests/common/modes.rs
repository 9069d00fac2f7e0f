//! The modes files have on lab hosts while clusterctl writes them: `tests/lab/tools/modewatch.c`
//! (inotify; built static here, copied into each host) reports every file and directory the
//! moment it appears under the watched roots, temp files included.
//!
//! Why it catches the race it is for: an upload that created its temp file under the host's
//! umask (0644) and chmod'ed it after writing and checking it left it 0644 for the time of its
//! data, a `sha256sum` and a `stat` (milliseconds: three processes), while inotify wakes the
//! watcher within microseconds of the create. Measured on this machine with the old sequence
//! (`umask 022; cat >t; sha256sum t; stat t; chmod 600 t; mv t key`): 50 uploads of a 1.7 KB
//! key, 50 temp files seen at 0644; with clusterctl's script (umask 077 before the create), 50
//! seen, none with group or other bits. [`ModeWatch::control`] repeats that old sequence on a
//! host during each test, so the test also proves the watcher saw such a window there.

use super::*;

/// Where the watched roots' secrets live, as clusterctl writes them.
pub const ROOTS: &str = "/etc/kubernetes /var/lib/kubelet/pki /etc/keepalived";

const BIN: &str = "/usr/local/sbin/clusterctl-test-modewatch";
const CONTROL: &str = "/etc/kubernetes/.modewatch-control.admin.conf";

/// One file seen: host, mode, path.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub mode: u32,
    pub path: String,
}

pub struct ModeWatch<'a> {
    lab: &'a Lab,
    hosts: Vec<String>,
}

impl<'a> ModeWatch<'a> {
    /// Builds the watcher, copies it into each host's root and starts it there on [`ROOTS`].
    pub fn start(lab: &'a Lab, hosts: &[&str]) -> ModeWatch<'a> {
        let bin = lab.dir.join("modewatch");
        let o = run(Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(root().join("tests/lab/tools/modewatch.c")));
        assert!(o.status.success(), "building modewatch: {}", text(&o));
        for h in hosts {
            let dest = lab
                .dir
                .join("hosts")
                .join(h)
                .join("root")
                .join(BIN.trim_start_matches('/'));
            std::fs::copy(&bin, &dest).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
            lab.exec_ok(
                h,
                &format!(
                    "chmod 0755 {BIN}; {BIN} {ROOTS} >/root/modewatch.log 2>&1 </dev/null & \
                     echo $! >/root/modewatch.pid"
                ),
            );
        }
        ModeWatch {
            lab,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    /// The old upload, by hand, on `host` (whose /etc/kubernetes exists by now): a kubeconfig-
    /// sized file created under umask 022, checked, then chmod'ed 0600 and removed. The
    /// watcher must see it at 0644 ([`assert_uploads_private`] checks).
    pub fn control(&self, host: &str) {
        self.lab.exec_ok(
            host,
            &format!(
                "umask 022; head -c 5500 /dev/urandom >{CONTROL}; sha256sum {CONTROL} >/dev/null; \
                 stat -c %s {CONTROL} >/dev/null; chmod 600 {CONTROL}; rm -f {CONTROL}"
            ),
        );
    }

    /// Stops the watchers (by their pid), removes them and returns what they saw.
    pub fn finish(self) -> Vec<Seen> {
        let mut seen = Vec::new();
        for h in &self.hosts {
            let log = self.lab.exec_ok(
                h,
                &format!(
                    "sleep 0.2; kill -TERM \"$(cat /root/modewatch.pid)\"; cat /root/modewatch.log; \
                     rm -f /root/modewatch.pid /root/modewatch.log {BIN}"
                ),
            );
            for line in log.lines() {
                let (mode, path) = line
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("{h}: {line}"));
                seen.push(Seen {
                    host: h.clone(),
                    mode: u32::from_str_radix(mode, 8).unwrap_or_else(|_| panic!("{h}: {line}")),
                    path: path.to_string(),
                });
            }
        }
        seen
    }
}

/// The file `path` will become: a clusterctl temp file (`.clusterctl-upload.<pid>.<name>`)
/// names its destination's base name.
fn target(path: &str) -> (&str, &str) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let name = name
        .strip_prefix(".clusterctl-upload.")
        .and_then(|r| r.split_once('.'))
        .map_or(name, |(_, n)| n);
    (dir, name)
}

/// A private key, a kubeconfig in /etc/kubernetes, the encryption config or keepalived's
/// VRRP password (temp files included).
pub fn is_secret(path: &str) -> bool {
    let (dir, name) = target(path);
    name.ends_with(".key")
        || name == "encryption-config.yaml"
        || (dir == "/etc/keepalived" && name == "auth.conf")
        || (dir == "/etc/kubernetes" && name.ends_with(".conf"))
}

/// No secret (nor its temp file) was ever seen with a group or other bit; the watcher saw at
/// least `min_temp` secret temp files (it watched the uploads, it did not miss them); and it
/// saw the control upload on `control_host` at 0644 (it would have caught the old upload).
pub fn assert_uploads_private(seen: &[Seen], min_temp: usize, control_host: &str) {
    let loose: Vec<&Seen> = seen
        .iter()
        .filter(|s| is_secret(&s.path) && s.mode & 0o077 != 0 && s.path != CONTROL)
        .collect();
    assert!(
        loose.is_empty(),
        "secrets seen with group/other bits: {loose:?}"
    );
    let temps = seen
        .iter()
        .filter(|s| is_secret(&s.path) && s.path.contains("/.clusterctl-upload."))
        .count();
    let secrets = seen
        .iter()
        .filter(|s| is_secret(&s.path) && s.path != CONTROL)
        .count();
    eprintln!(
        "modewatch: {} files seen, {secrets} secrets ({temps} of them temp files), none looser than 0600",
        seen.len()
    );
    assert!(
        temps >= min_temp,
        "only {temps} secret temp files seen: the watcher missed the uploads"
    );
    assert!(
        seen.iter()
            .any(|s| s.host == control_host && s.path == CONTROL && s.mode == 0o644),
        "the control upload (umask 022, chmod later) was not seen at 0644: {:?}",
        seen.iter()
            .filter(|s| s.path == CONTROL)
            .collect::<Vec<_>>()
    );
}
