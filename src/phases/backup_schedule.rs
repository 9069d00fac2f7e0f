//! backup-schedule: `backup --schedule CALENDAR --keep N` on every etcd host: a systemd timer
//! whose service snapshots the local member into /var/backups/etcd and keeps the newest N
//! (`templates/etcd/etcd-backup.{sh,service,timer}`). Guards first: systemd on the host reads
//! the calendar, etcdctl is there. `--schedule off` removes the timer, its service and script
//! (the snapshots stay).

use crate::engine::{Action, Cmd, Context, Order, Phase, PhasePlan, Schedule, Shell};
use crate::inventory::Role;
use crate::phases::etcd::{ETCD_PKI, SCHEDULED_DIR};

pub struct BackupSchedule;

/// The description of the calendar guard: a failure of it is bad input.
pub const CALENDAR_CHECK: &str = "systemd reads the --schedule calendar";

/// Succeeds when a scheduled backup is installed on the host.
const INSTALLED: &str = "[ -e /etc/systemd/system/etcd-backup.timer ] || [ -e /etc/systemd/system/etcd-backup.service ] || [ -e /usr/local/lib/clusterctl/etcd-backup.sh ]";
/// Removes the timer, its service and script (the snapshots stay).
const UNSCHEDULE: &str = "systemctl disable --now etcd-backup.timer 2>/dev/null || true; \
     rm -f /etc/systemd/system/etcd-backup.timer /etc/systemd/system/etcd-backup.service /usr/local/lib/clusterctl/etcd-backup.sh && systemctl daemon-reload";

/// The files and timer of a scheduled backup on `host`.
pub fn schedule_actions(
    ctx: &Context,
    host: &crate::inventory::Host,
    calendar: &str,
    keep: u32,
) -> anyhow::Result<Vec<Action>> {
    let mut vars = crate::render::host_vars(ctx.inv(), host);
    vars.insert(
        "backup",
        &serde_json::json!({
            "dir": SCHEDULED_DIR,
            "keep": keep,
            "schedule": calendar,
            "pki": ETCD_PKI,
        }),
    );
    let r = |t: &str| ctx.render.render(t, &vars);
    Ok(vec![
        Action::check(
            &format!("{CALENDAR_CHECK} ({calendar:?}; see `man systemd.time`)"),
            Cmd::new("systemd-analyze")
                .arg("calendar")
                .arg(calendar)
                .raw("2>&1 >/dev/null"),
        ),
        Action::check(
            "etcdctl is installed (/usr/local/bin/etcdctl)",
            "[ -x /usr/local/bin/etcdctl ]",
        ),
        Action::dir("/usr/local/lib/clusterctl", 0o755),
        Action::dir(SCHEDULED_DIR, 0o700),
        Action::rendered(
            "/usr/local/lib/clusterctl/etcd-backup.sh",
            0o755,
            "etcd/etcd-backup.sh",
            r("etcd/etcd-backup.sh")?,
            &[],
        ),
        Action::rendered(
            "/etc/systemd/system/etcd-backup.service",
            0o644,
            "etcd/etcd-backup.service",
            r("etcd/etcd-backup.service")?,
            &[],
        ),
        Action::rendered(
            "/etc/systemd/system/etcd-backup.timer",
            0o644,
            "etcd/etcd-backup.timer",
            r("etcd/etcd-backup.timer")?,
            &["etcd-backup.timer"],
        ),
        Action::service("etcd-backup.timer"),
    ])
}

impl Phase for BackupSchedule {
    fn name(&self) -> &'static str {
        "backup-schedule"
    }
    fn summary(&self) -> &'static str {
        "a systemd timer on every etcd host that snapshots the local member and keeps the newest N (or, with off, removed)"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        let s = ctx.options.schedule.clone().unwrap_or_else(|| {
            plan.notes
                .push("shown for `backup --schedule daily --keep 7`".into());
            Schedule {
                calendar: "daily".into(),
                keep: 7,
            }
        });
        for h in ctx.hosts_where(|h| h.has(Role::Etcd)) {
            let actions = if s.is_off() {
                vec![Action::run(
                    &format!(
                        "remove etcd-backup.timer, its service and script (the snapshots in {SCHEDULED_DIR} stay)"
                    ),
                    UNSCHEDULE,
                    Some(Shell::from(INSTALLED).negated()),
                )]
            } else {
                schedule_actions(ctx, h, &s.calendar, s.keep)?
            };
            plan.host(h, actions);
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Source;
    use crate::engine::executor::converge;
    use crate::engine::executor::fake::FakeHosts;

    fn ctx(dir: &std::path::Path, calendar: &str) -> Context {
        let inv = r#"
apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  hosts:
    - {name: e1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: w1, address: 10.0.0.2, roles: [worker]}
"#;
        let options = crate::engine::RunOptions {
            schedule: Some(Schedule {
                calendar: calendar.into(),
                keep: 3,
            }),
            ..Default::default()
        };
        crate::engine::guarded_fake::test_context(inv, dir, &[], options)
    }

    use crate::engine::guarded_fake::resolve;

    #[tokio::test]
    async fn the_timer_goes_to_the_etcd_hosts_a_second_run_changes_nothing_and_off_removes_it() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path(), "*-*-* 02:30:00");
        let plan = BackupSchedule.plan(&ctx).unwrap();
        let hosts: Vec<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["e1"]);
        let timer = plan.hosts[0]
            .actions
            .iter()
            .find_map(|a| match a {
                Action::File {
                    path,
                    source: Source::Rendered { content, .. },
                    ..
                } if path.ends_with(".timer") => {
                    Some(String::from_utf8_lossy(content).into_owned())
                }
                _ => None,
            })
            .unwrap();
        assert!(timer.contains("*-*-* 02:30:00"), "{timer}");
        let fake = FakeHosts::default();
        let e1 = ctx.inv().host("e1").unwrap();
        let first = converge(&fake, e1, &plan.hosts[0], &resolve).await.unwrap();
        assert_eq!(first.files_written, 3);
        assert_eq!(first.started, ["etcd-backup.timer"]);
        let again = converge(&fake, e1, &plan.hosts[0], &resolve).await.unwrap();
        assert!(again.is_noop(), "{again:?}");
        // A killed first run (files written, timer not started) is finished by the next.
        fake.active.lock().unwrap().clear();
        let resumed = converge(&fake, e1, &plan.hosts[0], &resolve).await.unwrap();
        assert_eq!((resumed.files_written, resumed.started.len()), (0, 1));

        let off = BackupSchedule.plan(&self::ctx(d.path(), "off")).unwrap();
        let Action::Run {
            command, unless, ..
        } = &off.hosts[0].actions[0]
        else {
            panic!("{off:?}")
        };
        assert!(
            command
                .as_str()
                .contains("rm -f /etc/systemd/system/etcd-backup.timer")
        );
        assert!(
            unless
                .as_ref()
                .unwrap()
                .as_str()
                .contains("etcd-backup.timer")
        );
    }
}
