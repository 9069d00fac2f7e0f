//! Reading an inventory file: YAML -> model (serde-saphyr, located errors), then every semantic
//! check at once (validate.rs), each problem placed with the source map.

use std::path::{Path, PathBuf};

use super::model::Inventory;
use super::source_map::SourceMap;
use super::validate;
use crate::diag::{Diagnostic, Diagnostics, Severity};

/// A loaded, validated inventory with what is needed to point at its lines later.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub inventory: Inventory,
    pub path: PathBuf,
    pub source_map: SourceMap,
    /// Warnings found by validation (errors make `load` fail).
    pub warnings: Diagnostics,
}

impl Loaded {
    /// Resolves a path written in the inventory (key files, bundle, manifests) against the
    /// inventory's directory; `~/` is the user's home.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_path(&self.path, p)
    }
}

pub fn resolve_path(inventory_file: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        return p.to_path_buf();
    }
    inventory_file.parent().unwrap_or(Path::new(".")).join(p)
}

/// Reads and validates `path`. On any error returns every problem found (exit code 2).
pub fn load(path: &Path) -> Result<Loaded, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: None,
            column: None,
            field: String::new(),
            host: None,
            message: format!("cannot read the inventory: {e}"),
            fix: "pass the path of an inventory file with -i/--inventory".into(),
        });
        d
    })?;
    load_str(&text, path)
}

/// Like `load`, for text already read; `path` is used for messages and relative paths.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded, Diagnostics> {
    let source_map = SourceMap::build(text);
    let inventory: Inventory = match serde_saphyr::from_str(text) {
        Ok(inv) => inv,
        Err(e) => {
            let mut d = Diagnostics::default();
            d.push(serde_error(&e, path));
            return Err(d);
        }
    };
    let diags = validate::validate(&inventory, path, &source_map);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Loaded { inventory, path: path.to_path_buf(), source_map, warnings: diags })
}

fn serde_error(e: &serde_saphyr::Error, path: &Path) -> Diagnostic {
    let loc = e.location();
    let full = e.without_snippet().to_string();
    // serde-saphyr appends " at line N, column M"; we print the place ourselves.
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let fix = if message.starts_with("unknown field") {
        "remove the key or correct its spelling (keys are camelCase, see README \"Inventory\")"
    } else if message.starts_with("missing field") {
        "add the field; see the inventory example in README.md"
    } else if message.starts_with("unknown variant") {
        "use one of the listed values"
    } else if message.contains("invalid type") || message.starts_with("invalid") {
        "give the field a value of the expected type"
    } else {
        "fix the YAML syntax at that place"
    };
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line: loc.as_ref().map(|l| l.line() as usize),
        column: loc.as_ref().map(|l| l.column() as usize),
        field: String::new(),
        host: None,
        message,
        fix: fix.into(),
    }
}
