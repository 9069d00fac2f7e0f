//! The bundle manifest (YAML): what a bundle holds, where each item came from, and where it goes.
//!
//! One format serves two uses: the *input* of `bundle build` (sizes may be unknown; an item whose
//! published hash could not be found carries `hashMissing` and is refused) and the *packed*
//! manifest inside a bundle (every item has `sha256` and `size`).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::inventory::Role;

pub const API_VERSION: &str = "clusterctl.io/bundle/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    #[serde(default = "default_api")]
    pub api_version: String,
    /// Bundle name, e.g. `kubernetes-1.34` or `lab`.
    pub name: String,
    /// Bundle version, e.g. `1.34.2-1`.
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Target platform of the binaries, e.g. `linux/amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub items: Vec<Item>,
}

fn default_api() -> String {
    API_VERSION.to_string()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A single executable, installed at `install.path` with `install.mode`.
    Binary,
    /// A Debian package, installed with dpkg.
    Deb,
    /// A tar archive (e.g. CNI plugins, containerd release).
    Archive,
    /// A container image as an OCI / docker-save tarball.
    Image,
    /// A Kubernetes manifest (add-on YAML).
    Manifest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Binary => "binary",
            Kind::Deb => "deb",
            Kind::Archive => "archive",
            Kind::Image => "image",
            Kind::Manifest => "manifest",
        }
    }
}

/// Which hosts need an item: one of the inventory roles, or `all`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    All,
    Etcd,
    ControlPlane,
    Worker,
    Lb,
}

impl From<Role> for Need {
    fn from(r: Role) -> Need {
        match r {
            Role::Etcd => Need::Etcd,
            Role::ControlPlane => Need::ControlPlane,
            Role::Worker => Need::Worker,
            Role::Lb => Need::Lb,
        }
    }
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::All => "all",
            Need::Etcd => Role::Etcd.as_str(),
            Need::ControlPlane => Role::ControlPlane.as_str(),
            Need::Worker => Role::Worker.as_str(),
            Need::Lb => Role::Lb.as_str(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Install {
    /// Absolute path on the host (binaries), or a directory (archives).
    pub path: String,
    /// Octal file mode, e.g. `"0755"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    /// Where `bundle build` gets it: `https://...`, `http://...`, or `file:///abs/path`.
    pub url: String,
    /// Lowercase hex sha256 of the file. Absent only together with `hashMissing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size in bytes; filled in by `bundle build` when the input manifest does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    /// For `kind: image`: the reference the tarball's image is tagged with (e.g.
    /// `k8s.gcr.io/pause:3.2`), which nodes check before importing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub roles: Vec<Need>,
    /// Where the hash came from (a published checksum file at a commit, or how it was computed).
    pub hash_source: String,
    /// Why no published hash is given; `bundle build` refuses such an item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_missing: Option<String>,
    /// Anything a reader must know, e.g. that a build is re-stamped with another version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Written by `bundle build` only, for a .deb it stored with its xz members expanded
    /// (`bundle::deb`): the .deb as published, which the download was checked against.
    /// `sha256` and `size` then describe the stored bytes, what hosts get and check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
}

/// A .deb as published, before `bundle build` expanded its xz members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Published {
    /// The sha256 the input manifest gave (e.g. from Debian's Packages index).
    pub sha256: String,
    pub size: u64,
    /// The members stored expanded, by their published names (`data.tar.xz`): each stored
    /// member (`data.tar`) is what `xz -d` makes of it; every other byte is the published one.
    pub expanded: Vec<String>,
}

/// `sha256 <hex>, data.tar.xz stored expanded`: how `bundle ls` and `bundle diff` show it.
impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sha256 {}, {} stored expanded",
            self.sha256,
            self.expanded.join(", ")
        )
    }
}

impl Item {
    /// `name version` as shown in messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    pub fn needed_by(&self, roles: &[Role]) -> bool {
        self.roles
            .iter()
            .any(|n| *n == Need::All || roles.iter().any(|r| Need::from(*r) == *n))
    }

    /// The install mode as a number (validated by `Manifest::check`).
    pub fn mode(&self) -> Option<u32> {
        self.install
            .as_ref()?
            .mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
    }

    /// The blob path inside a bundle.
    pub fn blob_path(&self) -> Option<String> {
        self.sha256.as_deref().map(blob_path)
    }
}

pub fn blob_path(sha: &str) -> String {
    format!("blobs/sha256/{sha}")
}

/// An item name as it may reach host paths and commands: a Debian package name or a component
/// name (`kube-apiserver`, `libglib2.0-0`, `pci.ids`). No `/`, no shell metacharacters, no
/// leading `.` or `-`: it is used in file names on hosts and in dpkg checks.
pub fn check_item_name(s: &str) -> Result<(), String> {
    check_token(s, b"._+-", "name")
}

/// An item version: Debian's version characters (`1:2.2.7-1+b2`, `0.0~2023.04.11-1`) or a
/// release (`v1.20.2`). Same limits as names, plus `:` and `~`.
pub fn check_item_version(s: &str) -> Result<(), String> {
    check_token(s, b"._+:~-", "version")
}

fn check_token(s: &str, extra: &[u8], what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if s.len() > 128 {
        return Err(format!("{what} is longer than 128 characters"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "{what} `{}` must start with a letter or digit",
            crate::diag::escape(s)
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || (c.is_ascii() && extra.contains(&(*c as u8)))))
    {
        let allowed: String = extra.iter().map(|b| *b as char).collect();
        return Err(format!(
            "{what} `{}` contains {c:?}: only letters, digits and `{allowed}` are allowed",
            crate::diag::escape(s)
        ));
    }
    Ok(())
}

/// An absolute, normalised host path: no `.`/`..` components, no empty ones, no control
/// characters; `/` itself is refused.
pub fn check_host_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must be absolute".into());
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("contains a control character".into());
    }
    if p == "/" {
        return Err("is the root directory".into());
    }
    let body = p.strip_suffix('/').unwrap_or(p);
    if body[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("is not normalised (no `//`, `.` or `..` components)".into());
    }
    Ok(())
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How strictly to check a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Input of `bundle build`: sizes optional; `hashMissing` items allowed (reported by build).
    Input,
    /// Inside a bundle: every item has sha256 and size, no `hashMissing`.
    Packed,
}

/// A list of problems found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Manifest {
    pub fn from_yaml(text: &str) -> anyhow::Result<Manifest> {
        let m: Manifest =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("manifest: {e}"))?;
        Ok(m)
    }

    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_saphyr::to_string(self)
            .map_err(|e| anyhow::anyhow!("manifest: cannot serialize: {e}"))
    }

    /// Every problem of the manifest at once (empty = fine).
    pub fn check(&self, stage: Stage) -> Result<(), Problems> {
        let mut p = Vec::new();
        if self.api_version != API_VERSION {
            p.push(format!(
                "apiVersion is `{}`, expected `{API_VERSION}`",
                self.api_version
            ));
        }
        if self.name.trim().is_empty() {
            p.push("name is empty".into());
        }
        if self.version.trim().is_empty() {
            p.push("version is empty".into());
        }
        if self.items.is_empty() {
            p.push("no items".into());
        }
        let mut keys = BTreeSet::new();
        for (i, it) in self.items.iter().enumerate() {
            let at = format!(
                "items[{i}] ({} {})",
                crate::diag::escape(&it.name),
                crate::diag::escape(&it.version)
            );
            // Names and versions reach host paths (`/var/cache/clusterctl/debs/<name>_<version>.deb`)
            // and commands (dpkg checks): validated here, at load, and quoted at every use.
            if let Err(e) = check_item_name(&it.name) {
                p.push(format!("{at}: {e}"));
            }
            if let Err(e) = check_item_version(&it.version) {
                p.push(format!("{at}: {e}"));
            }
            if !keys.insert((it.name.clone(), it.version.clone())) {
                p.push(format!("{at}: duplicate item (same name and version)"));
            }
            if it.roles.is_empty() {
                p.push(format!("{at}: roles is empty (use `all` for every host)"));
            }
            if it.hash_source.trim().is_empty() {
                p.push(format!(
                    "{at}: hashSource is empty: say where the sha256 came from"
                ));
            }
            if !(it.url.starts_with("https://")
                || it.url.starts_with("http://")
                || it.url.starts_with("file://"))
            {
                p.push(format!(
                    "{at}: url `{}` must start with https://, http:// or file://",
                    it.url
                ));
            }
            match (&it.sha256, &it.hash_missing, stage) {
                (Some(h), None, _) if is_sha256_hex(h) => {}
                (Some(h), None, _) => {
                    p.push(format!("{at}: sha256 `{h}` is not 64 lowercase hex digits"))
                }
                (None, Some(_), Stage::Input) => {}
                (Some(_), Some(_), _) => p.push(format!("{at}: has both sha256 and hashMissing")),
                (None, None, _) => p.push(format!(
                    "{at}: no sha256 (give it, or hashMissing with the reason)"
                )),
                (_, Some(_), Stage::Packed) => {
                    p.push(format!("{at}: hashMissing in a packed manifest"))
                }
            }
            if stage == Stage::Packed && it.size.is_none() {
                p.push(format!("{at}: no size in a packed manifest"));
            }
            match (&it.published, stage) {
                (None, _) => {}
                (Some(_), Stage::Input) => p.push(format!(
                    "{at}: `published` is written by `bundle build`; an input manifest gives the published sha256 as `sha256`"
                )),
                (Some(_), Stage::Packed) if it.kind != Kind::Deb => {
                    p.push(format!("{at}: `published` on a {} item", it.kind.as_str()))
                }
                (Some(pb), Stage::Packed) if !is_sha256_hex(&pb.sha256) => p.push(format!(
                    "{at}: published.sha256 `{}` is not 64 lowercase hex digits",
                    crate::diag::escape(&pb.sha256)
                )),
                (Some(_), Stage::Packed) => {}
            }
            if let Some(inst) = &it.install {
                if let Err(e) = check_host_path(&inst.path) {
                    p.push(format!(
                        "{at}: install.path `{}` {e}",
                        crate::diag::escape(&inst.path)
                    ));
                }
                if let Some(m) = &inst.mode
                    && (u32::from_str_radix(m, 8)
                        .map(|v| v > 0o7777)
                        .unwrap_or(true))
                {
                    p.push(format!(
                        "{at}: install.mode `{m}` is not an octal mode such as \"0755\""
                    ));
                }
            }
            match (it.kind, &it.image) {
                (Kind::Image, None) => p.push(format!(
                    "{at}: an image needs `image`, the reference its tarball is tagged with"
                )),
                (Kind::Image, Some(r)) => {
                    if let Err(e) = crate::inventory::types::check_image_reference(r) {
                        p.push(format!(
                            "{at}: image `{}` is not an image reference: {e}",
                            crate::diag::escape(r)
                        ))
                    }
                }
                (k, Some(_)) if k != Kind::Image => {
                    p.push(format!("{at}: only an item of kind image has `image`"))
                }
                _ => {}
            }
            if it.kind == Kind::Binary
                && it.install.as_ref().and_then(|i| i.mode.as_ref()).is_none()
            {
                p.push(format!(
                    "{at}: a binary needs install.path and install.mode"
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Problems(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let y = r#"
name: t
version: "1"
items:
  - name: etcd
    version: 3.4.23
    kind: binary
    url: file:///x/etcd
    sha256: 0000000000000000000000000000000000000000000000000000000000000001
    size: 3
    install: {path: /usr/local/bin/etcd, mode: "0755"}
    roles: [etcd]
    hashSource: computed
  - name: haproxy
    version: 2.6.12
    kind: deb
    url: https://deb.example/haproxy.deb
    sha256: 0000000000000000000000000000000000000000000000000000000000000002
    size: 4
    roles: [lb]
    hashSource: Debian Packages
  - name: runc
    version: 1.1.5
    kind: binary
    url: https://x/runc
    roles: [control-plane, worker]
    hashSource: none
    hashMissing: no published hash found
    install: {path: /usr/local/bin/runc, mode: "0755"}
"#;
        Manifest::from_yaml(y).unwrap()
    }

    #[test]
    fn only_a_packed_deb_may_record_its_published_form() {
        let published = Published {
            sha256: "0".repeat(64),
            size: 4,
            expanded: vec!["data.tar.xz".into()],
        };
        let mut m = sample();
        m.items.truncate(2);
        m.items[1].published = Some(published.clone());
        assert!(m.check(Stage::Packed).is_ok());
        let e = m.check(Stage::Input).unwrap_err().to_string();
        assert!(
            e.contains("`published` is written by `bundle build`"),
            "{e}"
        );
        // Round trip through YAML.
        assert_eq!(Manifest::from_yaml(&m.to_yaml().unwrap()).unwrap(), m);
        m.items[0].published = Some(published);
        let e = m.check(Stage::Packed).unwrap_err().to_string();
        assert!(e.contains("`published` on a binary item"), "{e}");
        m.items[0].published = None;
        m.items[1].published.as_mut().unwrap().sha256 = "XY".into();
        let e = m.check(Stage::Packed).unwrap_err().to_string();
        assert!(e.contains("published.sha256 `XY`"), "{e}");
    }

    #[test]
    fn parses_and_checks_stages() {
        let m = sample();
        assert_eq!(m.api_version, API_VERSION);
        assert_eq!(m.items[0].mode(), Some(0o755));
        assert!(m.check(Stage::Input).is_ok());
        let e = m.check(Stage::Packed).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.to_string().contains("runc 1.1.5"));
    }

    #[test]
    fn rejects_bad_fields() {
        let mut m = sample();
        m.items[0].sha256 = Some("ABC".into());
        m.items[1].url = "ftp://x".into();
        m.items[1].install = Some(Install {
            path: "rel".into(),
            mode: Some("999".into()),
        });
        m.items.push(m.items[0].clone());
        let e = m.check(Stage::Input).unwrap_err().to_string();
        assert!(e.contains("not 64 lowercase hex"), "{e}");
        assert!(e.contains("must start with https://"), "{e}");
        assert!(e.contains("must be absolute"), "{e}");
        assert!(e.contains("not an octal mode"), "{e}");
        assert!(e.contains("duplicate item"), "{e}");
    }

    #[test]
    fn images_need_a_reference_and_only_images_have_one() {
        let mut m = sample();
        m.items[1].kind = Kind::Image;
        m.items[0].image = Some("k8s.gcr.io/etcd:3.4.23".into());
        let e = m.check(Stage::Input).unwrap_err().to_string();
        assert!(e.contains("haproxy 2.6.12): an image needs `image`"), "{e}");
        assert!(
            e.contains("etcd 3.4.23): only an item of kind image"),
            "{e}"
        );
        m.items[0].image = None;
        m.items[1].image = Some("k8s.gcr.io/pause:3.2".into());
        assert!(m.check(Stage::Input).is_ok());
        let back = Manifest::from_yaml(&m.to_yaml().unwrap()).unwrap();
        assert_eq!(back.items[1].image.as_deref(), Some("k8s.gcr.io/pause:3.2"));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let y = "name: t\nversion: '1'\nitems: []\nbogus: 1\n";
        assert!(Manifest::from_yaml(y).is_err());
    }

    #[test]
    fn yaml_round_trip() {
        let m = sample();
        let back = Manifest::from_yaml(&m.to_yaml().unwrap()).unwrap();
        assert_eq!(m, back);
    }

    #[test]
    fn roles_select() {
        let m = sample();
        assert!(m.items[0].needed_by(&[Role::Etcd]));
        assert!(!m.items[0].needed_by(&[Role::Worker]));
        assert!(m.items[2].needed_by(&[Role::Worker, Role::Lb]));
    }
}
