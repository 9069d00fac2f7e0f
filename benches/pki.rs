//! Full-PKI generation time for a 100-node cluster (3 control-plane/etcd hosts + 97 workers,
//! VIP mode): median of several fresh runs, and of idempotent re-runs over an existing PKI.
//! Run: `cargo bench --bench pki` (release profile). Not a timed test: it prints figures.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use clusterctl::pki::generate::{self, Action, Layout, Settings};
use clusterctl::state::StateDir;

fn inventory(nodes: usize, algorithm: &str) -> String {
    let mut s = format!(
        "apiVersion: clusterctl.io/v1alpha1\nkind: Cluster\nmetadata: {{name: bench}}\nspec:\n  \
         kubernetesVersion: v1.20.2\n  ha: {{mode: vip, vip: {{address: 10.77.0.10}}}}\n  \
         pki: {{algorithm: {algorithm}}}\n  hosts:\n"
    );
    for i in 0..nodes {
        let (name, roles) = if i < 3 {
            (format!("cp{i}"), "[etcd, control-plane]")
        } else {
            (format!("w{i}"), "[worker]")
        };
        writeln!(
            s,
            "    - {{name: {name}, address: 10.77.{}.{}, roles: {roles}}}",
            i / 200,
            10 + i % 200
        )
        .unwrap();
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(nodes: usize, algorithm: &str, runs: usize) {
    let text = inventory(nodes, algorithm);
    let inv = clusterctl::inventory::load_str(&text, Path::new("bench.yaml"))
        .unwrap_or_else(|d| panic!("{d}"))
        .inventory;
    let settings = Settings::from_inventory(&inv, |p| p.to_path_buf()).unwrap();
    let (mut fresh, mut again) = (Vec::new(), Vec::new());
    let mut created = 0;
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(&StateDir::new(dir.path(), inv.name()));
        let t = Instant::now();
        let out = generate::generate(&inv, &settings, &layout).unwrap();
        fresh.push(t.elapsed());
        created = out.count(Action::Created);
        let t = Instant::now();
        let out = generate::generate(&inv, &settings, &layout).unwrap();
        again.push(t.elapsed());
        assert_eq!(out.count(Action::Kept), created);
    }
    println!(
        "pki {algorithm:<10} {nodes:>3} nodes: {created} certs/keys; fresh median {:>8.1} ms (min {:.1}, max {:.1}); \
         second run median {:>7.1} ms ({runs} runs)",
        median(fresh.clone()).as_secs_f64() * 1e3,
        fresh.iter().min().unwrap().as_secs_f64() * 1e3,
        fresh.iter().max().unwrap().as_secs_f64() * 1e3,
        median(again).as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; an optional number overrides the run count.
    let runs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(7);
    bench(100, "ecdsa-p256", runs);
    bench(10, "ecdsa-p256", runs);
    if std::env::var_os("PKI_BENCH_RSA").is_some() {
        bench(100, "rsa2048", 3);
    }
}
