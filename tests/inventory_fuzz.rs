//! A bounded, seeded mutation test of the inventory loader and the plan: every string value
//! and map key of the examples (plus fields they leave out) is replaced by odd values —
//! quotes, `$()`, backticks, newlines, `;`, `../`, escape sequences, unicode, very long — and
//! the result is loaded as `inventory validate`/`plan` would. It must answer "fine" or "bad
//! input" (exit 0 or 2), never panic nor take long; and a plan of any inventory it accepts
//! must carry the odd value into shell commands only inside single quotes, and never into a
//! host path as a `..` component. Seeded: a failure reproduces; ~1–2 s in debug builds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterctl::engine::{Action, Context};
use serde_json::Value;

/// A marker that is easy to find in commands, with shell metacharacters around it.
const MARK: &str = "ZQXJ";

fn odd_values() -> Vec<String> {
    vec![
        format!("{MARK}'; touch /tmp/{MARK}; '"),
        format!("$({MARK})"),
        format!("`{MARK}`"),
        format!("a\n{MARK}=1"),
        format!("x;{MARK}"),
        format!("../../{MARK}"),
        format!("\"{MARK}\""),
        format!("{MARK}\u{1b}[2J"),
        format!("é☃{MARK}"),
        format!("{MARK}{}", "a".repeat(5000)),
        format!("{MARK} && reboot"),
        format!("{{{{ {MARK} }}}}%h$HOME"),
        format!("/{MARK}/.."),
        format!("{MARK}|nc"),
    ]
}

/// A tiny deterministic generator (xorshift64*), so a failing case can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Where a string could be: a path of keys/indexes, and whether it is a map key.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn string_slots(v: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, bool)>) {
    match v {
        Value::String(_) => out.push((path.clone(), false)),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Step::Index(i));
                string_slots(x, path, out);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                path.push(Step::Key(k.clone()));
                // Map keys the user chooses (labels, extraArgs, mirrors) are inputs too.
                out.push((path.clone(), true));
                string_slots(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Sets the string (or renames the key) at `path`; false when an earlier mutation moved it.
fn set(v: &mut Value, path: &[Step], key: bool, new: &str) -> bool {
    let (last, parents) = path.split_last().unwrap();
    let mut cur = v;
    for s in parents {
        let next = match s {
            Step::Key(k) => cur.get_mut(k.as_str()),
            Step::Index(i) => cur.get_mut(*i),
        };
        let Some(n) = next else { return false };
        cur = n;
    }
    match (last, key) {
        (Step::Key(k), true) => {
            let Some(m) = cur.as_object_mut() else {
                return false;
            };
            let Some(x) = m.remove(k) else { return false };
            m.insert(new.to_string(), x);
        }
        (Step::Key(k), false) => match cur.get_mut(k.as_str()) {
            Some(x) if x.is_string() => *x = Value::from(new),
            _ => return false,
        },
        (Step::Index(i), _) => match cur.get_mut(*i) {
            Some(x) if x.is_string() => *x = Value::from(new),
            _ => return false,
        },
    }
    true
}

/// Fields the examples leave out, added so their strings are mutated too.
fn with_optional_fields(mut v: Value) -> Value {
    let spec = v["spec"].as_object_mut().unwrap();
    let extra: Value = serde_json::json!({
        "etcd": {"dataDir": "/var/lib/etcd", "extraArgs": {"heartbeat-interval": "250"}},
        "controlPlane": {"apiserverExtraArgs": {"event-ttl": "2h"}},
        "kubelet": {"extraArgs": {"max-pods": "200"}},
        "containerRuntime": {
            "sandboxImage": "k8s.gcr.io/pause:3.2",
            "registryMirrors": {"docker.io": ["https://mirror.example.cn"]}
        },
    });
    for (k, x) in extra.as_object().unwrap() {
        spec.entry(k.clone()).or_insert(x.clone());
    }
    if let Some(h) = spec["hosts"].get_mut(0) {
        h["labels"] = serde_json::json!({"example.com/tier": "a"});
        h["taints"] = serde_json::json!(["dedicated=infra:NoSchedule"]);
    }
    v
}

/// The state of a POSIX shell lexer at each byte of `cmd`: true where the byte is inside
/// single quotes (the only place where nothing is special).
fn single_quoted(cmd: &str) -> Vec<bool> {
    let b = cmd.as_bytes();
    let mut out = vec![false; b.len()];
    let (mut sq, mut dq, mut esc) = (false, false, false);
    for (i, &c) in b.iter().enumerate() {
        if sq {
            if c == b'\'' {
                sq = false;
            } else {
                out[i] = true;
            }
            continue;
        }
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' => esc = true,
            b'\'' if !dq => sq = true,
            b'"' => dq = !dq,
            _ => {}
        }
    }
    out
}

fn check_plan(ctx: &Context, case: &str) {
    for phase in clusterctl::phases::registry() {
        let plan = match phase.plan(ctx) {
            Ok(p) => p,
            // A phase may refuse what it cannot do (e.g. a bundle item missing): that is an
            // error message, not an injection.
            Err(_) => continue,
        };
        for h in &plan.hosts {
            for a in &h.actions {
                let mut cmds: Vec<&str> = Vec::new();
                match a {
                    Action::Run {
                        command, unless, ..
                    } => {
                        cmds.push(command.as_str());
                        cmds.extend(unless.as_ref().map(|u| u.as_str()));
                    }
                    Action::Check { command, .. } => cmds.push(command.as_str()),
                    Action::File { path, .. } | Action::Directory { path, .. } => {
                        assert!(
                            !path.split('/').any(|c| c == "..")
                                && !path.chars().any(|c| c.is_control()),
                            "{case}: phase {}: host path {path:?}",
                            plan.phase
                        );
                    }
                    Action::Service { unit, .. } => assert!(
                        !unit.contains(MARK),
                        "{case}: phase {}: unit {unit:?}",
                        plan.phase
                    ),
                }
                for c in cmds {
                    let quoted = single_quoted(c);
                    for (i, _) in c.match_indices(MARK) {
                        assert!(
                            quoted[i],
                            "{case}: phase {}: the input reaches a shell unquoted: {c}",
                            plan.phase
                        );
                    }
                }
            }
        }
    }
}

fn context(loaded: clusterctl::inventory::Loaded, dir: &Path) -> Context {
    Context {
        state: clusterctl::state::StateDir::new(dir, loaded.inventory.name()),
        loaded,
        render: clusterctl::render::Renderer::new(None).unwrap(),
        host_filter: vec![],
        bundle: None,
        options: Default::default(),
        facts: Default::default(),
    }
}

#[test]
fn odd_values_in_every_string_field_are_refused_or_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let key = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let odd = odd_values();
    let mut rng = Rng(0x5EED_C0FF_EE12_3457);
    let (mut accepted, mut refused, mut cases) = (0, 0, 0);
    let start = Instant::now();
    for example in ["ha-vip.yaml", "local-proxy.yaml"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(example),
        )
        .unwrap()
        .replace("~/.ssh/id_ed25519", key.to_str().unwrap());
        let base: Value = with_optional_fields(serde_saphyr::from_str(&text).unwrap());
        let mut slots = Vec::new();
        string_slots(&base, &mut Vec::new(), &mut slots);
        // Every slot with one odd value each, then random pairs of mutations.
        let mut plan: Vec<Vec<(usize, usize)>> = (0..slots.len())
            .map(|s| vec![(s, rng.below(odd.len()))])
            .collect();
        for _ in 0..150 {
            plan.push(vec![
                (rng.below(slots.len()), rng.below(odd.len())),
                (rng.below(slots.len()), rng.below(odd.len())),
            ]);
        }
        for muts in plan {
            let mut v = base.clone();
            let mut desc = Vec::new();
            for (s, o) in muts {
                let (path, key) = &slots[s];
                // Keep the value's own text in front (`eth1` -> `eth1<odd>`) half of the time:
                // a payload behind a valid prefix must be caught too.
                let value = if rng.below(2) == 0 {
                    odd[o].clone()
                } else {
                    format!("x{}", odd[o])
                };
                if !set(&mut v, path, *key, &value) {
                    continue;
                }
                desc.push(format!(
                    "{path:?}{}={value:?}",
                    if *key { " (key)" } else { "" }
                ));
            }
            let case = format!("{example}: {}", desc.join(", "));
            let yaml = serde_saphyr::to_string(&v).unwrap();
            let t = Instant::now();
            let path = dir.path().join("inventory.yaml");
            let loaded = std::panic::catch_unwind(|| clusterctl::inventory::load_str(&yaml, &path))
                .unwrap_or_else(|_| panic!("{case}: the loader panicked"));
            cases += 1;
            match loaded {
                Ok(l) => {
                    accepted += 1;
                    if std::env::var_os("FUZZ_SHOW").is_some() {
                        eprintln!("accepted: {case}");
                    }
                    let ctx = context(l, dir.path());
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check_plan(&ctx, &case)
                    }))
                    .unwrap_or_else(|e| {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .unwrap_or_else(|| "a phase panicked".into());
                        panic!("{msg}")
                    });
                }
                Err(d) => {
                    refused += 1;
                    // What `inventory validate` prints: escaped, so no control character of
                    // the input reaches the terminal.
                    let shown = d.to_string();
                    assert!(
                        !shown.contains('\u{1b}'),
                        "{case}: an escape sequence is echoed raw: {shown}"
                    );
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{case}: took {:?}",
                t.elapsed()
            );
        }
    }
    eprintln!(
        "{cases} cases ({accepted} accepted, {refused} refused) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(refused > 0 && accepted > 0);
}
