//! clusterctl: install and run HA Kubernetes clusters on plain Linux hosts over SSH.
//!
//! One module per concern; the CLI (`cli`) is a thin layer over them.

pub mod bundle;
pub mod cli;
pub mod diag;
pub mod hashing;
pub mod inventory;
pub mod kube;
pub mod ops;
pub mod phases;
pub mod pki;
pub mod render;
pub mod ssh;
pub mod state;
pub mod tls;
pub mod upgrade;
pub mod version;
