//! The inventory's values as types: each is parsed and checked once, when the file is read,
//! and everything downstream takes the typed value (an `IpAddr`, an `IpNet`, a `NodeName`, a
//! `Taint`), never the string again.
//!
//! A value that does not parse is a schema error at its own line and column (the loader reads
//! on past it, so every such mistake is reported in one pass), with the fix in the project's
//! words: a type's error carries both, see [`Invalid`]. Checks that relate several fields
//! (duplicates, CIDR overlaps, role counts) stay in `validate.rs`.
//!
//! A string type here is also a promise to the renderers and command builders: it holds no
//! control character, quote or shell metacharacter its syntax does not allow. They quote it
//! anyway (`ssh::shell`, the templates' escaping filters); the types make the input narrow,
//! the quoting makes the output safe.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::diag::escape;
use crate::version::KubeVersion;

/// Why a value was refused, and how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub fix: String,
}

/// Separates message and fix inside a serde error's text; the loader splits them again
/// (`load::serde_error`). A control character, so no input can forge it (input echoed in a
/// message is escaped first).
pub const FIX_MARK: char = '\u{1}';

impl Invalid {
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> Invalid {
        Invalid {
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn into_de<E: serde::de::Error>(self) -> E {
        E::custom(format!("{}{FIX_MARK}{}", self.message, self.fix))
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

/// Reads a string and parses it with `FromStr`, turning the refusal into a located serde error.
fn de_parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = Invalid>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(Invalid::into_de)
}

/// A string type checked by `$check` (which returns the message of a refusal) with `$fix`.
/// It derefs to `str`, compares with `str` and borrows as one, so map lookups by `&str` work.
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $check:expr, $fix:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value that skips the check, so tests can show that the renderers' escaping
            /// holds on its own (defence in depth); nothing else can build one.
            #[cfg(test)]
            pub fn unchecked(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s).map_err(|m| Invalid::new(m, $fix))?;
                Ok($name(s.to_string()))
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                self.0.as_ref()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, o: &String) -> bool {
                &self.0 == o
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl From<&$name> for String {
            fn from(v: &$name) -> String {
                v.0.clone()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, o: &$name) -> bool {
                *self == o.0
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, o: &$name) -> bool {
                self == o.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_parsed(d)
            }
        }
    };
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain, as Kubernetes requires of node names.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

checked_string!(
    /// `metadata.name`: a DNS label; it also names the local state directory `clusters/<name>/`.
    ClusterName,
    |s| {
        if is_dns_label(s) {
            Ok(())
        } else {
            Err(format!("cluster name `{}` is not a DNS label", escape(s)))
        }
    },
    "use lowercase letters, digits and '-', at most 63 characters (it names clusters/<name>/)"
);

checked_string!(
    /// A host's name: the node name, the etcd member name and a certificate SAN (DNS-1123
    /// subdomain, as Kubernetes requires of node names).
    NodeName,
    |s| {
        if is_dns_subdomain(s) {
            Ok(())
        } else {
            Err(format!("host name `{}` is not a valid node name", escape(s)))
        }
    },
    "use lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain), e.g. cp1"
);

checked_string!(
    /// An SSH login name as `useradd` accepts by default.
    UserName,
    check_user,
    "write the SSH login name, e.g. root or deploy"
);

/// A login name as `useradd` accepts by default: letters, digits, `_`, `-`, `.`, starting with
/// a letter or `_`, at most 32 characters.
fn check_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && u.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a user name (letters, digits, '_', '-', '.', starting with a letter or '_')",
            escape(u)
        ))
    }
}

checked_string!(
    /// The name of an environment variable (`ssh.passphraseEnv`).
    EnvVarName,
    |s| {
        if s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            Ok(())
        } else {
            Err(format!("`{}` is not an environment variable name", escape(s)))
        }
    },
    "write a name like CLUSTERCTL_KEY_PASSPHRASE"
);

checked_string!(
    /// A host name or an IP address (where a bastion or a load balancer is reached).
    HostOrIp,
    check_host,
    "write an IP address or a DNS name"
);

/// A host name or IP address (where a load balancer or bastion is reached).
fn check_host(h: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() || (!h.is_empty() && is_dns_subdomain(&h.to_ascii_lowercase())) {
        return Ok(());
    }
    Err(format!(
        "`{}` is neither an IP address nor a DNS name",
        escape(h)
    ))
}

checked_string!(
    /// `network.clusterDomain`: a DNS domain of lowercase labels.
    DnsDomain,
    |s| {
        if !s.is_empty() && s.split('.').all(is_dns_label) {
            Ok(())
        } else {
            Err(format!("`{}` is not a DNS domain", escape(s)))
        }
    },
    "use e.g. cluster.local"
);

checked_string!(
    /// A network interface name as the kernel accepts it (`dev_valid_name`: at most 15 bytes,
    /// not `.` or `..`, no `/`, `:` or whitespace), further limited to letters, digits and
    /// `._@-`, so it is a single word in keepalived.conf and in shell commands.
    InterfaceName,
    |s| {
        let shown = escape(s);
        if s.is_empty() || s.len() > 15 {
            return Err(format!("interface `{shown}` is not 1-15 characters long"));
        }
        if s == "." || s == ".." {
            return Err(format!("`{shown}` is not a valid interface name"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
        {
            return Err(format!("interface `{shown}` contains {c:?}"));
        }
        Ok(())
    },
    "write the name of the interface holding the hosts' addresses, e.g. eth0 (at most 15 letters, digits, '.', '_', '@', '-')"
);

/// A Kubernetes qualified name (the name part of a label key): at most 63 characters,
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn is_qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key as Kubernetes validates it: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let shown = escape(k);
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_dns_subdomain(p))
    {
        return Err(format!(
            "key `{shown}`: prefix `{}` is not a DNS subdomain",
            escape(p)
        ));
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "key `{shown}`: name part must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value as Kubernetes validates it: empty, or a qualified name.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_qualified_name(v) {
        Ok(())
    } else {
        Err(format!(
            "value `{}` must be empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            escape(v)
        ))
    }
}

const FIX_LABEL: &str = "write label keys as [prefix/]name and values as up to 63 letters, digits, '-', '_', '.' (Kubernetes' rules)";

checked_string!(
    /// A node label's key, by Kubernetes' rules.
    LabelKey,
    |s| check_label_key(s).map_err(|e| format!("label {e}")),
    FIX_LABEL
);

checked_string!(
    /// A node label's value, by Kubernetes' rules (may be empty).
    LabelValue,
    |s| check_label_value(s).map_err(|e| format!("label {e}")),
    FIX_LABEL
);

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A node taint, written `key[=value]:Effect` (kubectl's syntax), e.g. `dedicated=infra:NoSchedule`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Taint {
    pub key: LabelKey,
    pub value: LabelValue,
    pub effect: TaintEffect,
}

impl FromStr for Taint {
    type Err = Invalid;
    fn from_str(t: &str) -> Result<Taint, Invalid> {
        let fix = "write taints as key[=value]:Effect, Effect one of NoSchedule, PreferNoSchedule, NoExecute";
        let shown = escape(t);
        let bad = |m: String| Invalid::new(m, fix);
        let (kv, effect) = t
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("taint `{shown}` has no effect")))?;
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            other => {
                return Err(bad(format!(
                    "taint `{shown}` has unknown effect `{}`",
                    escape(other)
                )));
            }
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(bad(format!("taint `{shown}` has no key")));
        }
        check_label_key(key).map_err(|e| bad(format!("taint `{shown}`: {e}")))?;
        check_label_value(value).map_err(|e| bad(format!("taint `{shown}`: {e}")))?;
        Ok(Taint {
            key: LabelKey(key.to_string()),
            value: LabelValue(value.to_string()),
            effect,
        })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if !self.value.is_empty() {
            write!(f, "={}", self.value)?;
        }
        write!(f, ":{}", self.effect.as_str())
    }
}

impl Serialize for Taint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Taint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

checked_string!(
    /// A component flag's name in `extraArgs` (without the leading `--`).
    FlagName,
    |k| {
        let ok = !k.is_empty()
            && k.len() <= 100
            && k.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not a flag name (lowercase letters, digits and '-', without the leading --)",
                escape(k)
            ))
        }
    },
    "write the flag's name as in the component's --help, e.g. `event-ttl: 2h`"
);

checked_string!(
    /// A flag's value: one line of printable text (it becomes one argument of a unit's
    /// ExecStart or one item of a static pod's command).
    FlagValue,
    |v| {
        if let Some(c) = v.chars().find(|c| c.is_control()) {
            return Err(format!(
                "value `{}` contains the control character {c:?}",
                escape(v)
            ));
        }
        if v.len() > 4096 {
            return Err("value is longer than 4096 characters".into());
        }
        Ok(())
    },
    "write the value on one line, without control characters"
);

/// Directories a data directory must never be: `reset` empties it, `restore` moves it.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/sbin",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/var/cache",
    "/var/backups",
    "/etc/kubernetes",
    "/var/lib/kubelet",
    "/var/lib/containerd",
];

/// An absolute, normalised host directory that clusterctl may own and delete.
pub fn check_data_dir(p: &str) -> Result<(), String> {
    crate::bundle::manifest::check_host_path(p)?;
    let p = p.trim_end_matches('/');
    if SYSTEM_DIRS.contains(&p) {
        return Err(format!(
            "`{p}` is a system directory (clusterctl's reset empties the data directory)"
        ));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@')))
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

checked_string!(
    /// A directory on the hosts that clusterctl owns (and `reset` empties): absolute,
    /// normalised, no system directory, only path-safe characters (`path()` drops a trailing `/`).
    DataDir,
    |s| check_data_dir(s).map_err(|e| {
        if e.starts_with('`') {
            e
        } else {
            format!("`{}` {e}", escape(s))
        }
    }),
    "use a directory of its own, e.g. /var/lib/etcd (the default)"
);

impl DataDir {
    pub fn path(&self) -> &Path {
        Path::new(self.0.trim_end_matches('/'))
    }
}

checked_string!(
    /// A version of a bundle item (`etcd.version`), as the bundle manifest writes them.
    ItemVersion,
    crate::bundle::manifest::check_item_version,
    "write a version the bundle holds, e.g. 3.4.23"
);

checked_string!(
    /// A registry as containerd names its `certs.d/<host>` directory: `host[:port]`, or
    /// `_default` (containerd's fallback for every registry).
    RegistryHost,
    check_registry_host,
    "key each mirror list by the registry's host[:port], e.g. docker.io"
);

/// See [`RegistryHost`].
pub fn check_registry_host(r: &str) -> Result<(), String> {
    if r == "_default" {
        return Ok(());
    }
    let (h, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!("`{}`: the port is not a number 1-65535", escape(r)));
    }
    if !is_dns_subdomain(&h.to_ascii_lowercase()) || h.is_empty() {
        return Err(format!(
            "`{}` is not a registry host (host[:port], e.g. docker.io or registry.example.cn:5000)",
            escape(r)
        ));
    }
    Ok(())
}

checked_string!(
    /// A registry mirror endpoint: `http(s)://host[:port][/path]`, nothing a TOML string or a
    /// shell could read differently.
    MirrorUrl,
    |m| {
        let shown = escape(m);
        let rest = m
            .strip_prefix("https://")
            .or_else(|| m.strip_prefix("http://"))
            .ok_or_else(|| format!("mirror `{shown}` is not a URL"))?;
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_ok = check_registry_host(hostport).is_ok()
            || hostport
                .strip_prefix('[')
                .and_then(|x| x.split_once(']'))
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !host_ok {
            return Err(format!(
                "mirror `{shown}`: host `{}` is not host[:port]",
                escape(hostport)
            ));
        }
        if let Some(c) = path.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~' | '%' | '+'))
        }) {
            return Err(format!("mirror `{shown}`: its path contains {c:?}"));
        }
        if path.split('/').any(|c| c == "..") {
            return Err(format!("mirror `{shown}`: its path contains `..`"));
        }
        Ok(())
    },
    "write the mirror as https://host[:port][/path]"
);

checked_string!(
    /// A container image reference as containerd parses it.
    ImageRef,
    |r| check_image_reference(r).map_err(|e| format!("`{}` is not an image reference: {e}", escape(r))),
    "write [registry/]repository[:tag][@sha256:digest], e.g. registry.example.cn/pause:3.2"
);

/// A container image reference as containerd parses it (distribution's reference grammar,
/// simplified): `[host[:port]/]path[:tag][@algo:hex]`, path components lowercase.
pub fn check_image_reference(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = r.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("it contains {c:?}"));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| format!("digest `{d}` is not algorithm:hex"))?;
        if algo.is_empty()
            || hex.len() < 32
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("digest `{d}` is not algorithm:hex"));
        }
    }
    // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !ok {
            return Err(format!("tag `{t}` is not valid"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry host when it looks like one (a dot, a port, or localhost).
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            || port.is_some_and(|p| p.parse::<u16>().is_err())
        {
            return Err(format!("registry `{host}` is not host[:port]"));
        }
    }
    for p in &parts {
        let ok = !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository component `{p}` must be lowercase letters, digits and . _ -"
            ));
        }
    }
    Ok(())
}

checked_string!(
    /// An eviction threshold: `N%` (0-100) or a quantity such as `500Mi`, `2Gi`, `1000`.
    Threshold,
    |v| {
        let ok = if let Some(p) = v.strip_suffix('%') {
            p.parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p))
        } else {
            let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &v[digits.len()..];
            !digits.is_empty()
                && digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
                && ["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&unit)
        };
        if ok {
            Ok(())
        } else {
            Err(format!("`{}` is not a threshold", escape(v)))
        }
    },
    "write a percentage (`5%`) or a quantity (`500Mi`, `2Gi`)"
);

/// The kubelet's eviction signals (`kubelet.evictionHard` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvictionSignal {
    MemoryAvailable,
    NodefsAvailable,
    NodefsInodesFree,
    ImagefsAvailable,
    ImagefsInodesFree,
    PidAvailable,
}

impl EvictionSignal {
    pub const ALL: [EvictionSignal; 6] = [
        EvictionSignal::MemoryAvailable,
        EvictionSignal::NodefsAvailable,
        EvictionSignal::NodefsInodesFree,
        EvictionSignal::ImagefsAvailable,
        EvictionSignal::ImagefsInodesFree,
        EvictionSignal::PidAvailable,
    ];
}

impl FromStr for EvictionSignal {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<EvictionSignal, Invalid> {
        EvictionSignal::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = EvictionSignal::ALL.iter().map(|e| e.as_str()).collect();
                Invalid::new(
                    format!("`{}` is not an eviction signal", escape(s)),
                    format!("use one of {}", all.join(", ")),
                )
            })
    }
}

impl Serialize for EvictionSignal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EvictionSignal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

impl EvictionSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionSignal::MemoryAvailable => "memory.available",
            EvictionSignal::NodefsAvailable => "nodefs.available",
            EvictionSignal::NodefsInodesFree => "nodefs.inodesFree",
            EvictionSignal::ImagefsAvailable => "imagefs.available",
            EvictionSignal::ImagefsInodesFree => "imagefs.inodesFree",
            EvictionSignal::PidAvailable => "pid.available",
        }
    }
}

impl fmt::Display for EvictionSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ha.externalEndpoint`: where the user's load balancer listens, `host:port` (`[v6]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: HostOrIp,
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = Invalid;
    fn from_str(ep: &str) -> Result<Endpoint, Invalid> {
        let fix = "write the load balancer as host:port, e.g. lb.example.internal:6443";
        let (h, p) = ep
            .rsplit_once(':')
            .ok_or_else(|| Invalid::new(format!("`{}` is not host:port", escape(ep)), fix))?;
        let port: u16 = p
            .parse()
            .map_err(|_| Invalid::new(format!("`{}` is not host:port", escape(ep)), fix))?;
        if port == 0 {
            return Err(Invalid::new("port 0 is invalid", fix));
        }
        let h = h.trim_start_matches('[').trim_end_matches(']');
        let host = h
            .parse::<HostOrIp>()
            .map_err(|e| Invalid::new(e.message, fix))?;
        Ok(Endpoint { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

/// `ha.vip.address`: the VIP and the prefix length of the hosts' subnet keepalived puts it on
/// (`10.0.0.100/16`); written without a prefix, /24 (IPv4) or /64 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipAddress {
    pub ip: IpAddr,
    pub prefix: u8,
    /// Whether the inventory wrote the prefix (it is written back the same way).
    pub prefix_written: bool,
}

impl VipAddress {
    /// The subnet the VIP is in.
    pub fn network(&self) -> IpNet {
        IpNet::new(self.ip, self.prefix)
            .expect("prefix checked on parse")
            .trunc()
    }
}

impl FromStr for VipAddress {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<VipAddress, Invalid> {
        let bad = || {
            Invalid::new(
                format!(
                    "`{}` is not an IP address (with an optional /prefix)",
                    escape(s)
                ),
                "write a free address in the hosts' subnet, e.g. 192.168.56.10 or 10.0.0.100/16",
            )
        };
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(bad)?,
            None if ip.is_ipv4() => 24,
            None => 64,
        };
        Ok(VipAddress {
            ip,
            prefix,
            prefix_written: len.is_some(),
        })
    }
}

impl fmt::Display for VipAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix_written {
            write!(f, "{}/{}", self.ip, self.prefix)
        } else {
            write!(f, "{}", self.ip)
        }
    }
}

impl Serialize for VipAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VipAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

/// A certificate lifetime (`pki.caValidity`, `pki.certValidity`): the one duration syntax
/// (`100y`, `3650d`, `8760h`), never zero; kept as written for messages and round trips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetime {
    text: String,
    duration: Duration,
}

impl Lifetime {
    pub fn duration(&self) -> Duration {
        self.duration
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Lifetime {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Lifetime, Invalid> {
        let duration = super::lifetime::parse(s)
            .map_err(|e| Invalid::new(e, "write a lifetime like 100y or 3650d"))?;
        Ok(Lifetime {
            text: s.to_string(),
            duration,
        })
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Lifetime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Lifetime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

/// A subject alternative name of a certificate: an IP address or a DNS name. The inventory's
/// `pki.extraSANs` are read as these (checked: a DNS name, `*.` allowed, or an IP), and the PKI
/// builds every certificate's list from them (`pki::spec`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP if it parses as one (brackets allowed), else a DNS name: for names clusterctl
    /// itself derives (an endpoint's host), which were checked where they were read.
    pub fn parse(s: &str) -> San {
        match s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl FromStr for San {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<San, Invalid> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        if !s.is_empty() && is_dns_subdomain(&s.trim_start_matches("*.").to_ascii_lowercase()) {
            return Ok(San::Dns(s.to_string()));
        }
        Err(Invalid::new(
            format!("`{}` is neither an IP address nor a DNS name", escape(s)),
            "write an IP address or a DNS name",
        ))
    }
}

/// As openssl prints SANs: `DNS:name`, `IP:address`.
impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// As written in the inventory: the bare name or address.
impl Serialize for San {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            San::Dns(d) => s.serialize_str(d),
            San::Ip(ip) => s.collect_str(ip),
        }
    }
}

impl<'de> Deserialize<'de> for San {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d)
    }
}

/// `spec.kubernetesVersion`, read with the `semver` crate (a leading `v` allowed, as Kubernetes
/// writes its versions); whether the minor is supported is `validate.rs`'s question.
impl<'de> Deserialize<'de> for KubeVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<KubeVersion>().map_err(|e| {
            Invalid::new(e, "write the version as v1.MINOR.PATCH, e.g. v1.20.2").into_de()
        })
    }
}

impl Serialize for KubeVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// serde `with` modules for standard types that need the project's own messages.
pub mod ip_address {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map_err(|_| {
            Invalid::new(
                format!("`{}` is not an IP address", escape(&s)),
                "write an IPv4 or IPv6 address, e.g. 192.168.56.11 (no host names, no prefix)",
            )
            .into_de()
        })
    }

    pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }
}

/// `Option<IpAddr>` with [`ip_address`]'s message.
pub mod opt_ip_address {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        super::ip_address::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }
}

/// A network in CIDR notation, its host bits zero (`10.96.0.0/12`).
pub mod cidr {
    use super::*;

    pub fn parse(s: &str) -> Result<IpNet, Invalid> {
        match s.trim().parse::<IpNet>() {
            Ok(net) if net != net.trunc() => Err(Invalid::new(
                format!("`{}` has host bits set", escape(s)),
                format!("write the network address: {}", net.trunc()),
            )),
            Ok(net) => Ok(net),
            Err(_) => Err(Invalid::new(
                format!("`{}` is not a CIDR", escape(s)),
                "write the network as address/prefix, e.g. 10.96.0.0/12",
            )),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(Invalid::into_de)
    }

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let check = check_image_reference;
        for ok in [
            "k8s.gcr.io/coredns:1.7.0",
            "k8s.gcr.io/metrics-server/metrics-server:v0.5.2",
            "registry.example.cn:5000/google_containers/coredns:1.7.0",
            "coredns/coredns",
            "busybox",
            "localhost/pause:3.2",
            "k8s.gcr.io/pause@sha256:927d98197ec1141a368550822d18fa1c60bdae27b78b0c004f705f548c07814f",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
        for (bad, why) in [
            ("", "empty"),
            ("k8s.gcr.io/coredns 1.7.0", "contains"),
            ("k8s.gcr.io/CoreDNS:1.7.0", "lowercase"),
            ("k8s.gcr.io/coredns:", "tag"),
            ("k8s.gcr.io//coredns", "component"),
            ("k8s.gcr.io/coredns@sha256:xyz", "digest"),
            ("reg.example:port/x:1", "registry"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn taints_parse_into_parts_and_print_back() {
        let t: Taint = "dedicated=infra:NoSchedule".parse().unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect),
            ("dedicated", "infra", TaintEffect::NoSchedule)
        );
        assert_eq!(t.to_string(), "dedicated=infra:NoSchedule");
        let t: Taint = "example.com/gpu:NoExecute".parse().unwrap();
        assert_eq!(t.to_string(), "example.com/gpu:NoExecute");
        for bad in [
            "gpu",
            ":NoSchedule",
            "gpu:Sometimes",
            "gpu=true:NoSchedule\nExecStartPre=/bin/sh",
            "a b:NoSchedule",
        ] {
            assert!(bad.parse::<Taint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn vip_keeps_its_prefix_apart_from_the_address() {
        let v: VipAddress = "192.168.56.10/24".parse().unwrap();
        assert_eq!(v.ip.to_string(), "192.168.56.10");
        assert_eq!(v.network().to_string(), "192.168.56.0/24");
        assert_eq!(v.to_string(), "192.168.56.10/24");
        let v: VipAddress = "10.0.0.100".parse().unwrap();
        assert_eq!((v.prefix, v.to_string().as_str()), (24, "10.0.0.100"));
        let v: VipAddress = "fd00::10".parse().unwrap();
        assert_eq!(v.prefix, 64);
        for bad in ["10.0.0.1/33", "vip.example", "10.0.0.1/", ""] {
            assert!(bad.parse::<VipAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_split_host_and_port() {
        let e: Endpoint = "lb.example.internal:6443".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("lb.example.internal", 6443));
        let e: Endpoint = "[fd00::1]:443".parse().unwrap();
        assert_eq!(
            (e.host.as_str(), e.to_string().as_str()),
            ("fd00::1", "[fd00::1]:443")
        );
        for bad in ["lb", "lb:0", "lb:http", ":6443", "$(reboot):6443", "a b:1"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_have_no_host_bits() {
        assert_eq!(
            cidr::parse("10.96.0.0/12").unwrap().to_string(),
            "10.96.0.0/12"
        );
        let e = cidr::parse("10.96.0.1/12").unwrap_err();
        assert!(e.fix.contains("10.96.0.0/12"), "{e:?}");
        assert!(cidr::parse("10.96.0.0").is_err());
    }

    #[test]
    fn string_types_refuse_what_a_shell_or_config_would_read_differently() {
        assert!("eth0; reboot".parse::<InterfaceName>().is_err());
        assert!("root; reboot".parse::<UserName>().is_err());
        assert!("../x".parse::<UserName>().is_err());
        assert!("/".parse::<DataDir>().is_err());
        assert!("/var/lib/etcd/../..".parse::<DataDir>().is_err());
        assert!("/var".parse::<DataDir>().is_err());
        assert_eq!(
            "/srv/etcd/".parse::<DataDir>().unwrap().path(),
            Path::new("/srv/etcd")
        );
        assert!("../../etc".parse::<RegistryHost>().is_err());
        assert!("https://m.example.cn/\"]\n[x".parse::<MirrorUrl>().is_err());
        assert!("2h\nExecStartPre=/bin/true".parse::<FlagValue>().is_err());
        assert!("--bad key".parse::<FlagName>().is_err());
        assert!("zone/$(id)".parse::<LabelKey>().is_err());
        assert!("Cp1".parse::<NodeName>().is_err());
        // A value may carry a fix: the loader splits it off at FIX_MARK.
        let e = "x;y".parse::<EnvVarName>().unwrap_err();
        assert!(!e.message.contains(FIX_MARK) && !e.fix.is_empty());
    }
}
