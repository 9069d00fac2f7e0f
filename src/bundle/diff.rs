//! What changed between two bundles (or manifests): components, versions, hashes.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::manifest::{Item, Manifest};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum Change {
    /// The bundle's own name or version.
    Bundle {
        field: String,
        from: String,
        to: String,
    },
    Added {
        name: String,
        version: String,
    },
    Removed {
        name: String,
        version: String,
    },
    /// Same component (same name; same version, or the only one on each side).
    Changed {
        name: String,
        from_version: String,
        to_version: String,
        fields: Vec<FieldChange>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Bundle { field, from, to } => write!(f, "~ bundle {field}: {from} -> {to}"),
            Change::Added { name, version } => write!(f, "+ {name} {version}"),
            Change::Removed { name, version } => write!(f, "- {name} {version}"),
            Change::Changed {
                name,
                from_version,
                to_version,
                fields,
            } => {
                if from_version == to_version {
                    write!(f, "~ {name} {from_version}")?;
                } else {
                    write!(f, "~ {name} {from_version} -> {to_version}")?;
                }
                for c in fields {
                    write!(f, "\n    {}: {} -> {}", c.field, c.from, c.to)?;
                }
                Ok(())
            }
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

fn fields(a: &Item, b: &Item) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut cmp = |field: &str, x: String, y: String| {
        if x != y {
            out.push(FieldChange {
                field: field.into(),
                from: x,
                to: y,
            });
        }
    };
    cmp("version", a.version.clone(), b.version.clone());
    cmp("kind", a.kind.as_str().into(), b.kind.as_str().into());
    cmp("sha256", opt(&a.sha256), opt(&b.sha256));
    cmp("size", opt(&a.size), opt(&b.size));
    cmp("url", a.url.clone(), b.url.clone());
    cmp(
        "install.path",
        opt(&a.install.as_ref().map(|i| i.path.clone())),
        opt(&b.install.as_ref().map(|i| i.path.clone())),
    );
    cmp(
        "install.mode",
        opt(&a.install.as_ref().and_then(|i| i.mode.clone())),
        opt(&b.install.as_ref().and_then(|i| i.mode.clone())),
    );
    let roles = |i: &Item| {
        i.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    cmp("roles", roles(a), roles(b));
    cmp("hashSource", a.hash_source.clone(), b.hash_source.clone());
    cmp("note", opt(&a.note), opt(&b.note));
    // A .deb stored expanded: its published hash says whether Debian's package itself changed
    // (the stored sha256 changes when a bundle built before the expansion meets one after).
    let published = |i: &Item| opt(&i.published.as_ref().map(|p| p.to_string()));
    cmp("published", published(a), published(b));
    out
}

/// Changes from `a` to `b`, in a stable order (bundle header, then by component name).
pub fn diff(a: &Manifest, b: &Manifest) -> Vec<Change> {
    let mut out = Vec::new();
    if a.name != b.name {
        out.push(Change::Bundle {
            field: "name".into(),
            from: a.name.clone(),
            to: b.name.clone(),
        });
    }
    if a.version != b.version {
        out.push(Change::Bundle {
            field: "version".into(),
            from: a.version.clone(),
            to: b.version.clone(),
        });
    }
    let group = |m: &Manifest| {
        let mut g: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        for it in &m.items {
            g.entry(it.name.clone()).or_default().push(it.clone());
        }
        g
    };
    let (ga, gb) = (group(a), group(b));
    let mut names: Vec<&String> = ga.keys().chain(gb.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let mut xs = ga.get(name).cloned().unwrap_or_default();
        let mut ys = gb.get(name).cloned().unwrap_or_default();
        // Same version on both sides: compare in place.
        xs.retain(|x| {
            if let Some(pos) = ys.iter().position(|y| y.version == x.version) {
                let y = ys.remove(pos);
                let f = fields(x, &y);
                if !f.is_empty() {
                    out.push(Change::Changed {
                        name: name.clone(),
                        from_version: x.version.clone(),
                        to_version: y.version.clone(),
                        fields: f,
                    });
                }
                false
            } else {
                true
            }
        });
        // One version replaced by one other: a version change of the same component.
        if xs.len() == 1 && ys.len() == 1 {
            let (x, y) = (&xs[0], &ys[0]);
            out.push(Change::Changed {
                name: name.clone(),
                from_version: x.version.clone(),
                to_version: y.version.clone(),
                fields: fields(x, y),
            });
            continue;
        }
        for x in xs {
            out.push(Change::Removed {
                name: name.clone(),
                version: x.version,
            });
        }
        for y in ys {
            out.push(Change::Added {
                name: name.clone(),
                version: y.version,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(items: &[(&str, &str, u8)]) -> Manifest {
        let mut y = String::from("name: t\nversion: '1'\nitems:\n");
        for (n, v, s) in items {
            y += &format!(
                "  - {{name: {n}, version: '{v}', kind: deb, url: 'file:///{n}', sha256: '{:064x}', size: 1, roles: [all], hashSource: x}}\n",
                s
            );
        }
        Manifest::from_yaml(&y).unwrap()
    }

    #[test]
    fn reports_versions_hashes_additions_removals() {
        let a = m(&[
            ("etcd", "3.4.23", 1),
            ("haproxy", "2.6.12", 2),
            ("runc", "1.1.5", 3),
            ("kubectl", "1.20.2", 7),
        ]);
        let mut b = m(&[
            ("etcd", "3.5.16", 4),
            ("haproxy", "2.6.12", 5),
            ("keepalived", "2.2.7", 6),
            ("kubectl", "1.20.2", 7),
        ]);
        b.version = "2".into();
        let d = diff(&a, &b);
        let text: Vec<String> = d.iter().map(|c| c.to_string()).collect();
        assert_eq!(text[0], "~ bundle version: 1 -> 2");
        assert!(
            text.iter().any(|t| t.starts_with(
                "~ etcd 3.4.23 -> 3.5.16\n    version: 3.4.23 -> 3.5.16\n    sha256: 0000"
            )),
            "{text:#?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("~ haproxy 2.6.12\n    sha256:")),
            "{text:#?}"
        );
        assert!(text.contains(&"+ keepalived 2.2.7".to_string()));
        assert!(text.contains(&"- runc 1.1.5".to_string()));
        assert!(
            !text.iter().any(|t| t.contains("kubectl")),
            "unchanged items are not listed"
        );
        assert_eq!(d.len(), 5);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn a_deb_stored_expanded_shows_its_published_hash() {
        let a = m(&[("haproxy", "2.6.12", 2)]);
        let mut b = m(&[("haproxy", "2.6.12", 5)]);
        b.items[0].published = Some(crate::bundle::manifest::Published {
            sha256: format!("{:064x}", 2),
            size: 1,
            expanded: vec!["data.tar.xz".into()],
        });
        let text: Vec<String> = diff(&a, &b).iter().map(|c| c.to_string()).collect();
        assert_eq!(text.len(), 1, "{text:#?}");
        assert!(
            text[0].ends_with(&format!(
                "published: - -> sha256 {:064x}, data.tar.xz stored expanded",
                2
            )),
            "{text:#?}"
        );
    }

    #[test]
    fn two_versions_on_one_side_are_added_and_removed() {
        let a = m(&[("etcd", "3.4.23", 1)]);
        let b = m(&[("etcd", "3.5.16", 2), ("etcd", "3.5.17", 3)]);
        let text: Vec<String> = diff(&a, &b).iter().map(|c| c.to_string()).collect();
        assert_eq!(text, ["- etcd 3.4.23", "+ etcd 3.5.16", "+ etcd 3.5.17"]);
    }
}
