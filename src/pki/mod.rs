//! PKI: every certificate and kubeconfig a cluster needs (kubeadm names and layout).
//!
//! - `spec`: the one declarative table of certificates (`cert_list`) and `files_for_host`.
//! - `generate`: idempotent generation, external CAs, renewal (`renew`), backups.
//! - `expiry`: `check-expiration` reports over pluggable `CertSource`s.
//! - `rotation`: the local side of a CA rotation (bundles, stages, their record).
//! - `keys`, `kubeconfig`, `inspect`: key handling, kubeconfig files, reading certs back.
pub mod expiry;
pub mod generate;
pub mod inspect;
pub mod keys;
pub mod kubeconfig;
pub mod rotation;
pub mod spec;
pub mod vrrp;

pub use generate::{Action, Layout, Outcome, Select, Settings, generate, renew};
pub use spec::{CertSpec, HostFile, cert_list, files_for_host};
