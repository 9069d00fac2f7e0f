//! User-facing problems with a place: file, line:column, field, host, what is wrong, how to fix.
//!
//! Validation collects every problem before reporting (`Diagnostics`), so a user fixes an
//! inventory in one pass. Exit codes: 2 for bad input (nothing touched), 1 for a failed run.

use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_FAILED: i32 = 1;
/// `certs check-expiration`: a certificate expired or expires within `--warn-within`.
pub const EXIT_EXPIRING: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; None when the problem has no single place (e.g. "no etcd host").
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `spec.hosts[2].address`.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, ": {sev}: ")?;
        // Values from the input are echoed in these: never let them drive the terminal.
        if !self.field.is_empty() {
            write!(f, "{}: ", escape(&self.field))?;
        }
        if let Some(h) = &self.host {
            write!(f, "host {}: ", escape(h))?;
        }
        write!(f, "{}", escape(&self.message))?;
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in one input, errors and warnings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.items {
            writeln!(f, "{d}")?;
        }
        let e = self.errors().count();
        let w = self.warnings().count();
        write!(f, "{e} error(s), {w} warning(s)")
    }
}

impl std::error::Error for Diagnostics {}

/// An error that carries its own exit code and is printed as is (no "Error:" chain); where it
/// is known, the phase, host and fix are kept apart for `-o json`/`-o yaml`.
#[derive(Debug)]
pub struct UserError {
    pub code: i32,
    pub message: String,
    pub phase: Option<String>,
    pub host: Option<String>,
    pub fix: Option<String>,
}

impl UserError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        UserError {
            code: EXIT_BAD_INPUT,
            message: message.into(),
            phase: None,
            host: None,
            fix: None,
        }
    }
    pub fn with_code(code: i32, message: impl Into<String>) -> Self {
        UserError {
            code,
            ..UserError::failed(message)
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        UserError {
            code: EXIT_FAILED,
            message: message.into(),
            phase: None,
            host: None,
            fix: None,
        }
    }
    /// A command that is designed but not built yet: say so, exit non-zero, touch nothing.
    pub fn not_built(what: &str, issue: &str) -> Self {
        UserError {
            code: EXIT_FAILED,
            message: format!("`clusterctl {what}` is not built yet ({issue}); nothing was done"),
            phase: None,
            host: None,
            fix: None,
        }
    }
}

impl UserError {
    pub fn in_phase(mut self, phase: impl Into<String>) -> Self {
        self.phase = Some(phase.into());
        self
    }
    pub fn on_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    /// The fix for machine-readable output; the message already says it for people.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// Convenience for a diagnostic without a place in a file.
pub fn at_file(
    file: &Path,
    severity: Severity,
    field: &str,
    message: String,
    fix: &str,
) -> Diagnostic {
    Diagnostic {
        severity,
        file: file.to_path_buf(),
        line: None,
        column: None,
        field: field.to_string(),
        host: None,
        message,
        fix: fix.to_string(),
    }
}

/// `s` as it may be echoed to a terminal: control characters (escape sequences, newlines, NUL)
/// written as Rust escapes (`\u{1b}`, `\n`), so an input value cannot move the cursor, recolour
/// the screen or forge a line of output.
pub fn escape(s: &str) -> String {
    if !s.chars().any(|c| c.is_control()) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
