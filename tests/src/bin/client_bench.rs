//! `wharf-client-bench`: the client SDK's headline numbers against a real relay (in this
//! process, on 127.0.0.1:0, `synchronous=FULL` on both sides) over real WebSockets.
//!
//! `cargo run --release -p wharf-tests --bin wharf-client-bench [-- --quick]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use wharf_client::{Client, Identity, NewEvent};
use wharf_tests::TestRelay;

#[derive(serde::Serialize)]
struct Payload<'a> {
    text: &'a str,
    n: u64,
}

#[derive(serde::Deserialize)]
struct Sample {
    n: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start().await;
    let url = format!("ws://{}", relay.addr);
    println!(
        "wharf-client-bench: relay and clients in-process, journals and relay data in {}",
        dir.path().display()
    );

    let n = if quick { 20_000 } else { 100_000 };
    for (label, batch) in [("append_many(100)", 100usize), ("append_many(1000)", 1000)] {
        let (rate, append_rate) = throughput(&url, dir.path(), n, batch, label).await?;
        println!("append+sync, one client, {label:<18} {rate:>9.0} entries/s acked by the relay (appends alone {append_rate:.0}/s)");
    }
    let (rate, _) =
        concurrent_appends(&url, dir.path(), if quick { 5_000 } else { 20_000 }, 64).await?;
    println!(
        "append+sync, one client, 64 tasks x append(): {rate:>7.0} entries/s acked by the relay"
    );

    let (h, appends) = latency(&url, dir.path(), if quick { 300 } else { 2000 }).await?;
    println!(
        "append() alone (durable, FULL):         p50 {:.3} ms, p99 {:.3} ms",
        appends.value_at_quantile(0.5) as f64 / 1000.0,
        appends.value_at_quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "append on A -> delivered on B:          p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    relay.shutdown().await;
    Ok(())
}

async fn client(url: &str, dir: &std::path::Path, name: &str, id: &Identity) -> Result<Client> {
    // One tenant (one relay database) per scenario, so scenarios do not share a WAL.
    Ok(Client::builder(
        url,
        format!("bench-{}", name.split('-').next().unwrap_or(name)),
    )
    .identity(id.clone())
    .journal(dir.join(format!("{name}.db")))
    .open()
    .await?)
}

fn payload(n: u64) -> Vec<u8> {
    let text = "x".repeat(200);
    rmp_serde::to_vec_named(&Payload { text: &text, n }).unwrap_or_default()
}

/// Appends `n` entries in batches of `batch` as fast as the journal takes them, then waits for
/// the last Ack. Returns (entries/s end to end, entries/s of the appends alone).
async fn throughput(
    url: &str,
    dir: &std::path::Path,
    n: u64,
    batch: usize,
    name: &str,
) -> Result<(f64, f64)> {
    let id = Identity::generate(&mut rand::rngs::OsRng);
    let c = client(
        url,
        dir,
        &format!("tp-{}", name.replace(['(', ')'], "")),
        &id,
    )
    .await?;
    c.flush().await?; // connected
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let events = (i..(i + batch as u64).min(n))
            .map(|k| NewEvent {
                event: "Tick".into(),
                primary_key: format!("k{}", k % 1000),
                payload: payload(k),
            })
            .collect::<Vec<_>>();
        i += events.len() as u64;
        c.append_many(id.log(), events).await?;
    }
    let appended = start.elapsed();
    tokio::time::timeout(Duration::from_secs(120), c.flush())
        .await
        .context("flush")??;
    let all = start.elapsed();
    c.close().await?;
    Ok((
        n as f64 / all.as_secs_f64(),
        n as f64 / appended.as_secs_f64(),
    ))
}

/// `tasks` concurrent tasks each calling `append` (one entry, durable) in a loop.
async fn concurrent_appends(
    url: &str,
    dir: &std::path::Path,
    n: u64,
    tasks: u64,
) -> Result<(f64, f64)> {
    let id = Identity::generate(&mut rand::rngs::OsRng);
    let c = client(url, dir, "concurrent", &id).await?;
    c.flush().await?;
    let start = Instant::now();
    let per = n / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for k in 0..per {
                    c.append(
                        "Tick",
                        &format!("k{t}"),
                        &Payload {
                            text: "concurrent",
                            n: k,
                        },
                    )
                    .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await??;
    }
    let appended = start.elapsed();
    tokio::time::timeout(Duration::from_secs(120), c.flush())
        .await
        .context("flush")??;
    let total = (per * tasks) as f64;
    let all = start.elapsed();
    c.close().await?;
    Ok((total / all.as_secs_f64(), total / appended.as_secs_f64()))
}

/// One entry at a time on A (every 2 ms), timed until B's entry stream yields it.
async fn latency(
    url: &str,
    dir: &std::path::Path,
    samples: u64,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let id = Identity::generate(&mut rand::rngs::OsRng);
    let a = client(url, dir, "lat-a", &id).await?;
    let b = client(url, dir, "lat-b", &id).await?;
    a.flush().await?;
    let mut status = b.status();
    status
        .wait_for(|s| *s == wharf_client::Status::Live)
        .await?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let seen = sent.clone();
    let mut stream = b.entries();
    let reader = tokio::spawn(async move {
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..samples {
            let d = stream.next().await?;
            let at = Instant::now();
            let started = seen
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .remove(&d.payload_as::<Sample>()?.n);
            if let Some(t) = started {
                h.record(at.duration_since(t).as_micros() as u64)?;
            }
        }
        anyhow::Ok(h)
    });
    let mut appends = Histogram::<u64>::new(3)?;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for k in 0..samples {
        tick.tick().await;
        let t = Instant::now();
        let event = NewEvent {
            event: "Ping".into(),
            primary_key: "p".into(),
            payload: payload(k),
        };
        // Recorded before the append, so B can never see the entry first.
        sent.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(k, t);
        a.append_many(id.log(), vec![event]).await?;
        appends.record(t.elapsed().as_micros() as u64)?;
    }
    let h = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("reader")???;
    a.close().await?;
    b.close().await?;
    Ok((h, appends))
}
