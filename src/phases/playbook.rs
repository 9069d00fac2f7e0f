//! Playbooks: the ordered phase list of each command, as data (`playbooks/<command>.yaml`).
//! Built in, and overridable per cluster by `clusters/<name>/playbooks/<command>.yaml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::{Diagnostic, Diagnostics, Severity, UserError};
use crate::engine::runner::Runner;
use crate::inventory::source_map::SourceMap;

pub const BUILTIN: &[(&str, &str)] = &[
    ("init", include_str!("../../playbooks/init.yaml")),
    ("join", include_str!("../../playbooks/join.yaml")),
    (
        "renew-certs",
        include_str!("../../playbooks/renew-certs.yaml"),
    ),
    ("upgrade", include_str!("../../playbooks/upgrade.yaml")),
    (
        "upgrade-rollback",
        include_str!("../../playbooks/upgrade-rollback.yaml"),
    ),
    ("reset", include_str!("../../playbooks/reset.yaml")),
    ("restore", include_str!("../../playbooks/restore.yaml")),
    (
        "backup-schedule",
        include_str!("../../playbooks/backup-schedule.yaml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub command: String,
    pub phases: Vec<String>,
    #[serde(skip)]
    pub origin: PathBuf,
}

/// The playbook for `command`: the cluster's own file if present, else the built-in one.
/// Every phase name must be one clusterctl knows (`known`).
pub fn load(
    command: &str,
    override_dir: Option<&Path>,
    known: &[&str],
) -> Result<Playbook, Diagnostics> {
    let user = override_dir
        .map(|d| d.join(format!("{command}.yaml")))
        .filter(|p| p.is_file());
    let (text, origin) = match &user {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.clone()),
            Err(e) => {
                return Err(one(
                    p,
                    None,
                    String::new(),
                    format!("cannot read the playbook: {e}"),
                    "check the file's permissions",
                ));
            }
        },
        None => match BUILTIN.iter().find(|(c, _)| *c == command) {
            Some((_, t)) => (
                t.to_string(),
                PathBuf::from(format!("playbooks/{command}.yaml")),
            ),
            None => {
                return Err(one(
                    Path::new("playbooks"),
                    None,
                    String::new(),
                    format!("`{command}` has no playbook yet"),
                    "this command is not built yet",
                ));
            }
        },
    };
    parse(&text, &origin, command, known)
}

fn one(
    file: &Path,
    pos: Option<(usize, usize)>,
    field: String,
    message: String,
    fix: &str,
) -> Diagnostics {
    let mut d = Diagnostics::default();
    d.push(Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
        field,
        host: None,
        message,
        fix: fix.into(),
    });
    d
}

pub fn parse(
    text: &str,
    origin: &Path,
    command: &str,
    known: &[&str],
) -> Result<Playbook, Diagnostics> {
    let mut pb: Playbook = serde_saphyr::from_str(text).map_err(|e| {
        let loc = e.location();
        one(
            origin,
            loc.map(|l| (l.line() as usize, l.column() as usize)),
            String::new(),
            e.without_snippet().to_string(),
            "see playbooks/init.yaml for the format",
        )
    })?;
    pb.origin = origin.to_path_buf();
    let map = SourceMap::build(text);
    let mut diags = Diagnostics::default();
    if pb.command != command {
        let p = map.value("command");
        diags.extend(one(
            origin,
            p.map(|p| (p.line, p.column)),
            "command".into(),
            format!("this playbook is for `{}`, not `{command}`", pb.command),
            &format!("set `command: {command}`"),
        ));
    }
    for (i, name) in pb.phases.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            let p = map.value(&format!("phases[{i}]"));
            diags.extend(one(
                origin,
                p.map(|p| (p.line, p.column)),
                format!("phases[{i}]"),
                format!("unknown phase `{name}`"),
                &format!("use one of: {}", known.join(", ")),
            ));
        }
        if pb.phases[..i].contains(name) {
            let p = map.value(&format!("phases[{i}]"));
            diags.extend(one(
                origin,
                p.map(|p| (p.line, p.column)),
                format!("phases[{i}]"),
                format!("phase `{name}` is listed twice"),
                "list each phase once",
            ));
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(pb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_init_names_only_known_phases() {
        let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
        let pb = load("init", None, &known).unwrap();
        assert_eq!(pb.phases.first().map(String::as_str), Some("preflight"));
    }

    #[test]
    fn unknown_phase_is_placed() {
        let e = parse(
            "command: init\nphases:\n  - preflight\n  - etdc\n",
            Path::new("p.yaml"),
            "init",
            &["preflight", "etcd"],
        )
        .unwrap_err();
        let d = &e.items[0];
        assert_eq!((d.line, d.column), (Some(4), Some(5)));
        assert!(d.message.contains("unknown phase `etdc`"));
        assert!(d.fix.contains("preflight, etcd"));
    }
}

/// Which phases of a playbook run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub skip: Vec<String>,
    pub only: Vec<String>,
}

impl Playbook {
    /// The playbook's phases in order, minus `--skip-phases`, or only `--only-phase`.
    /// Naming a phase that is not in the playbook is bad input.
    pub fn runner(&self, sel: &Selection) -> Result<Runner, UserError> {
        let playbook = self;
        let listed = &playbook.phases;
        for name in sel.skip.iter().chain(&sel.only) {
            if !listed.contains(name) {
                return Err(UserError::bad_input(format!(
                    "phase `{name}` is not in {} (its phases: {})",
                    playbook.origin.display(),
                    listed.join(", ")
                )));
            }
        }
        let mut registry = crate::phases::registry();
        let mut phases = Vec::new();
        for name in listed {
            if sel.skip.contains(name) || (!sel.only.is_empty() && !sel.only.contains(name)) {
                continue;
            }
            let i = registry
                .iter()
                .position(|p| p.name() == name)
                .expect("playbook names are checked on load");
            phases.push(registry.swap_remove(i));
        }
        Ok(Runner {
            command: playbook.command.clone(),
            phases,
            // etcd members restart leader last, the leadership handed to a member already done.
            roll_guard: Some(|ctx| Box::new(super::etcd::Leadership::new(ctx))),
        })
    }
}
