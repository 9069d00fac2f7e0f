//! Offline bundle: manifest, build (download + verify + pack), verify, sign, diff, ls.
pub mod cmd;
