//! `wharf-scale-bench`: write throughput of one, two and three relay processes sharing one
//! PostgreSQL server (started here, as the scale-out suites start it), beside one relay on
//! SQLite. Two workloads, each for `--seconds`: `one log` (every writer appends to the same
//! log, so the relays take turns at its row lock) and `tenants` (each writer has a tenant of
//! its own). Writers are spread round-robin over the relays; each keeps 8 writes in flight,
//! `--batch` entries of 100 bytes per write. "commit × writes": the mean time of one group
//! commit and the mean number of writes it held, from the relays' `/metrics`. Everything runs on this machine: the relays, the
//! database and the writers share its cores.
//!
//! `cargo build --release -p wharf-relay -p wharf-tests --bin wharf-scale-bench`
//! `target/release/wharf-scale-bench [--seconds 5] [--writers 24] [--batch 1] [--nodes 1,2,3]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wharf_protocol::RelayMsg;
use wharf_tests::postgres::PgServer;
use wharf_tests::{entries, ChildRelay, Client};

struct Args {
    seconds: u64,
    writers: u32,
    batch: usize,
    nodes: Vec<usize>,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context(name.to_owned())?.parse()?),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().collect();
    let nodes: String = arg(&raw, "--nodes", "1,2,3".to_owned())?;
    let args = Args {
        seconds: arg(&raw, "--seconds", 5)?,
        writers: arg(&raw, "--writers", 24)?,
        batch: arg(&raw, "--batch", 1)?,
        nodes: nodes.split(',').map(str::parse).collect::<Result<_, _>>()?,
    };
    let pg = PgServer::start()?;
    println!(
        "wharf-scale-bench: {} writers, 8 writes in flight each, {} entr{} of 100 bytes per write, {} s per run",
        args.writers,
        args.batch,
        if args.batch == 1 { "y" } else { "ies" },
        args.seconds
    );
    println!();
    println!("| store | relays | one log: entries/s | one log: p50 / p99 ack | one log: commit × writes | tenants: entries/s | tenants: p50 / p99 ack | tenants: commit × writes |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let sqlite = run(None, 1, &args).await?;
    println!("| SQLite | 1 | {} |", sqlite.join(" | "));
    for &n in &args.nodes {
        let url = pg.database().await?;
        let row = run(Some(&url), n, &args).await?;
        println!("| Postgres | {n} | {} |", row.join(" | "));
    }
    Ok(())
}

/// Both workloads on `nodes` fresh relays; the table cells.
async fn run(store: Option<&str>, nodes: usize, args: &Args) -> Result<Vec<String>> {
    let mut relays = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..nodes {
        let dir = tempfile::tempdir()?;
        let mut flags = Vec::new();
        if let Some(url) = store {
            flags = vec!["--store", url];
        }
        relays.push(ChildRelay::start_with_args(dir.path(), &flags, &[]).await?);
        dirs.push(dir);
    }
    let mut cells = Vec::new();
    for shared_log in [true, false] {
        let before = commit_stats(&relays).await?;
        let (rate, p50, p99) = workload(&relays, shared_log, args).await?;
        let after = commit_stats(&relays).await?;
        let commits = after.1 - before.1;
        let per_commit_ms = (after.0 - before.0) / commits.max(1.0) * 1000.0;
        let writes_per_commit = (after.2 - before.2) / commits.max(1.0);
        cells.push(format!("{rate:.0}"));
        cells.push(format!("{p50:.1} / {p99:.1} ms"));
        cells.push(format!("{per_commit_ms:.1} ms × {writes_per_commit:.0}"));
    }
    for mut r in relays {
        r.child.start_kill()?;
        r.child.wait().await?;
    }
    Ok(cells)
}

/// Summed over the relays: seconds spent in group commits, commits, and writes they held
/// (`wharf_commit_duration_seconds`, `wharf_commit_batch_writes`).
async fn commit_stats(relays: &[ChildRelay]) -> Result<(f64, f64, f64)> {
    let mut total = (0.0, 0.0, 0.0);
    for r in relays {
        let text = wharf_tests::get(r.addr, "/metrics", &[]).await?.text();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        total.0 += value("wharf_commit_duration_seconds_sum ");
        total.1 += value("wharf_commit_duration_seconds_count ");
        total.2 += value("wharf_commit_batch_writes_sum ");
    }
    Ok(total)
}

/// Entries acked per second, and the Ack latency's median and 99th percentile (ms).
async fn workload(relays: &[ChildRelay], shared_log: bool, args: &Args) -> Result<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let run_id = rand::random::<u32>() % 1_000_000;
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let relay = &relays[w as usize % relays.len()];
        let tenant = if shared_log {
            format!("one-{run_id}")
        } else {
            format!("t{w}-{run_id}")
        };
        let url = relay.url(&tenant);
        let (stop, acked, batch) = (stop.clone(), acked.clone(), args.batch);
        tasks.push(tokio::spawn(async move {
            writer(url, w, batch, stop, acked).await
        }));
    }
    // Warm up (connections, tenants opened), then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start_count = acked.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let count = acked.load(Ordering::Relaxed) - start_count;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    for t in tasks {
        latency.add(t.await??)?;
    }
    Ok((
        count as f64 / elapsed,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

/// Writes until `stop`, 8 writes in flight; the Ack latencies (µs).
async fn writer(
    url: String,
    w: u32,
    batch: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Result<hdrhistogram::Histogram<u64>> {
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut c = Client::connect(&url).await?;
    let mut sent: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let mut n = 0u32;
    loop {
        while sent.len() < 8 && !stop.load(Ordering::Relaxed) {
            let id = c
                .write("log", entries(w * 10_000_000 + n, batch, 100))
                .await?;
            sent.insert(id.to_string(), Instant::now());
            n += 1;
        }
        if sent.is_empty() {
            return Ok(latency);
        }
        if let RelayMsg::Ack { id, .. } = c.recv().await? {
            if let Some(at) = sent.remove(&id.to_string()) {
                latency.record(at.elapsed().as_micros() as u64)?;
                acked.fetch_add(batch as u64, Ordering::Relaxed);
            }
        }
    }
}
