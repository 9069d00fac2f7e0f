//! SSH engine: one session per host, exec, upload, fan-out with a concurrency limit.
//!
//! `Target::from_inventory` resolves how to reach each host; `Pool::connect` opens one session per
//! host (bastions once, hosts behind them through direct-tcpip channels), checking host keys
//! against known_hosts (strict, or `accept-new` pinning into the cluster's own file). Every
//! failure is a `HostError` naming the host, the step, the far stderr and a fix.

// `HostError` is a plain struct with readable fields (host, step, stderr, fix); failures are
// rare next to the network round trips, so its size in `Result` does not matter.
#![allow(clippy::result_large_err)]

mod error;
pub mod known_hosts;
mod pool;
mod progress;
mod session;
pub mod shell;
mod target;

pub use error::{ErrorKind, HostError, HostResult};
pub use pool::{ConnectOpts, ExecOpts, ExecOutput, Pool, UploadItem, UploadOutcome, UploadSource};
pub use progress::{Progress, ProgressMode, run_logs_dir};
pub use session::load_key;
pub use target::Target;
