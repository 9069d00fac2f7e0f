//! Diagnostics for the person running clusterctl, on stderr, through `tracing`.
//!
//! `-v` shows what clusterctl decides (info), `-vv` what it does on the hosts (debug: each
//! command run, bytes sent, gate polls), `-vvv` everything, including the SSH (russh), TLS
//! (rustls) and HTTP (reqwest, hyper) libraries, whose `log` records are bridged into tracing.
//! `CLUSTERCTL_LOG` (an `EnvFilter` directive such as `clusterctl::ssh=trace`) overrides the
//! level chosen by `-v`. Without `-v`, only warnings of clusterctl itself are shown, so the
//! normal output of every command is unchanged.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::time::UtcTime;

/// The environment variable that overrides `-v` with a full filter.
pub const FILTER_ENV: &str = "CLUSTERCTL_LOG";

/// The filter directive that `-v` repeated `verbose` times stands for.
pub fn directive(verbose: u8) -> &'static str {
    match verbose {
        0 => "clusterctl=warn",
        1 => "clusterctl=info",
        2 => "clusterctl=debug",
        // The libraries too: what the SSH handshake, TLS and HTTP clients do.
        _ => "trace",
    }
}

/// Installs the stderr subscriber once for the process; a second call (tests) is ignored.
pub fn init(verbose: u8) {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s).unwrap_or_else(|e| {
            eprintln!("warning: {FILTER_ENV}={s:?} is not a filter ({e}); using -v");
            EnvFilter::new(directive(verbose))
        }),
        _ => EnvFilter::new(directive(verbose)),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // RFC 3339 with the date: a log line must say when, even across midnight or days later.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(UtcTime::rfc_3339())
        // Through the console: above the live per-host lines on a terminal, never through them.
        .with_writer(crate::console::lines)
        .with_ansi(ansi)
        .with_target(true)
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_v_widens_the_filter() {
        for v in 0..5u8 {
            tracing_subscriber::EnvFilter::try_new(super::directive(v)).unwrap();
        }
        assert_eq!(super::directive(3), "trace");
        assert!(super::directive(0).contains("warn"));
    }
}
