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
    let bytes = std::fs::read(path).map_err(|e| {
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
    let text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let column = at
            - before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1)
            + 1;
        let mut d = Diagnostics::default();
        d.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            field: String::new(),
            host: None,
            message: format!(
                "the inventory is not UTF-8 text: byte 0x{:02x} at offset {at}",
                bytes[at]
            ),
            fix: "save the file as UTF-8".into(),
        });
        d
    })?;
    load_str(&text, path)
}

/// Blanks the mapping entry or list item starting on `line` (1-based) and every following
/// line indented deeper, keeping the line count (so later errors keep their places). Returns
/// the removed text, or None when there is nothing to remove.
fn blank_entry(text: &mut String, line: usize) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let i = line.checked_sub(1)?;
    let first = lines.get(i)?;
    if first.trim().is_empty() {
        return None;
    }
    let ind = |l: &str| l.len() - l.trim_start().len();
    let skip = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    let base = ind(first);
    let mut removed = vec![std::mem::take(&mut lines[i])];
    let mut end = i + 1;
    while end < lines.len() && (skip(&lines[end]) || ind(&lines[end]) > base) {
        removed.push(std::mem::take(&mut lines[end]));
        end += 1;
    }
    // A mapping left with no entries would read as null (`network:` with nothing under it):
    // its key goes too, so it takes its default and no second error follows from the first.
    let prev = (0..i).rev().find(|&j| !skip(&lines[j]));
    let next_ind = (end..lines.len())
        .find(|&j| !skip(&lines[j]))
        .map(|j| ind(&lines[j]));
    if let Some(p) = prev
        && ind(&lines[p]) < base
        && lines[p].trim_end().ends_with(':')
        && next_ind.is_none_or(|n| n <= ind(&lines[p]))
    {
        removed.push(std::mem::take(&mut lines[p]));
    }
    *text = lines.join("\n");
    Some(removed.join("\n"))
}

/// Whether `e` is a YAML syntax error (the document does not parse as YAML at all), after
/// which nothing further can be read reliably.
fn is_syntax_error(text: &str) -> bool {
    let mut parser = serde_saphyr::granit_parser::Parser::new_from_str(text);
    loop {
        match parser.next_event() {
            None => return false,
            Some(Err(_)) => return true,
            Some(Ok(_)) => {}
        }
    }
}

/// Like `load`, for text already read; `path` is used for messages and relative paths.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded, Diagnostics> {
    let source_map = SourceMap::build(text);
    // serde stops at the first problem. To report every schema problem at once, the entry it
    // names is blanked out (line numbers kept) and the document read again, until it reads or
    // a problem repeats; a `missing field` that only the blanking caused is not reported.
    let mut work = text.to_string();
    let mut removed = String::new();
    let mut schema = Diagnostics::default();
    let mut seen = std::collections::HashSet::new();
    let mut parsed = None;
    for _ in 0..64 {
        match serde_saphyr::from_str::<Inventory>(&work) {
            Ok(inv) => {
                parsed = Some(inv);
                break;
            }
            Err(e) => {
                let mut d = serde_error(&e, path, text);
                if let (Some(l), Some(c)) = (d.line, d.column) {
                    d.field = source_map.path_at(l, c).unwrap_or_default();
                }
                let caused_by_us = d
                    .message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                    .is_some_and(|f| removed.contains(&format!("{f}:")));
                let line = d.line;
                // A missing field is reported when its mapping ends: nothing after it is left
                // unread, and blanking cannot supply it.
                let missing = d.message.starts_with("missing field");
                let syntax = missing || is_syntax_error(&work);
                if !caused_by_us {
                    schema.push(d);
                }
                if syntax {
                    break;
                }
                match line {
                    Some(l) if seen.insert(l) => match blank_entry(&mut work, l) {
                        Some(r) => {
                            removed.push_str(&r);
                            removed.push('\n');
                        }
                        None => break,
                    },
                    _ => break,
                }
            }
        }
    }
    let inventory: Inventory = match parsed {
        Some(inv) if schema.items.is_empty() => inv,
        _ => {
            if schema.items.is_empty() {
                schema.push(Diagnostic {
                    severity: Severity::Error,
                    file: path.to_path_buf(),
                    line: None,
                    column: None,
                    field: String::new(),
                    host: None,
                    message: "the inventory cannot be read".into(),
                    fix: "fix the YAML syntax".into(),
                });
            }
            return Err(schema);
        }
    };
    let diags = validate::validate(&inventory, path, &source_map);
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Loaded {
        inventory,
        path: path.to_path_buf(),
        source_map,
        warnings: diags,
    })
}

fn serde_error(e: &serde_saphyr::Error, path: &Path, text: &str) -> Diagnostic {
    let loc = e.location();
    let full = e.without_snippet().to_string();
    // serde-saphyr appends " at line N, column M"; we print the place ourselves.
    let mut message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    // The YAML library's wording names its own options; say what is wrong in the inventory.
    if let Some(rest) = message.strip_prefix("duplicate mapping key") {
        let key = rest
            .trim_start_matches(": ")
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or("")
            .to_string();
        let first = loc
            .as_ref()
            .and_then(|l| first_key_line(text, &key, l.line() as usize, l.column() as usize));
        message = match (key.is_empty(), first) {
            (false, Some(f)) => format!("duplicate key `{key}` (first on line {f})"),
            (false, None) => format!("duplicate key `{key}`"),
            (true, _) => "duplicate key".into(),
        };
    }
    let fix = if message.starts_with("duplicate key") {
        "write each key once in a mapping (merge the two entries)"
    } else if message.starts_with("unknown field") {
        "remove the key or correct its spelling (keys are camelCase, see README \"Inventory\")"
    } else if message.starts_with("missing field") {
        "add the field; see the inventory example in README.md"
    } else if message.starts_with("unknown variant") {
        "use one of the listed values"
    } else if message.contains("invalid type")
        || message.starts_with("invalid")
        || message.starts_with("expected")
    {
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

/// The line of the first `key:` at `column` before `line` in the same mapping (a line at a
/// smaller indentation in between ends the search).
fn first_key_line(text: &str, key: &str, line: usize, column: usize) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let col = column.checked_sub(1)?;
    for i in (0..line.saturating_sub(1)).rev() {
        let l = lines.get(i)?;
        let t = l.trim_start();
        let ind = l.len() - t.len();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let body = l.get(col..).unwrap_or("");
        if ind <= col
            && (body.starts_with(&format!("{key}:"))
                || body.starts_with(&format!("\"{key}\":"))
                || body.starts_with(&format!("'{key}':")))
        {
            return Some(i + 1);
        }
        if ind < col && !t.starts_with("- ") {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "apiVersion: clusterctl.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: t\nspec:\n";

    fn errors(text: &str) -> Vec<String> {
        let d = load_str(text, Path::new("inv.yaml")).unwrap_err();
        d.errors()
            .map(|d| {
                format!(
                    "{}:{} {}",
                    d.line.unwrap_or(0),
                    d.column.unwrap_or(0),
                    d.message
                )
            })
            .collect()
    }

    #[test]
    fn every_schema_error_at_once_each_at_its_line() {
        let text = format!(
            "{HEAD}  kubernetesVersoin: v1.20.2\n  hosts:\n    - name: cp1\n      address: 10.0.0.1\n      roles: [etcd, control-plane]\n      colour: red\n  network:\n    podCIDR: [1]\n  ssh:\n    port: many\n"
        );
        let d = load_str(&text, Path::new("inv.yaml")).unwrap_err();
        let fields: Vec<&str> = d.errors().map(|d| d.field.as_str()).collect();
        assert!(
            fields.contains(&"spec.network.podCIDR") && fields.contains(&"spec.ssh.port"),
            "{fields:?}"
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|m| m.starts_with("6:3 unknown field `kubernetesVersoin`")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("11:7 unknown field `colour`")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("13:14 expected string")),
            "{e:#?}"
        );
        assert!(e.iter().any(|m| m.starts_with("15:11 invalid")), "{e:#?}");
        // The misspelt key also means the real one is missing: that is a true problem too.
        assert!(
            e.iter()
                .any(|m| m.contains("missing field `kubernetesVersion`")),
            "{e:#?}"
        );
        assert_eq!(e.len(), 5, "{e:#?}");
    }

    #[test]
    fn backup_recipients_are_typed_at_load() {
        let hosts = "  kubernetesVersion: v1.20.2\n  hosts:\n    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}\n";
        let good = "age1z4gr2rj7xr2x3n6r578de5rxd93ltc8v3rzp85ycyhe5x5qpua3q9dwyk4";
        let text = format!("{HEAD}{hosts}  backup:\n    recipients: [{good}]\n");
        let inv = load_str(&text, Path::new("inv.yaml")).unwrap().inventory;
        assert_eq!(inv.spec.backup.recipients[0].0.to_string(), good);
        // One letter off (the bech32 checksum fails), and an ssh key: each refused at its line.
        let bad = good.replace("dwyk4", "dwyk5");
        let text = format!(
            "{HEAD}{hosts}  backup:\n    recipients:\n      - {bad}\n      - \"ssh-ed25519 AAAA\"\n"
        );
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|m| m.starts_with("11:9 ") && m.contains("age X25519 public key")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("12:9 invalid backup recipient")),
            "{e:#?}"
        );
    }

    #[test]
    fn a_duplicate_key_is_said_in_our_words_with_both_places() {
        let text = format!(
            "{HEAD}  kubernetesVersion: v1.20.2\n  hosts:\n    - name: cp1\n      address: 10.0.0.1\n      name: cp2\n      roles: [etcd, control-plane]\n"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with("10:7 duplicate key `name` (first on line 8)"),
            "{e:#?}"
        );
        assert!(!e[0].contains("DuplicateKeyPolicy"));
    }

    #[test]
    fn non_utf8_input_names_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.yaml");
        let mut bytes =
            format!("{HEAD}  kubernetesVersion: v1.20.2\n  hosts: []\n  x: ab").into_bytes();
        let at = bytes.len();
        bytes.extend([0xff, b'\n']);
        std::fs::write(&p, &bytes).unwrap();
        let d = load(&p).unwrap_err();
        let e = d.errors().next().unwrap();
        assert!(
            e.message
                .contains(&format!("not UTF-8 text: byte 0xff at offset {at}")),
            "{e}"
        );
        assert_eq!((e.line, e.column), (Some(8), Some(8)));
    }
}
