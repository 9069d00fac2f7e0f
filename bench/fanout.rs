//! Benchmark, clusterctl side (bench/run.sh compares it with plain OpenSSH and Ansible).
//! Per host, on one session: `true` x10 as separate execs; BLOB to /opt/bench/blob (0644,
//! skipped when the far sha256 matches); the clusterctl-bench.service unit (skipped when the
//! same); `systemctl daemon-reload && enable --now` only when the unit changed or the service is
//! not active. Independent work of a host runs as concurrent channels on its one session (the
//! trues, the blob, the unit and its reload); `--sequential` runs the trues one at a time. Prints one JSON line:
//! `{"hosts":N,"wall_s":F,"bytes_sent":B,"bytes_skipped":S,"restarts":R}`.
//!
//! Usage: fanout --inventory INV --file BLOB [--concurrency N] [--sequential]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use clusterctl::inventory;
use clusterctl::ssh::{ConnectOpts, ExecOpts, Pool, Target, UploadSource};
use clusterctl::state::StateDir;

const UNIT: &str = "[Unit]\nDescription=clusterctl bench\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n";

#[derive(Parser)]
struct Args {
    #[arg(long)]
    inventory: PathBuf,
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Run the 10 `true`s one after the other instead of as parallel channels on the session.
    #[arg(long)]
    sequential: bool,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: u64,
    skipped: u64,
    restarts: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let t0 = Instant::now();
    let loaded = match inventory::load(&args.inventory) {
        Ok(l) => l,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::from(2);
        }
    };
    let base = args
        .inventory
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let state = StateDir::new(&base, loaded.inventory.name());
    let targets = Target::from_inventory(&loaded, &state);
    let opts = ConnectOpts {
        concurrency: args.concurrency,
        logs_dir: Some(state.logs()),
        ..Default::default()
    };
    let (pool, errors) = Pool::connect(&targets, &opts).await;
    let mut failed = errors.len();
    for e in &errors {
        eprintln!("{e}");
    }
    let blob = args.file.clone();
    let sequential = args.sequential;
    let results = pool
        .fan_out("bench", &pool.hosts(), args.concurrency, move |host, pool| {
            let blob = UploadSource::Path(blob.clone());
            async move {
                // 10 separate execs, each its own channel on the one session; by default as
                // parallel channels (the engine's normal way), --sequential for one at a time.
                let trues = async {
                    if sequential {
                        for _ in 0..10 {
                            pool.run(&host, "true", ExecOpts::default()).await?;
                        }
                        Ok(())
                    } else {
                        let trues = (0..10).map(|_| pool.run(&host, "true", ExecOpts::default()));
                        futures::future::try_join_all(trues).await.map(|_| ())
                    }
                };
                // The blob, and independently the unit with its reload: concurrent channels.
                let blob = pool.upload(&host, &blob, "/opt/bench/blob", 0o644, None);
                let unit = async {
                    let src = UploadSource::Bytes(UNIT.as_bytes().to_vec());
                    let (up, active) = tokio::join!(
                        pool.upload(&host, &src, "/etc/systemd/system/clusterctl-bench.service", 0o644, None),
                        pool.exec(&host, "systemctl is-active clusterctl-bench.service", ExecOpts::root())
                    );
                    let up = up?;
                    let mut restarts = 0;
                    if !up.skipped || active?.stdout.trim() != "active" {
                        pool.run(
                            &host,
                            "systemctl daemon-reload && systemctl enable --now clusterctl-bench.service",
                            ExecOpts::root(),
                        )
                        .await?;
                        restarts = 1;
                    }
                    Ok::<_, clusterctl::ssh::HostError>((up, restarts))
                };
                let (trues, blob, unit) = tokio::join!(trues, blob, unit);
                trues?;
                let (blob, (unit, restarts)) = (blob?, unit?);
                let t = Tally {
                    sent: blob.bytes_sent + unit.bytes_sent,
                    skipped: blob.bytes_skipped + unit.bytes_skipped,
                    restarts,
                };
                Ok(t)
            }
        })
        .await;
    pool.close().await;
    let mut total = Tally::default();
    for r in &results {
        match &r.result {
            Ok(t) => {
                total.sent += t.sent;
                total.skipped += t.skipped;
                total.restarts += t.restarts;
            }
            Err(e) => {
                failed += 1;
                eprintln!("{e}");
            }
        }
    }
    let line = serde_json::json!({
        "hosts": targets.len(),
        "wall_s": (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "bytes_sent": total.sent,
        "bytes_skipped": total.skipped,
        "restarts": total.restarts,
    });
    println!("{line}");
    if failed > 0 {
        eprintln!("fanout: {failed} host(s) failed");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
