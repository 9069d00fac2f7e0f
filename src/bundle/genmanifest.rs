//! `bundle gen-manifest`: a manifest from a tab-separated list of local files, with sha256 and
//! size computed from the files. This is how the lab script writes its manifest without
//! hand-writing YAML.
//!
//! Columns (tab-separated; `-` for none; `#` starts a comment line):
//! `name  version  kind  roles(comma)  url(file://...)  install-path  mode  hash-source  note`
//! For `kind` image, the install-path column holds the image reference instead (e.g.
//! `k8s.gcr.io/pause:3.2`).

use std::path::Path;

use anyhow::{Context, bail};

use super::archive::hash_file;
use super::manifest::{API_VERSION, Install, Item, Kind, Manifest, Need, Stage};

fn field<'a>(cols: &[&'a str], i: usize) -> Option<&'a str> {
    cols.get(i)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && *s != "-")
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    s: &str,
    what: &str,
    line: usize,
) -> anyhow::Result<T> {
    serde_saphyr::from_str(s)
        .map_err(|_| anyhow::anyhow!("line {line}: `{s}` is not a valid {what}"))
}

pub fn from_tsv(
    tsv: &str,
    name: &str,
    version: &str,
    description: Option<String>,
    platform: Option<String>,
) -> anyhow::Result<Manifest> {
    let mut items = Vec::new();
    for (i, line) in tsv.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 8 {
            bail!(
                "line {n}: {} columns, expected 8 or 9 (name version kind roles url install-path mode hash-source [note])",
                cols.len()
            );
        }
        let kind: Kind = parse_enum(
            cols[2].trim(),
            "kind (binary, deb, archive, image, manifest)",
            n,
        )?;
        let roles = cols[3]
            .split(',')
            .map(|r| parse_enum::<Need>(r.trim(), "role (all, etcd, control-plane, worker, lb)", n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let url = cols[4].trim().to_string();
        let Some(path) = url.strip_prefix("file://") else {
            bail!("line {n}: gen-manifest hashes local files only; `{url}` is not a file:// URL");
        };
        let (sha, size) = hash_file(Path::new(path)).with_context(|| format!("line {n}"))?;
        let (install, image) = if kind == Kind::Image {
            (None, field(&cols, 5).map(str::to_string))
        } else {
            let install = field(&cols, 5).map(|p| Install {
                path: p.to_string(),
                mode: field(&cols, 6).map(str::to_string),
            });
            (install, None)
        };
        items.push(Item {
            name: cols[0].trim().to_string(),
            version: cols[1].trim().to_string(),
            kind,
            url,
            sha256: Some(sha),
            size: Some(size),
            install,
            image,
            roles,
            hash_source: cols[7].trim().to_string(),
            hash_missing: None,
            note: field(&cols, 8).map(str::to_string),
            published: None,
        });
    }
    let m = Manifest {
        api_version: API_VERSION.into(),
        name: name.into(),
        version: version.into(),
        description,
        platform,
        items,
    };
    m.check(Stage::Packed)
        .map_err(|p| anyhow::anyhow!("the generated manifest has problems:\n{p}"))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_local_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("etcd");
        std::fs::write(&f, b"abc").unwrap();
        let tsv = format!(
            "# comment\netcd\t3.4.23\tbinary\tetcd\tfile://{}\t/usr/local/bin/etcd\t0755\tcomputed from Debian etcd-server\t-\n",
            f.display()
        );
        let m = from_tsv(&tsv, "lab", "1", None, None).unwrap();
        assert_eq!(
            m.items[0].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(m.items[0].size, Some(3));
        assert_eq!(m.items[0].note, None);
        let bad = tsv.replace("binary", "blob");
        assert!(
            from_tsv(&bad, "lab", "1", None, None)
                .unwrap_err()
                .to_string()
                .contains("not a valid kind")
        );
        let missing = tsv.replace(&f.display().to_string(), "/nonexistent/x");
        assert!(from_tsv(&missing, "lab", "1", None, None).is_err());
    }
}
