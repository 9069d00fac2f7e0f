//! A .deb with its xz-compressed members stored expanded, as `bundle build` packs it.
//!
//! Why: expanding xz is what a host spends most of `dpkg -i` on. Measured on a lab host with
//! the lab bundle's 29 Debian packages (a control-plane host's set): `dpkg -i` took 5.8 s
//! (3.5 s user) with the .debs as published and 3.8 s (1.0 s user) with `data.tar.xz` and
//! `control.tar.xz` expanded, containerd's 26 MB alone costing ~1 s of xz per host. Expanded
//! once at `bundle build`, the bytes travel as a zstd stream (made by the engine, like every
//! compressible item), which a host expands ~10x faster than xz.
//!
//! Nothing inside changes: each expanded member is exactly what `xz -d` makes of the published
//! one (so the package's files, its md5sums and its maintainer scripts are Debian's), the ar
//! headers keep their times, owners and modes, and the order of members is kept. dpkg reads
//! uncompressed `control.tar` and `data.tar` members (deb(5)). The published .deb's sha256,
//! against which the download was checked, stays in the packed manifest (`Item::published`).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The .deb written by [`expand_xz_members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// `<dir>/<sha256>`: content-addressed, like every verified blob of the build cache.
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The members that were expanded, by their published names (`data.tar.xz`).
    pub members: Vec<String>,
}

/// Rewrites the .deb at `src` with every `*.xz` member expanded (renamed without `.xz`) into
/// `dir`, named by its sha256. `None` when no member is xz-compressed (nothing to gain).
/// Fails when `src` is not a Debian binary package (an ar archive whose first member is
/// `debian-binary`): dpkg would refuse it on every host later.
pub fn expand_xz_members(src: &Path, dir: &Path) -> anyhow::Result<Option<Expanded>> {
    let what = || format!("{} is not a Debian package (.deb)", src.display());
    let f = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut ar = ar::Archive::new(BufReader::new(f));
    let mut members = Vec::new();
    let mut out = tempfile::Builder::new()
        .prefix(".deb-expand.")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // Expanded members are staged here first: an ar header gives the size before the bytes.
    let mut staged = tempfile::tempfile_in(dir)?;
    {
        let mut w = ar::Builder::new(BufWriter::new(out.as_file_mut()));
        let mut first = true;
        while let Some(entry) = ar.next_entry() {
            let mut entry = entry.with_context(what)?;
            let h = entry.header().clone();
            // GNU ar ends names with `/`; dpkg writes them without.
            let name = String::from_utf8_lossy(h.identifier())
                .trim_end_matches('/')
                .to_string();
            if first {
                let mut version = Vec::new();
                (&mut entry).take(64).read_to_end(&mut version)?;
                if name != "debian-binary"
                    || !version.starts_with(b"2.")
                    || version.len() as u64 != h.size()
                {
                    bail!("{}: its first member is not debian-binary 2.x", what());
                }
                first = false;
                w.append(&h, &version[..])?;
                continue;
            }
            let Some(plain) = name.strip_suffix(".xz") else {
                w.append(&h, &mut entry)
                    .with_context(|| format!("{}: member {name}", src.display()))?;
                continue;
            };
            staged.set_len(0)?;
            staged.rewind()?;
            let mut sw = BufWriter::new(&staged);
            // Every stream of the member, as `xz -d` reads it: xz(1) may write a file as
            // concatenated streams, and a single-stream decoder would stop after the first.
            let mut xz = liblzma::read::XzDecoder::new_multi_decoder(&mut entry);
            let size = io::copy(&mut xz, &mut sw).with_context(|| {
                format!("{}: member {name} does not expand as xz", src.display())
            })?;
            sw.flush()?;
            drop(sw);
            staged.rewind()?;
            let mut nh = h.clone();
            nh.set_identifier(plain.as_bytes().to_vec());
            nh.set_size(size);
            w.append(&nh, (&staged).take(size))?;
            members.push(name);
        }
        if first {
            bail!("{}: no members", what());
        }
        w.into_inner()?.flush()?;
    }
    if members.is_empty() {
        return Ok(None);
    }
    out.as_file().sync_all()?;
    let (sha256, size) = crate::hashing::hash_file(out.path())?;
    let path = dir.join(&sha256);
    out.persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(Expanded {
        path,
        sha256,
        size,
        members,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal .deb: debian-binary, then each `(name, bytes)` member (xz-compressed when the
    /// name ends in `.xz`, from the bytes given).
    fn deb(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = ar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
            h.set_mtime(1_700_000_000);
            h.set_mode(0o100644);
            w.append(&h, data).unwrap();
        };
        add("debian-binary", b"2.0\n");
        for (name, data) in members {
            if name.ends_with(".xz") {
                let mut xz = Vec::new();
                liblzma::read::XzEncoder::new(*data, 6)
                    .read_to_end(&mut xz)
                    .unwrap();
                add(name, &xz);
            } else {
                add(name, data);
            }
        }
        w.into_inner().unwrap()
    }

    fn members(bytes: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
        let mut a = ar::Archive::new(bytes);
        let mut v = Vec::new();
        while let Some(e) = a.next_entry() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(e.header().identifier()).to_string();
            let mtime = e.header().mtime();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            v.push((name, mtime, data));
        }
        v
    }

    #[test]
    fn xz_members_are_stored_expanded_and_the_rest_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let control = b"./control\0 control tar";
        let data = vec![7u8; 300_001];
        let src = dir.path().join("p.deb");
        std::fs::write(
            &src,
            deb(&[("control.tar.gz", control), ("data.tar.xz", &data)]),
        )
        .unwrap();
        let e = expand_xz_members(&src, dir.path()).unwrap().unwrap();
        assert_eq!(e.members, ["data.tar.xz"]);
        let bytes = std::fs::read(&e.path).unwrap();
        assert_eq!(crate::hashing::sha256_hex(&bytes), e.sha256);
        assert_eq!(e.path, dir.path().join(&e.sha256));
        assert_eq!(bytes.len() as u64, e.size);
        let m = members(&bytes);
        let names: Vec<&str> = m.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(names, ["debian-binary", "control.tar.gz", "data.tar"]);
        assert_eq!(m[0].2, b"2.0\n");
        assert_eq!(m[1].2, control, "other members are kept as they are");
        assert!(
            m[2].2 == data,
            "data.tar is what xz -d makes of data.tar.xz"
        );
        assert!(m.iter().all(|x| x.1 == 1_700_000_000), "times are kept");
        // The same input gives the same bytes: a rebuilt bundle does not change its hashes.
        let again = expand_xz_members(&src, dir.path()).unwrap().unwrap();
        assert_eq!(again.sha256, e.sha256);
        // No temporary file is left beside the blobs.
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec!["p.deb".to_string(), e.sha256.clone()];
        want.sort();
        assert_eq!(left, want);
    }

    /// A member made of concatenated xz streams expands whole, as `xz -d` expands it; bytes
    /// after the last stream that are not xz are refused, as `xz -d` refuses them.
    #[test]
    fn concatenated_xz_streams_expand_whole() {
        let xz = |b: &[u8]| {
            let mut v = Vec::new();
            liblzma::read::XzEncoder::new(b, 6)
                .read_to_end(&mut v)
                .unwrap();
            v
        };
        let deb_with = |member: &[u8]| {
            let mut w = ar::Builder::new(Vec::new());
            w.append(
                &ar::Header::new(b"debian-binary".to_vec(), 4),
                &b"2.0\n"[..],
            )
            .unwrap();
            w.append(
                &ar::Header::new(b"data.tar.xz".to_vec(), member.len() as u64),
                member,
            )
            .unwrap();
            w.into_inner().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("p.deb");
        let mut member = xz(b"first stream|");
        member.extend(xz(b"second stream"));
        std::fs::write(&src, deb_with(&member)).unwrap();
        let e = expand_xz_members(&src, dir.path()).unwrap().unwrap();
        let m = members(&std::fs::read(&e.path).unwrap());
        assert_eq!(m[1].0, "data.tar");
        assert_eq!(m[1].2, b"first stream|second stream");

        member.extend(b"not xz");
        std::fs::write(&src, deb_with(&member)).unwrap();
        let e = expand_xz_members(&src, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("does not expand as xz"), "{e:#}");
    }

    #[test]
    fn a_deb_without_xz_members_is_kept_as_published() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("p.deb");
        std::fs::write(&src, deb(&[("control.tar.zst", b"c"), ("data.tar", b"d")])).unwrap();
        assert_eq!(expand_xz_members(&src, dir.path()).unwrap(), None);
    }

    #[test]
    fn what_is_not_a_deb_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("p.deb");
        for bad in [b"random bytes, not an ar archive".to_vec(), {
            let mut w = ar::Builder::new(Vec::new());
            w.append(&ar::Header::new(b"data.tar.xz".to_vec(), 1), &b"x"[..])
                .unwrap();
            w.into_inner().unwrap()
        }] {
            std::fs::write(&src, bad).unwrap();
            let e = expand_xz_members(&src, dir.path()).unwrap_err();
            assert!(
                format!("{e:#}").contains("is not a Debian package"),
                "{e:#}"
            );
        }
        // A member that claims xz but is not.
        let mut w = ar::Builder::new(Vec::new());
        w.append(
            &ar::Header::new(b"debian-binary".to_vec(), 4),
            &b"2.0\n"[..],
        )
        .unwrap();
        w.append(&ar::Header::new(b"data.tar.xz".to_vec(), 3), &b"abc"[..])
            .unwrap();
        std::fs::write(&src, w.into_inner().unwrap()).unwrap();
        let e = expand_xz_members(&src, dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("does not expand as xz"), "{e:#}");
    }
}
