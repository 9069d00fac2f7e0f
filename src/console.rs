//! Standard error for the whole crate, and the live view of a run drawn on it.
//!
//! On a terminal (stderr is a tty, `CI` is unset, no `--no-progress`), a run shows one live
//! line per host under the current phase (host, elapsed, step, bytes sent), drawn by indicatif.
//! Every other line for the person running clusterctl (`eprintln!` everywhere in the crate, the
//! tracing log, stdout's results) goes through this module, so it is printed ABOVE the live
//! lines instead of tearing them. Off a terminal nothing is drawn: each line is written as is,
//! and no control character ever reaches a pipe or a file (indicatif is never created there).
//!
//! This is a foundation module (like `stdout`): the SSH pool reports steps and bytes here, the
//! engine's progress opens and closes phases, and neither needs to know whether a view is live.

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the spinners and elapsed times move when nothing else happens.
const TICK: Duration = Duration::from_millis(200);

struct Live {
    multi: MultiProgress,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    header: Option<ProgressBar>,
    hosts: HashMap<String, HostLine>,
}

struct HostLine {
    bar: ProgressBar,
    /// What the engine does on the host (`writing 3 file(s)`, `restart etcd`).
    step: String,
    /// The command or upload under way (from the SSH pool).
    detail: String,
    bytes: u64,
    done: bool,
}

impl HostLine {
    fn show(&self) {
        // One screen line: a multi-line step (a script, an error) shows its first line.
        let first = |s: &str| s.lines().next().unwrap_or_default().to_string();
        let (step, detail) = (first(&self.step), first(&self.detail));
        let mut msg = match (step.is_empty(), detail.is_empty()) {
            (_, true) => step,
            (true, false) => detail,
            (false, false) => format!("{step}: {detail}"),
        };
        if self.bytes > 0 {
            msg.push_str(&format!(" · {} sent", HumanBytes(self.bytes)));
        }
        self.bar.set_message(msg);
    }
}

static LIVE: OnceLock<Option<Live>> = OnceLock::new();

/// Whether a live view may be drawn: a terminal on stderr, `CI` unset, `TERM` not `dumb`.
pub fn wanted(no_progress: bool) -> bool {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_progress && !ci && !dumb && std::io::stderr().is_terminal()
}

/// Decides once for the process whether the live view is drawn (see [`wanted`]). Later calls
/// change nothing; without a call the view is off (library use, tests).
pub fn init(no_progress: bool) {
    let _ = LIVE.get_or_init(|| {
        wanted(no_progress).then(|| Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            view: Mutex::new(View::default()),
        })
    });
}

fn live() -> Option<&'static Live> {
    LIVE.get().and_then(Option::as_ref)
}

/// Whether live lines are being drawn (callers pick their own plain output when not).
pub fn is_live() -> bool {
    live().is_some()
}

/// One line for the person running clusterctl: above the live view, or plainly on stderr.
/// A failed write (stderr closed) is ignored: diagnostics must never end a run.
pub fn line(s: &str) {
    let plain = || {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(s.as_bytes());
        let _ = e.write_all(b"\n");
        let _ = e.flush();
    };
    match live() {
        Some(l) => l.multi.suspend(plain),
        None => plain(),
    }
}

/// Text without a newline (a prompt): the live view is cleared first, as it would garble it.
pub fn prompt(s: &str) {
    end_phase();
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(s.as_bytes());
    let _ = e.flush();
}

/// Runs `f` (a write to stdout, when both are the same terminal) with the live view out of
/// the way, and draws it again afterwards.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match live() {
        Some(l) => l.multi.suspend(f),
        None => f(),
    }
}

/// A new phase on `hosts`: the previous phase's lines go, a header and one line per host come.
pub fn begin_phase(title: &str, hosts: &[String]) {
    let Some(l) = live() else { return };
    end_phase();
    let mut v = l.view.lock().unwrap_or_else(|e| e.into_inner());
    let header = l.multi.add(
        ProgressBar::new_spinner()
            .with_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            )
            .with_message(title.to_string()),
    );
    header.enable_steady_tick(TICK);
    v.header = Some(header);
    let width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(4);
    let style = ProgressStyle::with_template(&format!(
        "  {{spinner}} {{prefix:<{width}}} {{elapsed:>4}} {{wide_msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    for h in hosts {
        let bar = l.multi.add(
            ProgressBar::new_spinner()
                .with_style(style.clone())
                .with_prefix(h.clone()),
        );
        bar.enable_steady_tick(TICK);
        let line = HostLine {
            bar,
            step: "waiting".into(),
            detail: String::new(),
            bytes: 0,
            done: false,
        };
        line.show();
        v.hosts.insert(h.clone(), line);
    }
}

/// A host's turn in the phase starts now (its elapsed time counts from here).
pub fn host_start(host: &str) {
    with_host(host, |h| {
        h.bar.reset_elapsed();
        h.step = "started".into();
        h.detail.clear();
        h.bytes = 0;
    });
}

/// What `host` does now, in the engine's words (`writing 3 file(s)`, `restart etcd`).
pub fn host_step(host: &str, step: &str) {
    with_host(host, |h| {
        h.step = step.to_string();
        h.detail.clear();
    });
}

/// The command or upload under way on `host`, shown after its step.
pub fn host_detail(host: &str, detail: &str) {
    with_host(host, |h| h.detail = detail.to_string());
}

/// `bytes` more were sent to `host`.
pub fn host_sent(host: &str, bytes: u64) {
    with_host(host, |h| h.bytes += bytes);
}

/// `host` is done with the phase: its line stops, saying `outcome`, until the phase ends.
pub fn host_done(host: &str, outcome: &str) {
    with_host(host, |h| {
        h.step = outcome.to_string();
        h.detail.clear();
        h.done = true;
    });
}

fn with_host(host: &str, f: impl FnOnce(&mut HostLine)) {
    let Some(l) = live() else { return };
    let mut v = l.view.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = v.hosts.get_mut(host) {
        if h.done {
            return;
        }
        f(h);
        h.show();
        if h.done {
            h.bar.finish();
        }
    }
}

/// Clears the live lines (end of a phase or of the run): what is printed next — the summary —
/// stays intact on the screen.
pub fn end_phase() {
    let Some(l) = live() else { return };
    let mut v = l.view.lock().unwrap_or_else(|e| e.into_inner());
    for (_, h) in v.hosts.drain() {
        h.bar.finish_and_clear();
        l.multi.remove(&h.bar);
    }
    if let Some(b) = v.header.take() {
        b.finish_and_clear();
        l.multi.remove(&b);
    }
    let _ = l.multi.clear();
}

/// A writer for the tracing log: each event is collected and written as one [`line`].
pub struct Lines(Vec<u8>);

/// For `tracing_subscriber::fmt().with_writer(console::lines)`.
pub fn lines() -> Lines {
    Lines(Vec::new())
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            line(String::from_utf8_lossy(&self.0).trim_end_matches('\n'));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nothing_is_drawn_without_a_terminal() {
        // Without init (library use, tests) there is no live view and every call is a no-op.
        assert!(!super::is_live());
        super::begin_phase("x", &["h1".into()]);
        super::host_step("h1", "step");
        super::host_sent("h1", 10);
        super::host_done("h1", "done");
        super::end_phase();
        assert!(!super::wanted(true), "--no-progress always wins");
    }
}
