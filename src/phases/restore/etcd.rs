//! restore-etcd: on every etcd host the member's data directory is moved aside to
//! `<data-dir>.before-restore-<time>` (never deleted) and rebuilt with `snapshot restore`: its
//! name, peer URL, the inventory's members as the initial cluster and a NEW cluster token, so
//! the restored members can never join the old cluster's; the new directory gets the old
//! one's owner and mode 0700. Then the members start together. Gate: each member healthy.
//! Undo (a failure here): the rebuilt directory goes, the old one comes back (etcd stopped
//! first); restore-stop's undo then starts etcd and the control plane.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;

use crate::engine::{Action, Context, Executor, Order, Phase, PhasePlan, Script, Shell};
use crate::inventory::{Host, Inventory};
use crate::phases::components::start_command;

pub struct RestoreEtcd;

/// The command that moves `host`'s data directory aside and rebuilds it from `snapshot`.
pub fn rebuild_command(
    inv: &Inventory,
    host: &Host,
    snapshot: &str,
    token: &str,
    aside: &str,
) -> Shell {
    // Arguments: data dir, aside, snapshot, member name, initial cluster, token, peer URL.
    const REBUILD: &str = concat!(
        r#"set -e; data=$1 aside=$2; owner=0:0
if [ -e "$data" ]; then owner=$(stat -c %u:%g "$data"); mv "$data" "$aside"; fi
"#,
        crate::phases::etcd::snapshot_tool!(),
        r#"$u snapshot restore "$3" --name "$4" --initial-cluster "$5" --initial-cluster-token "$6" --initial-advertise-peer-urls "$7" --data-dir "$data"
chown -R "$owner" "$data"; chmod 0700 "$data""#
    );
    let initial: Vec<String> = inv
        .etcd_hosts()
        .map(|h| format!("{}=https://{}:2380", h.name, h.address))
        .collect();
    Script::new(REBUILD)
        .arg(&inv.spec.etcd.data_dir)
        .arg(aside)
        .arg(snapshot)
        .arg(&host.name)
        .arg(initial.join(","))
        .arg(token)
        .arg(format!("https://{}:2380", host.address))
        .into()
}

/// Undoes [`rebuild_command`]: the rebuilt directory (ours) goes, the old one comes back.
pub fn put_back_command(inv: &Inventory, aside: &str) -> Shell {
    Script::new(r#"if [ -e "$2" ]; then rm -rf "$1" && mv "$2" "$1"; fi"#)
        .arg(&inv.spec.etcd.data_dir)
        .arg(aside)
        .into()
}

impl Phase for RestoreEtcd {
    fn name(&self) -> &'static str {
        "restore-etcd"
    }
    fn summary(&self) -> &'static str {
        "each member's data moved aside and rebuilt from the snapshot (new cluster token); members start together; gate: healthy"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let inv = ctx.inv();
        let (remote, token, aside) = (super::remote(ctx), super::token(ctx), super::aside(ctx));
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in inv.etcd_hosts() {
            plan.host(
                h,
                vec![
                    Action::run(
                        &format!(
                            "move {} aside to {aside}, rebuild it from the snapshot (token {token})",
                            inv.spec.etcd.data_dir
                        ),
                        rebuild_command(inv, h, &remote, &token, &aside),
                        None,
                    ),
                    Action::run(
                        "start etcd",
                        start_command(inv.static_pods(), &["etcd"], super::HOLD),
                        None,
                    ),
                ],
            );
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        _ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            crate::phases::etcd::wait_healthy(exec, host, Duration::from_secs(120))
                .await
                .context("the restored member")?;
            Ok(vec![])
        })
    }
    fn undo(&self, ctx: &Context) -> anyhow::Result<Option<PhasePlan>> {
        let inv = ctx.inv();
        let sp = inv.static_pods();
        let aside = super::aside(ctx);
        let mut plan = PhasePlan::new(self, Order::Parallel);
        plan.phase = format!("{}-undo", self.name());
        plan.summary = "the old data directories put back".into();
        for h in inv.etcd_hosts() {
            plan.host(
                h,
                vec![
                    Action::run(
                        "stop etcd",
                        crate::phases::components::stop_command(sp, &["etcd"], super::HOLD),
                        None,
                    ),
                    Action::run(
                        &format!("put {aside} back"),
                        put_back_command(inv, &aside),
                        None,
                    ),
                ],
            );
        }
        Ok(Some(plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_member_is_rebuilt_with_its_own_name_and_url_and_the_new_token() {
        let yaml = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: c1}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: h1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: h2, address: 10.0.0.2, roles: [etcd, control-plane]}
    - {name: h3, address: 10.0.0.3, roles: [etcd]}
"#;
        let inv = crate::inventory::load_str(yaml, std::path::Path::new("inventory.yaml"))
            .unwrap()
            .inventory;
        let h2 = inv.host("h2").unwrap();
        let c = rebuild_command(
            &inv,
            h2,
            "/x/s.db",
            "tok-1",
            "/var/lib/etcd.before-restore-T",
        );
        // The script is fixed text; the member's values are its arguments, in this order.
        let c = c.as_str();
        assert!(
            c.ends_with(
                " sh /var/lib/etcd /var/lib/etcd.before-restore-T /x/s.db h2 \
                 h1=https://10.0.0.1:2380,h2=https://10.0.0.2:2380,h3=https://10.0.0.3:2380 \
                 tok-1 https://10.0.0.2:2380"
            ),
            "{c}"
        );
        for part in [
            r#"mv "$data" "$aside""#,
            r#"snapshot restore "$3" --name "$4" --initial-cluster "$5""#,
            r#"--initial-cluster-token "$6" --initial-advertise-peer-urls "$7" --data-dir "$data""#,
            r#"chmod 0700 "$data""#,
        ] {
            assert!(c.contains(part), "{part} in {c}");
        }
        assert!(
            !c.contains("rm "),
            "the old data is moved, never removed: {c}"
        );
        let back = put_back_command(&inv, "/var/lib/etcd.before-restore-T");
        assert!(
            back.as_str()
                .ends_with(" sh /var/lib/etcd /var/lib/etcd.before-restore-T"),
            "{back}"
        );
    }
}
