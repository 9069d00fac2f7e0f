//! `HostError`: what went wrong on which host, in which step, and what to do about it.

use std::fmt;

/// The kind of a host failure (callers and tests branch on it; the message is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect, handshake or a session that died; the only kind that is retried.
    Connect,
    /// The host is not in any known_hosts file and the policy is strict.
    HostKeyUnknown,
    /// The host presented another key than the one recorded (or a revoked one).
    HostKeyChanged,
    /// No key or agent identity was accepted, or a key could not be loaded.
    Auth,
    /// `sudo -n` wants a password.
    SudoPassword,
    /// A command ran longer than its timeout.
    Timeout,
    /// A command ran and exited non-zero.
    Command,
    /// An upload failed (far side hash mismatch, write error).
    Upload,
    /// A local problem (reading a file to upload, bad argument).
    Local,
}

/// A failure on one host. Display: `host NAME (ADDR:PORT): STEP: MESSAGE`, then the far side's
/// stderr and a fix when there is one.
#[derive(Debug, Clone)]
pub struct HostError {
    pub host: String,
    /// `address:port` (through `bastion` when there is one).
    pub endpoint: String,
    pub step: String,
    pub kind: ErrorKind,
    pub message: String,
    pub stderr: String,
    pub fix: String,
}

impl HostError {
    pub fn new(
        host: &str,
        endpoint: &str,
        step: &str,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        HostError {
            host: host.to_string(),
            endpoint: endpoint.to_string(),
            step: step.to_string(),
            kind,
            message: message.into(),
            stderr: String::new(),
            fix: String::new(),
        }
    }
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
    pub fn with_stderr(mut self, stderr: impl Into<String>) -> Self {
        self.stderr = stderr.into();
        self
    }
    pub fn with_step(mut self, step: &str) -> Self {
        self.step = step.to_string();
        self
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} ({})", self.host, self.endpoint)?;
        if !self.step.is_empty() {
            write!(f, ": {}", self.step)?;
        }
        write!(f, ": {}", self.message)?;
        let err = self.stderr.trim();
        if !err.is_empty() {
            // The last lines carry the cause; keep the message readable.
            let lines: Vec<&str> = err.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            write!(f, "\n  stderr: {}", tail.join("\n          "))?;
        }
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for HostError {}

/// The result of one step on one host.
#[derive(Debug)]
pub struct HostResult<T> {
    pub host: String,
    pub result: Result<T, HostError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_host_step_stderr_and_fix() {
        let e = HostError::new(
            "cp2",
            "10.77.0.12:22",
            "install etcd",
            ErrorKind::Command,
            "exit status 1",
        )
        .with_stderr("line1\nE: no such package\n")
        .with_fix("check the bundle");
        let s = e.to_string();
        assert!(
            s.starts_with("host cp2 (10.77.0.12:22): install etcd: exit status 1"),
            "{s}"
        );
        assert!(
            s.contains("stderr: line1\n          E: no such package"),
            "{s}"
        );
        assert!(s.ends_with("fix: check the bundle"), "{s}");
    }
}
