//! clusterctl: install and run HA Kubernetes clusters on plain Linux hosts over SSH.
//!
//! Layers, each importing only the ones below it:
//! - `commands`: argument parsing, reporting, one file per verb;
//! - `phases`: what each concern (etcd, balancers, control plane, ...) wants on a host, and the
//!   playbooks that order them per command;
//! - `engine`: the one runner that converges hosts to a playbook (journal, lock, crash safety);
//! - foundation: `inventory`, `pki`, `ssh`, `bundle`, `render`, `kube`, and small helpers.

// Every `print!`/`println!` in this crate writes through `stdout::write`, which ends the
// process quietly when the reader closed the pipe (std's macros panic there). Defined before
// the modules, these shadow the prelude's macros in all of them.
macro_rules! print {
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*)) };
}
macro_rules! println {
    () => { $crate::stdout::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*))) };
}

// Every `eprintln!`/`eprint!` goes through `console`: above the live per-host lines on a
// terminal (so nothing tears them), plain lines everywhere else.
macro_rules! eprintln {
    () => { $crate::console::line("") };
    ($($arg:tt)*) => { $crate::console::line(&format!($($arg)*)) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::console::prompt(&format!($($arg)*)) };
}

pub mod bundle;
pub mod commands;
pub mod console;
pub mod diag;
pub mod duration;
pub mod engine;
pub mod hashing;
pub mod inventory;
pub mod kube;
pub mod logging;
pub mod output;
pub mod phases;
pub mod pki;
pub mod render;
pub mod ssh;
pub mod state;
pub mod stdout;
pub mod tls;
pub mod version;
