//! The phases of `clusterctl reset` (`playbooks/reset.yaml`), one per file, in the order they
//! run: when the rest of the cluster stays, first the cluster's APIs and the hosts that stay,
//! then the hosts being reset.
//!
//! - [`drain`]: (cluster step) the etcd removal is checked (quorum), then each node is
//!   cordoned, drained and deleted;
//! - [`vip`]: with a VIP, the reset hosts' keepalived stops while the other balancers still
//!   count them as peers, so a VIP held there moves at once (gate: it answers elsewhere);
//! - [`balancers`]: the balancers that stay drop the reset hosts' apiserver backends (haproxy
//!   and keepalived reload, no restart);
//! - [`control_plane`]: the reset hosts' haproxy, then their apiservers, controller-managers and schedulers stop;
//! - [`etcd`]: (cluster step) leadership moves off the members to remove, then `member remove`
//!   one at a time, each against the members left;
//! - [`host`]: on each reset host, units stopped, pods killed, data backed up on the host,
//!   iptables cleaned (dump kept), files and data deleted; its journal entry marks the host as
//!   reset, so a later `join` treats it as new.
//!
//! Every step checks before it changes (a host command's `unless`, a node or member already
//! gone), so a killed reset is finished by running it again.

pub mod balancers;
pub mod control_plane;
pub mod drain;
pub mod etcd;
pub mod host;
pub mod vip;

use std::collections::BTreeSet;

use crate::diag::UserError;
use crate::engine::Context;
use crate::inventory::{Host, Inventory};

/// `systemctl stop UNIT`, skipped when it is not running.
pub(crate) fn stop_unit(unit: &str, why: &str) -> crate::engine::Action {
    crate::engine::Action::run(
        &format!("stop {unit} ({why})"),
        crate::ssh::shell::systemctl(&["stop"], [unit]),
        Some(crate::ssh::shell::systemctl(&["is-active", "-q"], [unit]).negated()),
    )
}

/// The phase whose ok journal entry for a host says the host was reset.
pub const DONE_PHASE: &str = "reset-host";

/// The hosts a reset takes out (`--hosts`, default all), and whether that is every host of
/// the inventory (then nothing of the cluster stays: no drain, no member removal).
pub fn scope(ctx: &Context) -> (Vec<&Host>, bool) {
    let selected = ctx.hosts_where(|_| true);
    let whole = selected.len() == ctx.inv().spec.hosts.len();
    (selected, whole)
}

/// The inventory of what stays: every host but the reset ones.
pub fn staying(ctx: &Context) -> Inventory {
    let (selected, _) = scope(ctx);
    let names: BTreeSet<&str> = selected.iter().map(|h| h.name.as_str()).collect();
    let mut inv = ctx.inv().clone();
    inv.spec.hosts.retain(|h| !names.contains(h.name.as_str()));
    inv
}

/// A partial reset must leave a cluster: a control-plane host and, when etcd stays, a member.
/// Bad input (nothing was done) otherwise.
pub fn check_scope(ctx: &Context) -> Result<(), UserError> {
    let (_, whole) = scope(ctx);
    if whole {
        return Ok(());
    }
    let inv_path = ctx.loaded.path.display();
    let rest = staying(ctx);
    if rest.control_plane_hosts().next().is_none() {
        return Err(UserError::bad_input(format!(
            "{inv_path}: resetting every control-plane host would leave the other hosts without a cluster: reset every host (no --hosts) or keep a control-plane host. Nothing was done."
        )));
    }
    if ctx.inv().etcd_hosts().next().is_some() && rest.etcd_hosts().next().is_none() {
        return Err(UserError::bad_input(format!(
            "{inv_path}: resetting every etcd host would remove the last etcd member while the control plane stays: reset every host (no --hosts) or keep an etcd host. Nothing was done."
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use crate::engine::guarded_fake::GuardedHosts;
    use crate::engine::runner::{ConsoleProgress, HostOutcome, Journal, Runner};
    use crate::engine::{Action, Context, Source};

    const INV: &str = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: cp2, address: 10.0.0.2, roles: [etcd, control-plane]}
    - {name: cp3, address: 10.0.0.3, roles: [etcd, control-plane]}
    - {name: w1, address: 10.0.0.4, roles: [worker]}
  ha: {mode: vip, vip: {address: 10.0.0.100, interface: eth0}}
"#;

    fn ctx(dir: &std::path::Path, hosts: &[&str]) -> Context {
        crate::engine::guarded_fake::test_context(INV, dir, hosts, Default::default())
    }

    fn runner(ctx: &Context) -> Runner {
        let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
        let pb =
            crate::phases::playbook::load("reset", Some(&ctx.state.root.join("playbooks")), &known)
                .unwrap();
        pb.runner(&Default::default()).unwrap()
    }

    use crate::engine::guarded_fake::resolve;

    fn runs(plan: &crate::engine::PhasePlan, host: &str) -> Vec<String> {
        plan.hosts
            .iter()
            .filter(|h| h.host == host)
            .flat_map(|h| &h.actions)
            .filter_map(|a| match a {
                Action::Run { description, .. } => Some(description.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_partial_reset_plans_the_cluster_steps_and_the_staying_balancers() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path(), &["cp3"]);
        let plans = runner(&ctx).plan(&ctx).unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(
            names,
            [
                "reset-drain",
                "reset-vip",
                "reset-balancers",
                "reset-control-plane",
                "reset-etcd",
                "reset-host"
            ]
        );
        assert!(
            plans[0]
                .local
                .iter()
                .any(|l| l.contains("node cp3: cordon, drain"))
        );
        assert!(plans[0].local.iter().any(|l| l.contains("quorum")));
        // The balancers that stay, without cp3's backend and peer; cp3 is not among them.
        // cp3's keepalived stops first, while cp1 and cp2 still count it as a peer.
        let vip: Vec<&str> = plans[1].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(vip, ["cp3"]);
        assert!(runs(&plans[1], "cp3")[0].starts_with("stop keepalived.service"));
        let lb: Vec<&str> = plans[2].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(lb, ["cp1", "cp2"]);
        for hp in &plans[2].hosts {
            for a in &hp.actions {
                if let Action::File {
                    source: Source::Rendered { content, .. },
                    ..
                } = a
                {
                    let text = String::from_utf8_lossy(content);
                    assert!(!text.contains("10.0.0.3"), "{}: {text}", hp.host);
                    assert!(text.contains("10.0.0.2"), "{}: {text}", hp.host);
                }
            }
        }
        let cp = runs(&plans[3], "cp3");
        assert!(cp[0].starts_with("stop keepalived.service"), "{cp:?}");
        assert!(cp[1].starts_with("stop haproxy.service"), "{cp:?}");
        assert!(cp[2].starts_with("stop kube-apiserver"), "{cp:?}");
        assert!(
            plans[4].local[0].contains("member remove cp3"),
            "{:?}",
            plans[4].local
        );
        let host = runs(&plans[5], "cp3");
        assert!(
            host.iter().any(|s| s.contains("back up the etcd data")),
            "{host:?}"
        );
        assert!(
            host.iter()
                .any(|s| s.contains("stop and disable") && s.contains("etcd.service")),
            "{host:?}"
        );
        assert_eq!(plans[5].hosts.len(), 1, "only the reset host is cleaned");
    }

    #[test]
    fn resetting_every_control_plane_host_but_not_every_host_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path(), &["cp1", "cp2", "cp3"]);
        let e = runner(&ctx).plan(&ctx).unwrap_err();
        let u = e.downcast_ref::<crate::diag::UserError>().unwrap();
        assert_eq!(u.code, crate::diag::EXIT_BAD_INPUT);
        assert!(u.to_string().contains("every control-plane host"), "{u}");
    }

    fn apply(
        ctx: &Context,
        exec: &GuardedHosts,
    ) -> anyhow::Result<crate::engine::runner::RunReport> {
        let r = runner(ctx);
        let journal = Journal::at(ctx.state.journal());
        tokio::runtime::Runtime::new().unwrap().block_on(r.apply(
            ctx,
            exec,
            &resolve,
            &ConsoleProgress,
            &journal,
        ))
    }

    #[test]
    fn a_whole_reset_runs_every_step_once_a_killed_run_resumes_and_a_second_run_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path(), &[]);
        let plans = runner(&ctx).plan(&ctx).unwrap();
        // Uninterrupted: every guarded step runs once.
        let whole = GuardedHosts::for_plans(&plans);
        let report = apply(&ctx, &whole).unwrap();
        let all = whole.log.lock().unwrap().clone();
        assert!(!all.is_empty());
        let (_, _, _) = report.totals();
        let host = report
            .phases
            .iter()
            .find(|p| p.phase == "reset-host")
            .unwrap();
        assert_eq!(host.hosts.len(), 4);
        // The journal marks every host as reset: a later join treats them as new.
        let reset = crate::phases::etcd::members::since_reset(&ctx.state.journal());
        assert!(reset.is_empty(), "{reset:?}");

        // Killed after 7 changes, then run again: the re-run does the rest, nothing twice.
        let d2 = tempfile::tempdir().unwrap();
        let ctx2 = self::ctx(d2.path(), &[]);
        let mut killed = GuardedHosts::for_plans(&plans);
        killed.budget = Some(AtomicUsize::new(7));
        let e = apply(&ctx2, &killed).unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        let before = killed.log.lock().unwrap().len();
        assert_eq!(before, 7);
        killed.budget = None;
        let r = apply(&ctx2, &killed).unwrap();
        // The run markers (phases::lock) are taken and released by every run, each with its
        // own id: they are not steps of the reset.
        let steps = |log: &[String]| -> Vec<String> {
            let mut v: Vec<String> = log
                .iter()
                .filter(|c| !c.contains(crate::engine::lock::HOST_MARKER))
                .cloned()
                .collect();
            v.sort();
            v
        };
        let log = steps(&killed.log.lock().unwrap());
        let want = steps(&all);
        assert_eq!(
            log, want,
            "the re-run finished exactly what the killed run left"
        );
        assert!(
            r.phases
                .iter()
                .all(|p| p.hosts.values().all(|o| matches!(o, HostOutcome::Done(_))))
        );

        // A second run: every step finds its work done.
        killed.log.lock().unwrap().clear();
        let again = apply(&ctx2, &killed).unwrap();
        assert!(
            steps(&killed.log.lock().unwrap()).is_empty(),
            "{:?}",
            killed.log.lock().unwrap()
        );
        for p in &again.phases {
            for (h, o) in &p.hosts {
                let HostOutcome::Done(c) = o else {
                    panic!("{h}: {o:?}")
                };
                assert!(c.is_noop(), "{} {h}: {c:?}", p.phase);
            }
        }
    }

    #[test]
    fn a_dry_run_changes_nothing_and_says_every_step() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path(), &["w1"]);
        let plans = runner(&ctx).plan(&ctx).unwrap();
        let host = GuardedHosts::for_plans(&plans);
        let dry = crate::engine::executor::DryRun::new(&host);
        let r = runner(&ctx);
        // Only the host phases: the cluster steps need the cluster's API.
        let hp = plans.iter().find(|p| p.phase == "reset-host").unwrap();
        let w1 = ctx.inv().host("w1").unwrap();
        let ch = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(crate::engine::executor::converge(
                &dry,
                w1,
                &hp.hosts[0],
                &resolve,
            ))
            .unwrap();
        drop(r);
        assert!(host.log.lock().unwrap().is_empty(), "nothing changed");
        assert_eq!(ch.commands_run, runs(hp, "w1").len());
        let rec = dry.recorded.lock().unwrap();
        assert!(
            rec.iter()
                .any(|(h, w)| h == "w1" && w == "would run: systemctl stop kubelet.service"),
            "{rec:?}"
        );
    }
}
