//! restore-upload: the verified snapshot onto every etcd host (0600, root only: it holds every
//! secret of the cluster), after checks that need nothing stopped: etcdctl is there, and the
//! place for the old data directory is free.

use crate::engine::{Action, Cmd, Context, Mode, Order, Phase, PhasePlan, Source};

pub struct RestoreUpload;

impl Phase for RestoreUpload {
    fn name(&self) -> &'static str {
        "restore-upload"
    }
    fn summary(&self) -> &'static str {
        "the snapshot onto every etcd host (nothing stopped yet)"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let inputs = super::inputs(ctx);
        let aside = super::aside(ctx);
        for h in ctx.inv().etcd_hosts() {
            plan.host(
                h,
                vec![
                    Action::check(
                        "etcdctl is installed (/usr/local/bin/etcdctl)",
                        "[ -x /usr/local/bin/etcdctl ]",
                    ),
                    Action::check(
                        &format!("{aside} does not exist yet"),
                        Cmd::new("test").arg("!").arg("-e").arg(&aside),
                    ),
                    Action::dir(super::REMOTE_DIR, 0o700),
                    Action::File {
                        path: super::remote(ctx),
                        mode: Mode(0o600),
                        source: Source::Local {
                            path: inputs.snapshot.clone(),
                        },
                        sha256: None,
                        size: None,
                        restarts: vec![],
                    },
                ],
            );
        }
        Ok(plan)
    }
}
