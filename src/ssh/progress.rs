//! Progress and per-host logs: live lines per host (drawn by `crate::console`) on a terminal,
//! plain timestamped lines otherwise (CI, env `CI`, pipes: crate notes #8), and the full
//! per-host log of this run in `logs/<run>/<host>.log` under the cluster's state directory
//! (one directory per run, so a re-run never mixes with the run it repairs), with
//! `logs/<host>.log` a link to the newest run's file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars when the console draws a live view (a terminal, `CI` unset, no `--no-progress`),
    /// plain lines otherwise.
    #[default]
    Auto,
    /// The console's live lines (nothing when the console is not live).
    Bars,
    Plain,
    /// Only the log files.
    Quiet,
}

impl ProgressMode {
    /// The live lines on a terminal, else nothing: for callers whose plain output is their
    /// own (the engine's timestamped phase lines, `status`'s table).
    pub fn live_or_quiet() -> ProgressMode {
        if crate::console::is_live() {
            ProgressMode::Bars
        } else {
            ProgressMode::Quiet
        }
    }

    pub fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if crate::console::is_live() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        }
    }
}

pub struct Progress {
    mode: ProgressMode,
    hosts: Vec<String>,
    logs_dir: Option<PathBuf>,
    files: Mutex<HashMap<String, File>>,
}

/// RFC 3339 in UTC with milliseconds: log files are read days later, so the date is in every line.
fn log_timestamp() -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

/// This process's run name: its start time (UTC) and pid, the same for every pool it opens.
pub fn run_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let t = time::OffsetDateTime::now_utc()
            .format(&f)
            .unwrap_or_default();
        format!("{t}-{}", std::process::id())
    })
}

/// Where this run's per-host logs go under a cluster's `logs/` directory.
pub fn run_logs_dir(logs: &std::path::Path) -> PathBuf {
    logs.join(run_name())
}

/// Points `logs/<host>.log` at this run's file (replaced atomically; best effort: the link is a
/// convenience, the run's own file is what the summary names).
fn link_latest(logs: &std::path::Path, host: &str) {
    let link = logs.join(format!("{host}.log"));
    let tmp = logs.join(format!(".{host}.log.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    if std::os::unix::fs::symlink(format!("{}/{host}.log", run_name()), &tmp).is_ok() {
        // A regular file left by an older clusterctl is replaced too.
        let _ = std::fs::rename(&tmp, &link);
    }
}

fn timestamp() -> String {
    let f = time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

impl Progress {
    pub fn new(hosts: &[String], mode: ProgressMode, logs_dir: Option<PathBuf>) -> Progress {
        let mode = mode.resolve();
        if let Some(d) = &logs_dir {
            let _ = std::fs::create_dir_all(d);
        }
        Progress {
            mode,
            hosts: hosts.to_vec(),
            logs_dir,
            files: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// Appends to the host's log file only.
    pub fn log(&self, host: &str, text: &str) {
        let Some(dir) = &self.logs_dir else { return };
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if !files.contains_key(host) {
            let run_dir = run_logs_dir(dir);
            let _ = std::fs::create_dir_all(&run_dir);
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(run_dir.join(format!("{host}.log")))
            {
                Ok(f) => {
                    link_latest(dir, host);
                    files.insert(host.to_string(), f);
                }
                Err(_) => return,
            }
        }
        if let Some(f) = files.get_mut(host) {
            let mut s = String::with_capacity(text.len() + 16);
            let stamp = log_timestamp();
            for line in text.lines() {
                s.push_str(&stamp);
                s.push(' ');
                s.push_str(line);
                s.push('\n');
            }
            let _ = f.write_all(s.as_bytes());
        }
    }

    /// Shows what a host is doing now (its bar, or a plain line), and logs it.
    pub fn host(&self, host: &str, msg: &str) {
        self.log(host, msg);
        match self.mode {
            ProgressMode::Bars => crate::console::host_step(host, msg),
            ProgressMode::Plain => eprintln!("{} {host}: {msg}", timestamp()),
            _ => {}
        }
    }

    /// A new step on `n` hosts: resets the total.
    pub fn step(&self, step: &str, n: usize) {
        match self.mode {
            ProgressMode::Bars => crate::console::begin_phase(step, &self.hosts),
            ProgressMode::Plain => eprintln!("{} == {step} on {n} host(s)", timestamp()),
            _ => {}
        }
    }

    /// One host finished the current step.
    pub fn done(&self, host: &str, msg: &str) {
        self.log(host, msg);
        match self.mode {
            ProgressMode::Bars => crate::console::host_done(host, msg),
            ProgressMode::Plain => eprintln!("{} {host}: {msg}", timestamp()),
            _ => {}
        }
    }

    /// Clears the live lines (call at the end of a run).
    pub fn finish(&self) {
        if self.mode == ProgressMode::Bars {
            crate::console::end_phase();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_go_to_one_file_per_host_with_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let p = Progress::new(
            &["a".into(), "b".into()],
            ProgressMode::Quiet,
            Some(dir.path().join("logs")),
        );
        p.host("a", "step one");
        p.log("a", "out1\nout2");
        p.log("b", "other");
        let run = run_logs_dir(&dir.path().join("logs"));
        let a = std::fs::read_to_string(run.join("a.log")).unwrap();
        assert_eq!(a.lines().count(), 3, "{a}");
        for line in a.lines() {
            let stamp = line.split(' ').next().unwrap();
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{stamp:?} is not RFC 3339: {e}"));
        }
        assert!(a.contains(" out2"));
        assert!(
            std::fs::read_to_string(run.join("b.log"))
                .unwrap()
                .contains("other")
        );
        // The stable name follows the newest run.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("logs/a.log")).unwrap(),
            a
        );
    }

    #[test]
    fn ci_forces_plain_lines() {
        // Under `cargo test` stdout is captured (not a terminal): Auto is plain either way.
        assert_eq!(ProgressMode::Auto.resolve(), ProgressMode::Plain);
        assert_eq!(ProgressMode::Quiet.resolve(), ProgressMode::Quiet);
    }
}
