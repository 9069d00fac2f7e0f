//! Machine-readable output (`-o json`, `-o yaml`): one serializer for every command, and the
//! form a failure takes there, so a script reads one object whatever happened.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// `-o`: how a command prints what it read or did.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

/// Prints `value` as pretty JSON or as YAML (`Output::Text` callers render their own text;
/// given here it prints JSON, the stable form).
pub fn print<T: Serialize>(format: Output, value: &T) -> anyhow::Result<()> {
    let text = render(format, value)?;
    print!("{text}");
    PRINTED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether this process already wrote its structured result: a command that reports and then
/// exits non-zero (an unhealthy `status`, an expiring certificate) has said what is wrong in
/// that object, and stdout must stay one document.
pub fn printed() -> bool {
    PRINTED.load(Ordering::Relaxed)
}

static PRINTED: AtomicBool = AtomicBool::new(false);

/// `value` as the text `print` writes, ending with a newline.
pub fn render<T: Serialize>(format: Output, value: &T) -> anyhow::Result<String> {
    Ok(match format {
        Output::Yaml => {
            let mut s = serde_saphyr::to_string(value)?;
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        Output::Json | Output::Text => serde_json::to_string_pretty(value)? + "\n",
    })
}

/// A failed command in `-o json`/`-o yaml`: what went wrong, where, and how to fix it.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub error: String,
    pub host: Option<String>,
    pub phase: Option<String>,
    pub fix: Option<String>,
    pub exit_code: i32,
    /// Every input problem, with file, line, column and field, when the input was bad.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<crate::diag::Diagnostic>,
}

impl Failure {
    /// The failure object for an error as `cli::report` classifies it.
    pub fn from_error(e: &anyhow::Error, exit_code: i32) -> Failure {
        let mut f = Failure {
            error: format!("{e:#}"),
            host: None,
            phase: None,
            fix: None,
            exit_code,
            diagnostics: Vec::new(),
        };
        for cause in e.chain() {
            if let Some(d) = cause.downcast_ref::<crate::diag::Diagnostics>() {
                f.error = d
                    .errors()
                    .map(|x| x.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if let Some(first) = d.errors().next() {
                    f.host = f.host.take().or_else(|| first.host.clone());
                    f.fix = f
                        .fix
                        .take()
                        .or_else(|| Some(first.fix.clone()).filter(|s| !s.is_empty()));
                }
                f.diagnostics = d.items.clone();
            } else if let Some(u) = cause.downcast_ref::<crate::diag::UserError>() {
                f.host = f.host.take().or_else(|| u.host.clone());
                f.phase = f.phase.take().or_else(|| u.phase.clone());
                f.fix = f.fix.take().or_else(|| u.fix.clone());
            } else if let Some(h) = cause.downcast_ref::<crate::ssh::HostError>() {
                f.host = f.host.take().or_else(|| Some(h.host.clone()));
                f.fix = f
                    .fix
                    .take()
                    .or_else(|| Some(h.fix.clone()).filter(|s| !s.is_empty()));
            }
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_host_phase_and_fix() {
        let e: anyhow::Error = crate::diag::UserError::failed("phase etcd failed on 1 host(s)")
            .in_phase("etcd")
            .on_host("h2")
            .with_fix("look at h2")
            .into();
        let f = Failure::from_error(&e, 1);
        assert_eq!(f.phase.as_deref(), Some("etcd"));
        assert_eq!(f.host.as_deref(), Some("h2"));
        assert_eq!(f.fix.as_deref(), Some("look at h2"));
        for format in [Output::Json, Output::Yaml] {
            let text = render(format, &f).unwrap();
            let back: serde_json::Value = match format {
                Output::Yaml => serde_saphyr::from_str(&text).unwrap(),
                _ => serde_json::from_str(&text).unwrap(),
            };
            assert_eq!(back["host"], "h2", "{text}");
            assert_eq!(back["exitCode"], 1, "{text}");
        }
    }
}
