//! reset-vip: with a VIP, the reset hosts' keepalived stops first, while the balancers that
//! stay still list them as VRRP peers. A stopping master sends a last advert of priority 0,
//! and a backup takes over on it at once (within its skew time, under a second). Once the
//! staying balancers have dropped a host as a peer (`reset-balancers`), they ignore its adverts
//! (`check_unicast_src`), so a VIP still held there would be lost until their master-down
//! timer ran out: about 3 s with no holder, which a client connecting then does not survive
//! within its timeout. The gate waits until the VIP is off the host and answers through a
//! balancer that stays. haproxy and the apiserver keep running here until
//! `reset-control-plane`: the new holder may still send them requests until its reload.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::engine::rotation::balancers;
use crate::engine::{Context, Executor, Order, Phase, PhasePlan, Script, Shell};
use crate::inventory::{HaMode, Host};

pub struct ResetVip;

/// The reset hosts whose keepalived may hold the VIP.
fn vip_balancers(ctx: &Context) -> Vec<&Host> {
    if ctx.inv().spec.ha.mode != HaMode::Vip {
        return Vec::new();
    }
    let lbs: Vec<&str> = balancers(ctx.inv())
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let (selected, _) = super::scope(ctx);
    selected
        .into_iter()
        .filter(|h| lbs.contains(&h.name.as_str()))
        .collect()
}

/// Succeeds when the VIP is on none of this host's interfaces and, with `port`, when a TCP
/// connection to it from here opens: another balancer holds it and its haproxy listens.
fn handed_over_check(vip: &str, port: Option<u16>) -> Shell {
    const CHECK: &str = r#"if ip -o addr show to "$1" | grep -q .; then echo "the VIP $1 is still on this host"; exit 1; fi
[ -z "$2" ] && exit 0
if ! timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; then echo "no balancer answers on the VIP $1 port $2 yet"; exit 1; fi"#;
    Script::bash(CHECK)
        .arg(vip)
        .arg(port.map(|p| p.to_string()).unwrap_or_default())
        .into()
}

impl Phase for ResetVip {
    fn name(&self) -> &'static str {
        "reset-vip"
    }
    fn summary(&self) -> &'static str {
        "with a VIP: the reset hosts' keepalived stops while the other balancers still count them as peers, so a VIP held there moves at once; gate: the VIP answers elsewhere"
    }
    fn plan(&self, ctx: &Context) -> anyhow::Result<PhasePlan> {
        let mut plan = PhasePlan::new(self, Order::Parallel);
        for h in vip_balancers(ctx) {
            plan.host(
                h,
                vec![super::stop_unit(
                    "keepalived.service",
                    "a VIP held here moves to a balancer that stays",
                )],
            );
        }
        Ok(plan)
    }
    fn verify<'a>(
        &'a self,
        ctx: &'a Context,
        host: &'a Host,
        exec: &'a dyn Executor,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let Some(vip) = ctx.inv().spec.ha.vip.as_ref() else {
                return Ok(vec![]);
            };
            // A reset of every balancer leaves nobody to take the VIP: then only its leaving
            // this host is checked.
            let stays = super::staying(ctx);
            let port = (!balancers(&stays).is_empty()).then_some(vip.port);
            let check = handed_over_check(&vip.ip_and_prefix().0.to_string(), port);
            crate::kube::wait_until(
                &format!("{}: the VIP handed over", host.name),
                Duration::from_secs(30),
                Duration::from_millis(250),
                || async {
                    let o = exec.query(host, &check).await?;
                    Ok(if o.status == 0 {
                        crate::kube::Wait::Done(())
                    } else {
                        crate::kube::Wait::Pending(format!(
                            "{}{}",
                            o.stdout.trim(),
                            o.stderr.trim()
                        ))
                    })
                },
            )
            .await?;
            Ok(vec![])
        })
    }
}

#[cfg(test)]
mod tests {
    /// Runs the check here, as a host would: (exit code, what it printed).
    fn run(vip: &str, port: Option<u16>) -> (i32, String) {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(super::handed_over_check(vip, port).as_str())
            .output()
            .unwrap();
        (
            o.status.code().unwrap(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    #[test]
    fn the_hand_over_check_waits_for_the_vip_to_leave_and_to_answer_elsewhere() {
        // An address of this machine: still here.
        let (code, out) = run("127.0.0.1", None);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("still on this host"), "{out}");
        // Not here (TEST-NET-1), and nobody to take it: done.
        assert_eq!(run("192.0.2.1", None), (0, String::new()));
        // Not here, but nothing answers on it: not yet.
        let (code, out) = run("192.0.2.1", Some(6443));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("no balancer answers"), "{out}");
    }
}
