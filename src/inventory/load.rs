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
    // its key goes too, so it takes its default and no second error follows from the first;
    // and so on up, while a parent is left empty (`kubelet:` whose only `extraArgs:` went).
    let mut base = base;
    loop {
        let prev = (0..i).rev().find(|&j| !skip(&lines[j]));
        let next_ind = (end..lines.len())
            .find(|&j| !skip(&lines[j]))
            .map(|j| ind(&lines[j]));
        match prev {
            Some(p)
                if ind(&lines[p]) < base
                    && lines[p].trim_end().ends_with(':')
                    && next_ind.is_none_or(|n| n <= ind(&lines[p])) =>
            {
                base = ind(&lines[p]);
                removed.push(std::mem::take(&mut lines[p]));
            }
            _ => break,
        }
    }
    *text = lines.join("\n");
    Some(removed.join("\n"))
}

/// Removes the item of a flow sequence (`[a, "b", c]`) that starts at `line:column` (1-based),
/// with its comma, when the error points into one: the other items on the line are read on
/// and checked too. None when `line:column` is not such an item.
fn blank_flow_item(text: &mut String, line: usize, column: usize) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let l = lines.get(line.checked_sub(1)?)?;
    let chars: Vec<char> = l.chars().collect();
    let start = column.checked_sub(1)?;
    let before = chars[..start.min(chars.len())]
        .iter()
        .rev()
        .find(|c| !c.is_whitespace())?;
    if !matches!(before, '[' | ',') {
        return None;
    }
    // The item's end: a quoted scalar's closing quote, else the next `,` or `]`.
    let mut end = start;
    match chars.get(start)? {
        q @ ('"' | '\'') => {
            end += 1;
            while end < chars.len() {
                if chars[end] == '\\' && *q == '"' {
                    end += 2;
                    continue;
                }
                if chars[end] == *q {
                    if *q == '\'' && chars.get(end + 1) == Some(&'\'') {
                        end += 2;
                        continue;
                    }
                    end += 1;
                    break;
                }
                end += 1;
            }
        }
        _ => {
            while end < chars.len() && !matches!(chars[end], ',' | ']') {
                end += 1;
            }
        }
    }
    let mut cut_end = end;
    while cut_end < chars.len() && chars[cut_end].is_whitespace() {
        cut_end += 1;
    }
    let mut cut_start = start;
    if chars.get(cut_end) == Some(&',') {
        cut_end += 1;
    } else if *before == ',' {
        // The last item: its leading comma goes instead.
        cut_start = chars[..start].iter().rposition(|c| *c == ',')?;
    }
    let removed: String = chars[cut_start..cut_end].iter().collect();
    // Spaces in its place: the columns of the items after it stay where the source map has them.
    let kept: String = chars[..cut_start]
        .iter()
        .copied()
        .chain(std::iter::repeat_n(' ', cut_end - cut_start))
        .chain(chars[cut_end..].iter().copied())
        .collect();
    lines[line - 1] = kept;
    *text = lines.join("\n");
    Some(removed)
}

/// The line (1-based) of the entry that holds the one at `line` indented by `indent`: the
/// nearest line above at a smaller indentation.
fn enclosing_entry(text: &str, line: usize, indent: usize) -> Option<usize> {
    let lines: Vec<&str> = text.split('\n').collect();
    (0..line.saturating_sub(1))
        .rev()
        .find(|&j| {
            let t = lines[j];
            !t.trim().is_empty()
                && !t.trim_start().starts_with('#')
                && t.len() - t.trim_start().len() < indent
        })
        .map(|j| j + 1)
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
    // The fields whose entries were blanked out, to tell which later checks can still run.
    let mut blanked: Vec<String> = Vec::new();
    // The line and indentation of the last entry blanked out.
    let mut last_blank: Option<(usize, usize)> = None;
    for _ in 0..256 {
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
                let (line, column, field) = (d.line, d.column, d.field.clone());
                // A missing field is reported when its mapping ends: nothing after it is left
                // unread, and blanking cannot supply it.
                let missing = d.message.starts_with("missing field");
                let syntax = missing || is_syntax_error(&work);
                if !caused_by_us {
                    schema.push(d);
                }
                // A required field blanked out for its bad value (a host's address): the whole
                // entry holding it goes, so the entries after it are read and checked too.
                if missing && caused_by_us {
                    let entry = last_blank.and_then(|(l, ind)| enclosing_entry(&work, l, ind));
                    match entry.and_then(|l| blank_entry(&mut work, l)) {
                        Some(r) => {
                            removed.push_str(&r);
                            removed.push('\n');
                            blanked.push(String::from("(an entry holding a refused value)"));
                            last_blank = None;
                            continue;
                        }
                        None => break,
                    }
                }
                if syntax {
                    break;
                }
                if !caused_by_us {
                    blanked.push(field);
                }
                let flow = match (line, column) {
                    (Some(l), Some(c)) => blank_flow_item(&mut work, l, c),
                    _ => None,
                };
                let blank = match (flow, line) {
                    (Some(r), _) => Some(r),
                    (None, Some(l)) if seen.insert(l) => {
                        last_blank = work
                            .split('\n')
                            .nth(l - 1)
                            .map(|t| (l, t.len() - t.trim_start().len()));
                        blank_entry(&mut work, l)
                    }
                    _ => None,
                };
                match blank {
                    Some(r) => {
                        removed.push_str(&r);
                        removed.push('\n');
                    }
                    None => break,
                }
            }
        }
    }
    let inventory: Inventory = match parsed {
        Some(inv) if schema.items.is_empty() => inv,
        Some(partial) if blanked.iter().all(|f| no_check_reads(f)) => {
            // Every value blanked out is one no cross-field check reads: the checks can run
            // on the rest, so their problems come in the same pass as the schema's.
            let more = validate::validate(&partial, path, &source_map);
            for d in more.items {
                let under_blanked = blanked
                    .iter()
                    .any(|b| d.field == *b || d.field.starts_with(&format!("{b}.")));
                if !under_blanked {
                    schema.push(d);
                }
            }
            return Err(with_hosts(schema, &source_map, text));
        }
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
            return Err(with_hosts(schema, &source_map, text));
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

/// Whether no check of `validate.rs` reads the field at `path` (a value checked by its type
/// alone): when such a value was blanked out, the checks run on the rest as if it had its
/// default. Anything else (a host's name or address, a CIDR, the VIP, an unknown key whose
/// parent then took its default) could make a check report a problem that is not there.
fn no_check_reads(path: &str) -> bool {
    // `spec.hosts[3].labels.x` -> `spec.hosts[].labels.x`
    let mut p = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                p.push('[');
            }
            ']' => {
                in_index = false;
                p.push(']');
            }
            _ if in_index => {}
            _ => p.push(c),
        }
    }
    const INERT: &[&str] = &[
        "spec.hosts[].labels",
        "spec.hosts[].taints",
        "spec.hosts[].user",
        "spec.ssh.user",
        "spec.ssh.passphraseEnv",
        "spec.ssh.bastions[].address",
        "spec.ssh.bastions[].user",
        "spec.ha.vip.interface",
        "spec.network.clusterDomain",
        "spec.pki.extraSANs",
        "spec.etcd",
        "spec.controlPlane.apiserverExtraArgs",
        "spec.controlPlane.controllerManagerExtraArgs",
        "spec.controlPlane.schedulerExtraArgs",
        "spec.containerRuntime.registryMirrors",
        "spec.containerRuntime.sandboxImage",
        "spec.kubelet.evictionHard",
        "spec.kubelet.extraArgs",
        "spec.addons.coredns.image",
        "spec.addons.metricsServer.image",
        "spec.backup.recipients",
    ];
    INERT
        .iter()
        .any(|i| p == *i || p.starts_with(&format!("{i}.")) || p.starts_with(&format!("{i}[")))
}

/// Names the host of every problem placed under `spec.hosts[N]` (its `name` as written), so a
/// schema error says `host w1:` like the other checks do.
fn with_hosts(mut d: Diagnostics, map: &SourceMap, text: &str) -> Diagnostics {
    let lines: Vec<&str> = text.lines().collect();
    for item in &mut d.items {
        if item.host.is_some() {
            continue;
        }
        let Some(rest) = item.field.strip_prefix("spec.hosts[") else {
            continue;
        };
        let Some(idx) = rest.split(']').next() else {
            continue;
        };
        let Some(pos) = map.exact_value(&format!("spec.hosts[{idx}].name")) else {
            continue;
        };
        let Some(line) = lines.get(pos.line - 1) else {
            continue;
        };
        let value: String = line
            .chars()
            .skip(pos.column - 1)
            .take_while(|c| !matches!(c, ',' | '}' | '#'))
            .collect();
        let name = value.trim().trim_matches(['"', '\'']);
        if !name.is_empty() {
            item.host = Some(name.to_string());
        }
    }
    d
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
    // A type's refusal carries its own fix (types::Invalid). serde-saphyr writes the control
    // character as `\u{1}`; the fix is ours and holds no mark, so the last mark is the one.
    let split = message
        .rsplit_once(super::types::FIX_MARK)
        .or_else(|| message.rsplit_once("\\u{1}"))
        .map(|(m, f)| (m.to_string(), f.to_string()));
    let fix = match split {
        Some((m, fix)) => {
            message = m;
            fix
        }
        None if message.starts_with("duplicate key") => {
            "write each key once in a mapping (merge the two entries)".into()
        }
        None if message.starts_with("unknown field") => {
            "remove the key or correct its spelling (keys are camelCase, see README \"Inventory\")"
                .into()
        }
        None if message.starts_with("missing field") => {
            "add the field; see the inventory example in README.md".into()
        }
        None if message.starts_with("unknown variant") => "use one of the listed values".into(),
        None if message.contains("invalid type")
            || message.starts_with("invalid")
            || message.starts_with("expected") =>
        {
            "give the field a value of the expected type".into()
        }
        None => "fix the YAML syntax at that place".into(),
    };
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line: loc.as_ref().map(|l| l.line() as usize),
        column: loc.as_ref().map(|l| l.column() as usize),
        field: String::new(),
        host: None,
        message,
        fix,
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
