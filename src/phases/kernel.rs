//! The kernel settings the kubelet checks at start (its `setupKernelTunables`), and whether a
//! node's kubelet runs with `protectKernelDefaults: true` (CIS 4.2.6).
//!
//! With `protectKernelDefaults: true` the kubelet refuses to start unless each of these six
//! reads its value; with `false` it writes them itself. So it is turned on only where the
//! values are there and stay there: the prepare phase writes them into a sysctl.d file and
//! applies them, preflight reads them back (with whether the host is a container and can write
//! them) as a fact, prepare reads them again after applying, and the kubelet phase plans from
//! the last read. A container (LXC, systemd-nspawn: the lab) shares the machine's kernel and
//! cannot write `/proc/sys/vm` or `/proc/sys/kernel`: the values are the machine's to change,
//! and a kubelet that refuses to start after they changed would take the node down, so `auto`
//! keeps it off there and `true` is refused by preflight.

use crate::inventory::ProtectKernelDefaults;
use crate::ssh::shell::{Script, Shell};

/// The six settings and values of Kubernetes v1.20's `setupKernelTunables`
/// (pkg/kubelet/cm/container_manager_linux.go; the values are pkg/util/sysctl's constants).
pub const KUBELET_TUNABLES: [(&str, &str); 6] = [
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];

/// Where the prepare phase writes them on a node.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-kubelet.conf";

/// The fact's name in [`crate::engine::Facts`].
pub const FACT: &str = "kernel-tunables";

/// The sysctl.d file: the six settings, one per line.
pub fn sysctl_file() -> String {
    let mut s = String::from(
        "# Written by clusterctl: the kernel settings the kubelet checks at start, so it can\n\
         # run with protectKernelDefaults: true (CIS 4.2.6).\n",
    );
    for (k, v) in KUBELET_TUNABLES {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

/// A read-only script printing `container=<systemd-detect-virt -c, or none>`, `cloud=aws` on
/// an EC2 instance (its firmware says so) and, per setting, `<name>=<value>` and `<name>
/// writable` when /proc/sys lets root write it. Nothing in it comes from the inventory.
pub fn read_back_command() -> Shell {
    read_back_in("/proc/sys", "/sys")
}

/// [`read_back_command`] against the trees at `proc_sys` and `sys` (tests use fake ones).
fn read_back_in(proc_sys: &str, sys: &str) -> Shell {
    // Arguments: the /proc/sys tree, the /sys tree, then the settings' names. EC2: Nitro
    // instances name Amazon as system and BIOS vendor, Xen ones put `amazon` in the product
    // version and `ec2` at the start of the hypervisor's UUID.
    const READ: &str = r#"r=$1; s=$2; shift 2
v=$(systemd-detect-virt -c 2>/dev/null); echo "container=${v:-none}"
cat "$s/class/dmi/id/sys_vendor" "$s/class/dmi/id/bios_vendor" "$s/class/dmi/id/product_version" "$s/hypervisor/uuid" 2>/dev/null | grep -qi -e amazon -e '^ec2' && echo "cloud=aws"
for k in "$@"; do p="$r/$(echo "$k" | tr . /)"; echo "$k=$(cat "$p" 2>/dev/null)"; [ -w "$p" ] && echo "$k writable"; done; true"#;
    Script::new(READ)
        .arg(proc_sys)
        .arg(sys)
        .args(KUBELET_TUNABLES.iter().map(|(k, _)| k))
        .into()
}

/// When the read was taken: before the prepare phase applied the settings, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Preflight,
    Applied,
}

/// One host's read-back.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelFacts {
    pub stage: Stage,
    /// `systemd-detect-virt -c`'s answer when the host is a container.
    pub container: Option<String>,
    /// The host is an EC2 instance (where the kubelet's built-in ECR credentials come from
    /// the instance metadata service).
    pub aws: bool,
    /// (name, value read) for the six, in order; an empty value when unreadable.
    pub values: Vec<(String, String)>,
    pub writable: Vec<String>,
}

impl KernelFacts {
    /// Parses [`read_back_command`]'s output.
    pub fn parse(stage: Stage, out: &str) -> KernelFacts {
        let mut f = KernelFacts {
            stage,
            container: None,
            aws: false,
            values: Vec::new(),
            writable: Vec::new(),
        };
        for line in out.lines().map(str::trim) {
            if line == "cloud=aws" {
                f.aws = true;
            } else if let Some(name) = line.strip_suffix(" writable") {
                f.writable.push(name.to_string());
            } else if let Some(v) = line.strip_prefix("container=") {
                if v != "none" && !v.is_empty() {
                    f.container = Some(v.to_string());
                }
            } else if let Some((k, v)) = line.split_once('=')
                && KUBELET_TUNABLES.iter().any(|(n, _)| *n == k)
            {
                f.values.push((k.to_string(), v.trim().to_string()));
            }
        }
        f
    }

    /// The fact as stored: its stage, then the script's output.
    pub fn to_fact(stage: Stage, out: &str) -> String {
        let s = match stage {
            Stage::Preflight => "preflight",
            Stage::Applied => "applied",
        };
        format!("stage={s}\n{out}")
    }

    pub fn from_fact(fact: &str) -> KernelFacts {
        let (first, rest) = fact.split_once('\n').unwrap_or((fact, ""));
        let stage = if first == "stage=applied" {
            Stage::Applied
        } else {
            Stage::Preflight
        };
        KernelFacts::parse(stage, rest)
    }

    /// The settings whose value differs, as `name is X, not Y`.
    pub fn mismatches(&self) -> Vec<String> {
        KUBELET_TUNABLES
            .iter()
            .filter_map(|(k, want)| {
                let have = self
                    .values
                    .iter()
                    .find(|(n, _)| n == k)
                    .map_or("", |(_, v)| v.as_str());
                (have != *want).then(|| {
                    format!(
                        "{k} is {}, not {want}",
                        if have.is_empty() { "unreadable" } else { have }
                    )
                })
            })
            .collect()
    }

    /// Why this host cannot hold the settings itself, if it cannot.
    pub fn cannot_set(&self) -> Option<String> {
        if let Some(c) = &self.container {
            return Some(format!(
                "it is a container ({c}): its kernel settings are the machine's"
            ));
        }
        let ro: Vec<&str> = KUBELET_TUNABLES
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !self.writable.iter().any(|w| w == k))
            .collect();
        (!ro.is_empty()).then(|| format!("/proc/sys is read-only for {}", ro.join(", ")))
    }
}

/// The kubelet's `protectKernelDefaults` on one node, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub on: bool,
    pub why: String,
}

/// Decides from the inventory's setting and the host's last read-back (None: not read in this
/// run, e.g. `plan`, or preflight skipped). `dry_run`: prepare applies nothing, so a read
/// taken before it stands for what it would set.
pub fn decide(
    setting: ProtectKernelDefaults,
    facts: Option<&KernelFacts>,
    dry_run: bool,
) -> Decision {
    let off = |why: String| Decision { on: false, why };
    match setting {
        ProtectKernelDefaults::Off => off("kubelet.protectKernelDefaults: false".into()),
        // Preflight refused a host that cannot hold them; prepare sets them (not warn-only).
        ProtectKernelDefaults::On => Decision {
            on: true,
            why: "kubelet.protectKernelDefaults: true".into(),
        },
        ProtectKernelDefaults::Auto => {
            let Some(f) = facts else {
                return off(
                    "auto, and the host's kernel settings were not read in this run \
                     (preflight reads them; `plan` contacts no host)"
                        .into(),
                );
            };
            if let Some(why) = f.cannot_set() {
                return off(format!("auto, and {why}"));
            }
            let bad = f.mismatches();
            match (f.stage, bad.is_empty()) {
                (_, true) => Decision {
                    on: true,
                    why: "auto: the six kernel settings the kubelet checks read back as it wants them"
                        .into(),
                },
                // Read before prepare applied them, in a dry run (which applies nothing): what
                // prepare's read-back will confirm on a host that can write them.
                (Stage::Preflight, false) if dry_run => Decision {
                    on: true,
                    why: format!(
                        "auto: the host can write the kernel settings, which the prepare phase \
                         sets ({} now)",
                        bad.join(", ")
                    ),
                },
                // A run in which prepare did not read them back (e.g. --skip-phases prepare):
                // a kubelet that protects unset values would not start.
                (Stage::Preflight, false) => off(format!(
                    "auto, and the prepare phase did not apply them in this run: {}",
                    bad.join(", ")
                )),
                (Stage::Applied, false) => off(format!(
                    "auto, and after applying {SYSCTL_FILE}: {}",
                    bad.join(", ")
                )),
            }
        }
    }
}

/// Reads `host`'s kernel settings back and keeps them as its fact for this run, taken at
/// `stage`; returns the read-back.
pub async fn read_into_facts(
    ctx: &crate::engine::Context,
    exec: &dyn crate::engine::Executor,
    host: &crate::inventory::Host,
    stage: Stage,
) -> anyhow::Result<String> {
    let o = exec.query(host, &read_back_command()).await?;
    ctx.facts
        .set(&host.name, FACT, KernelFacts::to_fact(stage, &o.stdout));
    Ok(o.stdout)
}

/// [`read_into_facts`] for each of `hosts` this run has not read yet: for a phase that renders
/// from these facts (the kubelet's unit) when preflight and prepare, which read them, are not
/// part of the run. Taken as `Stage::Applied`: an earlier run's prepare applied the settings.
pub async fn read_missing(
    ctx: &crate::engine::Context,
    exec: &dyn crate::engine::Executor,
    hosts: &[&crate::inventory::Host],
) -> anyhow::Result<()> {
    let reads = hosts
        .iter()
        .filter(|h| ctx.facts.get(&h.name, FACT).is_none())
        .map(|h| read_into_facts(ctx, exec, h, Stage::Applied));
    futures::future::try_join_all(reads).await.map(|_| ())
}

/// Whether `host` is an EC2 instance, by the read-back of this run (None: not read).
pub fn on_ec2(ctx: &crate::engine::Context, host: &str) -> Option<bool> {
    ctx.facts
        .get(host, FACT)
        .map(|f| KernelFacts::from_fact(&f).aws)
}

/// `decide` for `host` in this run: the inventory's setting and the host's fact.
pub fn decision(ctx: &crate::engine::Context, host: &str) -> Decision {
    let facts = ctx
        .facts
        .get(host, FACT)
        .map(|f| KernelFacts::from_fact(&f));
    decide(
        ctx.inv().spec.kubelet.protect_kernel_defaults,
        facts.as_ref(),
        ctx.options.dry_run,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "container=none
vm.overcommit_memory=1
vm.overcommit_memory writable
vm.panic_on_oom=0
vm.panic_on_oom writable
kernel.panic=10
kernel.panic writable
kernel.panic_on_oops=1
kernel.panic_on_oops writable
kernel.keys.root_maxkeys=1000000
kernel.keys.root_maxkeys writable
kernel.keys.root_maxbytes=25000000
kernel.keys.root_maxbytes writable
";

    /// What a lab host answers: nspawn, /proc/sys read-only but for the three files the lab
    /// bind-mounts (with the kubelet's values) and the machine's keys settings.
    const LAB: &str = "container=systemd-nspawn
vm.overcommit_memory=1
vm.overcommit_memory writable
vm.panic_on_oom=0
kernel.panic=10
kernel.panic writable
kernel.panic_on_oops=1
kernel.panic_on_oops writable
kernel.keys.root_maxkeys=1000000
kernel.keys.root_maxbytes=25000000
";

    #[test]
    fn the_values_are_the_kubelets_and_the_file_holds_them() {
        let f = sysctl_file();
        for (k, v) in KUBELET_TUNABLES {
            assert!(f.contains(&format!("\n{k} = {v}\n")), "{f}");
        }
        assert_eq!(f.lines().filter(|l| !l.starts_with('#')).count(), 6);
    }

    #[test]
    fn a_real_host_with_the_values_is_on() {
        let f = KernelFacts::parse(Stage::Applied, REAL);
        assert_eq!(f.container, None);
        assert!(f.mismatches().is_empty());
        assert!(f.cannot_set().is_none());
        assert!(decide(ProtectKernelDefaults::Auto, Some(&f), false).on);
    }

    #[test]
    fn a_container_is_off_even_when_its_values_match() {
        let f = KernelFacts::parse(Stage::Applied, LAB);
        assert!(
            f.mismatches().is_empty(),
            "the lab's values match: {:?}",
            f.mismatches()
        );
        let d = decide(ProtectKernelDefaults::Auto, Some(&f), false);
        assert!(!d.on);
        assert!(d.why.contains("container (systemd-nspawn)"), "{}", d.why);
    }

    #[test]
    fn read_only_proc_sys_is_off() {
        let out = REAL.replace("kernel.panic writable\n", "");
        let d = decide(
            ProtectKernelDefaults::Auto,
            Some(&KernelFacts::parse(Stage::Preflight, &out)),
            false,
        );
        assert!(!d.on);
        assert!(d.why.contains("read-only for kernel.panic"), "{}", d.why);
    }

    #[test]
    fn values_wrong_after_applying_are_off_and_named() {
        let out = REAL.replace("kernel.panic=10", "kernel.panic=0");
        let f = KernelFacts::parse(Stage::Applied, &out);
        assert_eq!(f.mismatches(), ["kernel.panic is 0, not 10"]);
        let d = decide(ProtectKernelDefaults::Auto, Some(&f), false);
        assert!(!d.on);
        assert!(d.why.contains("kernel.panic is 0, not 10"), "{}", d.why);
        // Read before prepare applied them: a dry run plans it on where the host can write
        // them; a run where prepare did not read them back keeps it off.
        let f = KernelFacts::parse(Stage::Preflight, &out);
        assert!(decide(ProtectKernelDefaults::Auto, Some(&f), true).on);
        let d = decide(ProtectKernelDefaults::Auto, Some(&f), false);
        assert!(!d.on && d.why.contains("did not apply them"), "{}", d.why);
    }

    #[test]
    fn forced_settings_and_unknown_facts() {
        assert!(
            !decide(
                ProtectKernelDefaults::Off,
                Some(&KernelFacts::parse(Stage::Applied, REAL)),
                false
            )
            .on
        );
        assert!(decide(ProtectKernelDefaults::On, None, false).on);
        let d = decide(ProtectKernelDefaults::Auto, None, true);
        assert!(!d.on && d.why.contains("not read"), "{}", d.why);
    }

    #[test]
    fn the_fact_round_trips_with_its_stage() {
        let f = KernelFacts::to_fact(Stage::Applied, LAB);
        assert_eq!(
            KernelFacts::from_fact(&f),
            KernelFacts::parse(Stage::Applied, LAB)
        );
        let f = KernelFacts::to_fact(Stage::Preflight, REAL);
        assert_eq!(KernelFacts::from_fact(&f).stage, Stage::Preflight);
    }

    /// The read-back script and the `unless` check run by sh against a fake /proc/sys: the
    /// script's output is what `parse` reads.
    #[test]
    fn the_scripts_read_what_parse_expects() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let fake = root.to_str().unwrap();
        let script = read_back_in(fake, &format!("{fake}/sys")).to_string();
        // The apply step's `unless` (prepare's check of a sysctl.d file) on the file this
        // module writes, with a `sysctl` that reads the fake tree.
        let conf = root.join("90-kubelet.conf");
        std::fs::write(&conf, sysctl_file()).unwrap();
        let check = crate::phases::prepare::sysctls_match(conf.to_str().unwrap()).to_string();
        let bin = root.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(
            bin.join("sysctl"),
            format!("#!/bin/sh\ncat \"{fake}/$(echo \"$2\" | tr . /)\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("sysctl"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        for (k, v) in KUBELET_TUNABLES {
            let p = root.join(k.replace('.', "/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("{v}\n")).unwrap();
        }
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(out.status.success());
        let f = KernelFacts::parse(Stage::Applied, &String::from_utf8_lossy(&out.stdout));
        assert_eq!(f.values.len(), 6, "{f:?}");
        assert!(f.mismatches().is_empty(), "{f:?}");
        assert!(!f.aws, "no firmware vendor: not EC2");
        // A Nitro instance's firmware, then a Xen one's hypervisor UUID.
        let aws = |file: &str, text: &str| {
            let p = root.join("sys").join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("PATH", "/usr/bin:/bin")
                .output()
                .unwrap();
            std::fs::remove_file(&p).unwrap();
            KernelFacts::parse(Stage::Applied, &String::from_utf8_lossy(&out.stdout)).aws
        };
        assert!(!aws("class/dmi/id/sys_vendor", "QEMU\n"));
        assert!(aws("class/dmi/id/sys_vendor", "Amazon EC2\n"));
        assert!(aws(
            "hypervisor/uuid",
            "ec2e1916-9099-7caf-fd21-012345abcdef\n"
        ));
        let ok = |c: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .env("PATH", &path)
                .status()
                .unwrap()
                .success()
        };
        assert!(ok(&check));
        std::fs::write(root.join("kernel/panic"), "0\n").unwrap();
        assert!(!ok(&check), "a changed value fails the check");
    }

    const INV: &str = "apiVersion: clusterctl.io/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  kubernetesVersion: v1.20.2
  kubelet: {protectKernelDefaults: SETTING}
  hosts:
    - {name: cp1, address: 10.0.0.1, roles: [etcd, control-plane]}
    - {name: w1, address: 10.0.0.2, roles: [worker]}
";

    fn ctx(dir: &std::path::Path, setting: &str) -> crate::engine::Context {
        crate::engine::guarded_fake::test_context(
            &INV.replace("SETTING", setting),
            dir,
            &[],
            Default::default(),
        )
    }

    fn plan(ctx: &crate::engine::Context, phase: &str) -> crate::engine::PhasePlan {
        crate::phases::registry()
            .into_iter()
            .find(|p| p.name() == phase)
            .unwrap()
            .plan(ctx)
            .unwrap()
    }

    /// The rendered file at `path` in `host`'s plan, if planned.
    fn file(plan: &crate::engine::PhasePlan, host: &str, path: &str) -> Option<String> {
        plan.hosts
            .iter()
            .filter(|h| h.host == host)
            .flat_map(|h| &h.actions)
            .find_map(|a| match a {
                crate::engine::Action::File {
                    path: p,
                    source: crate::engine::Source::Rendered { content, .. },
                    ..
                } if p == path => Some(String::from_utf8_lossy(content).into_owned()),
                _ => None,
            })
    }

    #[test]
    fn the_inventory_takes_auto_true_false_and_refuses_the_rest() {
        let d = tempfile::tempdir().unwrap();
        for (text, want) in [
            ("auto", ProtectKernelDefaults::Auto),
            ("true", ProtectKernelDefaults::On),
            ("\"true\"", ProtectKernelDefaults::On),
            ("false", ProtectKernelDefaults::Off),
        ] {
            let c = ctx(d.path(), text);
            assert_eq!(c.inv().spec.kubelet.protect_kernel_defaults, want, "{text}");
        }
        let e = crate::inventory::load_str(
            &INV.replace("SETTING", "maybe"),
            &d.path().join("inventory.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must be auto, true or false"), "{e}");
        // Absent: auto.
        let c = crate::engine::guarded_fake::test_context(
            &INV.replace("  kubelet: {protectKernelDefaults: SETTING}\n", ""),
            d.path(),
            &[],
            Default::default(),
        );
        assert!(c.inv().spec.kubelet.protect_kernel_defaults.is_auto());
    }

    /// Facts in hand (as preflight and prepare leave them): the real host's kubelet gets
    /// protectKernelDefaults and its sysctl.d file, the container neither, and the plan says
    /// why per host.
    #[test]
    fn the_kubelet_config_follows_each_hosts_read_back() {
        let d = tempfile::tempdir().unwrap();
        let c = ctx(d.path(), "auto");
        c.facts
            .set("cp1", FACT, KernelFacts::to_fact(Stage::Applied, LAB));
        c.facts
            .set("w1", FACT, KernelFacts::to_fact(Stage::Applied, REAL));
        let kubelet = plan(&c, "kubelet");
        let cfg = |h: &str| file(&kubelet, h, "/var/lib/kubelet/config.yaml").unwrap();
        assert!(
            cfg("w1").contains("\nprotectKernelDefaults: true\n"),
            "{}",
            cfg("w1")
        );
        assert!(
            !cfg("cp1").contains("protectKernelDefaults"),
            "{}",
            cfg("cp1")
        );
        let notes = kubelet.notes.join("\n");
        assert!(
            notes.contains(
                "cp1: protectKernelDefaults off: auto, and it is a container (systemd-nspawn)"
            ),
            "{notes}"
        );
        assert!(
            notes.contains("w1: protectKernelDefaults on: auto"),
            "{notes}"
        );
        // Both read as no EC2 instance: their kubelets skip the EC2 metadata lookup; on an
        // instance, or unread, it stays (the ECR credentials come from there).
        const OFF: &str = "\nEnvironment=AWS_EC2_METADATA_DISABLED=true\n";
        let unit = |p: &crate::engine::PhasePlan, h: &str| {
            file(p, h, "/etc/systemd/system/kubelet.service").unwrap()
        };
        assert!(
            unit(&kubelet, "w1").contains(OFF),
            "{}",
            unit(&kubelet, "w1")
        );
        assert!(unit(&kubelet, "cp1").contains(OFF));
        c.facts.set(
            "w1",
            FACT,
            KernelFacts::to_fact(Stage::Applied, &format!("cloud=aws\n{REAL}")),
        );
        assert!(!unit(&plan(&c, "kubelet"), "w1").contains("AWS_EC2"));
        assert!(
            !unit(&plan(&ctx(d.path(), "auto"), "kubelet"), "w1").contains("AWS_EC2"),
            "not read in this run"
        );
        let prepare = plan(&c, "prepare");
        assert_eq!(
            file(&prepare, "w1", SYSCTL_FILE).as_deref(),
            Some(sysctl_file().as_str())
        );
        assert!(file(&prepare, "cp1", SYSCTL_FILE).is_none());
        assert!(
            prepare.notes.iter().any(|n| n
                .starts_with("cp1: /etc/sysctl.d/90-kubelet.conf not written: it is a container")),
            "{:?}",
            prepare.notes
        );
        // false: neither the file nor the setting, anywhere.
        let c = ctx(d.path(), "false");
        c.facts
            .set("w1", FACT, KernelFacts::to_fact(Stage::Applied, REAL));
        assert!(file(&plan(&c, "prepare"), "w1", SYSCTL_FILE).is_none());
        assert!(
            !file(&plan(&c, "kubelet"), "w1", "/var/lib/kubelet/config.yaml")
                .unwrap()
                .contains("protectKernelDefaults")
        );
    }

    /// A run without preflight and prepare (`init --only-phase kubelet`): the kubelet phase
    /// reads the kernel facts itself before it plans, so it renders the unit `init` renders
    /// (off EC2: the metadata lookup off) instead of rewriting it and restarting the kubelet;
    /// a host already read in the run is not read again.
    #[test]
    fn the_kubelet_phase_reads_the_facts_a_run_without_preflight_lacks() {
        use crate::engine::Phase as _;
        const OFF: &str = "\nEnvironment=AWS_EC2_METADATA_DISABLED=true\n";
        let d = tempfile::tempdir().unwrap();
        let c = ctx(d.path(), "auto");
        let unit = |c: &crate::engine::Context, h: &str| {
            file(
                &plan(c, "kubelet"),
                h,
                "/etc/systemd/system/kubelet.service",
            )
            .unwrap()
        };
        assert!(!unit(&c, "w1").contains(OFF), "unread: the lookup stays");
        let on_ec2 = KernelFacts::to_fact(Stage::Applied, &format!("cloud=aws\n{REAL}"));
        c.facts.set("cp1", FACT, on_ec2.clone());
        // The fake host answers the read-back with nothing: no EC2 firmware.
        let exec = crate::engine::executor::fake::FakeHosts::default();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(crate::phases::kubelet::Kubelet.gather(&c, &exec))
            .unwrap();
        assert!(unit(&c, "w1").contains(OFF), "{}", unit(&c, "w1"));
        assert_eq!(c.facts.get("cp1", FACT), Some(on_ec2), "cp1 read again");
        assert!(!unit(&c, "cp1").contains(OFF));
    }

    /// `true` on hosts that cannot hold the settings: preflight refuses every such host, the
    /// run answers bad input (exit 2), and nothing was written on any host.
    #[test]
    fn forced_on_where_the_host_cannot_is_refused_by_preflight_with_exit_2() {
        use crate::engine::executor::fake::FakeHosts;
        let d = tempfile::tempdir().unwrap();
        let c = ctx(d.path(), "true");
        let known: Vec<&str> = crate::phases::registry().iter().map(|p| p.name()).collect();
        let runner = crate::phases::playbook::load("init", None, &known)
            .unwrap()
            .runner(&Default::default())
            .unwrap();
        // The fake host answers the read-back with nothing: /proc/sys unreadable, unwritable.
        let exec = FakeHosts::default();
        let journal = crate::engine::runner::Journal::disabled();
        let e = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(runner.apply(
                &c,
                &exec,
                &crate::engine::guarded_fake::resolve,
                &crate::engine::runner::ConsoleProgress,
                &journal,
            ))
            .unwrap_err();
        let u = e.downcast_ref::<crate::diag::UserError>().unwrap();
        assert_eq!(u.code, crate::diag::EXIT_BAD_INPUT, "{u}");
        assert_eq!(u.phase.as_deref(), Some("preflight"));
        for h in ["cp1", "w1"] {
            assert!(
                u.message.contains(&format!(
                    "host {h}: kubelet.protectKernelDefaults is true, but /proc/sys is read-only"
                )),
                "{}",
                u.message
            );
        }
        assert!(
            u.message
                .contains("fix: set kubelet.protectKernelDefaults: auto")
        );
        assert!(
            exec.files
                .lock()
                .unwrap()
                .keys()
                .all(|(_, p)| p.starts_with("/var/lib/clusterctl/")),
            "only the run marker may be written: {:?}",
            exec.files.lock().unwrap().keys()
        );
        assert!(
            exec.dirs
                .lock()
                .unwrap()
                .keys()
                .all(|(_, p)| p.starts_with("/var/lib/clusterctl")),
            "{:?}",
            exec.dirs.lock().unwrap()
        );
        // auto on the same hosts: preflight passes, the kubelet stays off.
        let c = ctx(d.path(), "auto");
        assert!(!decision(&c, "w1").on);
    }
}
