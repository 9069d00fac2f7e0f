//! Semantic checks of an inventory, run before any host is contacted. Every problem is
//! collected (not only the first) and placed at its line with the source map.

use std::path::Path;

use super::model::*;
use super::source_map::SourceMap;
use crate::diag::{Diagnostic, Diagnostics, Severity};

pub fn validate(inv: &Inventory, file: &Path, map: &SourceMap) -> Diagnostics {
    let mut v = Validator { file, map, out: Diagnostics::default() };
    v.header(inv);
    v.out
}

struct Validator<'a> {
    file: &'a Path,
    map: &'a SourceMap,
    out: Diagnostics,
}

impl Validator<'_> {
    fn report(&mut self, severity: Severity, field: &str, host: Option<&str>, message: String, fix: &str) {
        let pos = self.map.value(field);
        self.out.push(Diagnostic {
            severity,
            file: self.file.to_path_buf(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: field.to_string(),
            host: host.map(str::to_string),
            message,
            fix: fix.to_string(),
        });
    }

    fn error(&mut self, field: &str, host: Option<&str>, message: String, fix: &str) {
        self.report(Severity::Error, field, host, message, fix);
    }

    fn header(&mut self, inv: &Inventory) {
        if inv.api_version != API_VERSION {
            self.error("apiVersion", None, format!("unsupported apiVersion `{}`", inv.api_version), &format!("set `apiVersion: {API_VERSION}`"));
        }
        if inv.kind != KIND {
            self.error("kind", None, format!("unsupported kind `{}`", inv.kind), &format!("set `kind: {KIND}`"));
        }
    }
}
