//! Offline bundle: manifest, build (download + verify + pack), verify, sign, diff, ls, and the
//! per-host selection used by `init` to send each host only what its roles need.
pub mod archive;
pub mod build;
pub mod deb;
pub mod diff;
pub mod genmanifest;
pub mod keys;
pub mod manifest;
pub mod select;
pub mod trust;

pub use archive::{Head, VerifyReport, read_head, read_item, stream_items, verify};
pub use manifest::{Item, Kind, Manifest, Need};
pub use select::{items_for_roles, to_transfer};
pub use trust::Trust;

use std::path::Path;

/// A manifest from either a bundle file or a manifest YAML file (for `diff` and `ls`).
pub fn load_manifest_any(path: &Path) -> anyhow::Result<Manifest> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let n = f.read(&mut magic)?;
    if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Ok(read_head(path)?.manifest);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Manifest::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
