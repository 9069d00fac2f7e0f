//! PKI: every certificate and kubeconfig a cluster needs (kubeadm names and layout).
pub mod cmd;
