//! Standard output for the whole crate. `print!`/`println!` (redefined in lib.rs) come here, so
//! that a reader that stops early (`clusterctl plan --show-files | head`) ends the process
//! quietly instead of panicking with exit 101, as std's macros do on a closed pipe. Rust ignores
//! SIGPIPE so that SSH and HTTPS sockets report EPIPE as an error; restoring the default action
//! instead would let a peer closing a socket kill a run mid-way, so the pipe is handled here.

use std::io::Write as _;

/// Writes to stdout. A closed pipe ends the process with exit 0 (the reader asked for no more);
/// any other write error (a full disk behind a redirect) with exit 1 and the reason.
pub fn write(args: std::fmt::Arguments<'_>) {
    // On a terminal stdout and stderr share the screen: the live lines step aside.
    let r = crate::console::suspend(|| {
        let mut out = std::io::stdout().lock();
        out.write_fmt(args).and_then(|()| out.flush())
    });
    if let Err(e) = r {
        gone(e)
    }
}

/// Writes bytes to stdout, with the same handling of a closed pipe as [`write`].
pub fn write_bytes(bytes: &[u8]) {
    let r = crate::console::suspend(|| {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes).and_then(|()| out.flush())
    });
    if let Err(e) = r {
        gone(e)
    }
}

fn gone(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    crate::console::line(&format!("clusterctl: writing to standard output: {e}"));
    std::process::exit(crate::diag::EXIT_FAILED);
}
