//! The phases: each one file (or folder) implementing [`crate::engine::Phase`] for one concern
//! of a host (etcd, the balancers, the control plane, ...), named in the playbooks
//! (`playbook`) and run by the engine's runner. Phases import the engine and the foundation
//! modules (inventory, pki, ssh, bundle, render, kube), never a command.

pub mod addons;
pub mod backup_schedule;
pub mod certs;
pub mod components;
pub mod control_plane;
pub mod etcd;
pub mod kernel;
pub mod kube_proxy;
pub mod kubeconfig;
pub mod kubelet;
pub mod load_balancer;
pub mod network;
pub mod pki;
pub mod playbook;
pub mod preflight;
pub mod prepare;
pub mod reset;
pub mod restore;
pub mod runtime;
pub mod static_pods;
pub mod upgrade;
pub mod verify;

use crate::engine::Phase;

/// Every phase clusterctl knows, by playbook name.
pub fn registry() -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(preflight::Preflight),
        Box::new(prepare::Prepare),
        Box::new(pki::Pki),
        Box::new(etcd::Etcd),
        Box::new(load_balancer::LoadBalancer),
        Box::new(control_plane::ControlPlane),
        Box::new(kubeconfig::Kubeconfig),
        Box::new(runtime::Runtime),
        Box::new(network::Network),
        Box::new(kubelet::Kubelet),
        Box::new(kube_proxy::KubeProxy),
        Box::new(verify::Verify),
        Box::new(addons::Addons),
        Box::new(certs::Certs(certs::Step::Renew)),
        Box::new(certs::Certs(certs::Step::Etcd)),
        Box::new(certs::Certs(certs::Step::Apiserver)),
        Box::new(certs::Certs(certs::Step::ControllerManager)),
        Box::new(certs::Certs(certs::Step::Scheduler)),
        Box::new(certs::Certs(certs::Step::Nodes)),
        Box::new(certs::Certs(certs::Step::Served)),
        Box::new(upgrade::etcd::UpgradeEtcd),
        Box::new(upgrade::control_plane::UpgradeControlPlane),
        Box::new(upgrade::nodes::UpgradeNodes),
        Box::new(upgrade::rollback::UpgradeRollback),
        Box::new(reset::drain::ResetDrain),
        Box::new(reset::vip::ResetVip),
        Box::new(reset::balancers::ResetBalancers),
        Box::new(reset::control_plane::ResetControlPlane),
        Box::new(reset::etcd::ResetEtcd),
        Box::new(reset::host::ResetHost),
        Box::new(restore::upload::RestoreUpload),
        Box::new(restore::stop::RestoreStop),
        Box::new(restore::etcd::RestoreEtcd),
        Box::new(restore::control_plane::RestoreControlPlane),
        Box::new(restore::restart::RestoreRestart),
        Box::new(restore::finish::RestoreFinish),
        Box::new(backup_schedule::BackupSchedule),
    ]
}
