//! `wharf-bench`: the relay's headline numbers, measured against a real relay (in this
//! process, on 127.0.0.1:0, durable settings) over real WebSockets.
//!
//! `cargo run --release -p wharf-tests --bin wharf-bench [-- --quick]`

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use wharf_protocol::RelayMsg;
use wharf_tests::{entries, Client, TestRelay};

const PK: &str = "bench-log";

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let run_for = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    println!(
        "wharf-bench: relay in-process, synchronous=FULL, data in {}",
        std::env::temp_dir().display()
    );

    let relay = TestRelay::start().await;
    let rate = concurrent_batch1(&relay, 64, run_for).await?;
    println!("batch-1, 64 concurrent writers:        {rate:>9.0} acked entries/s");
    let rate = pipelined(&relay, 100, 8, run_for).await?;
    println!("batch-100, 8 in flight (1 connection): {rate:>9.0} acked entries/s");
    let h = ack_latency(&relay, if quick { 500 } else { 3000 }).await?;
    println!(
        "single writer Ack latency:             p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    let (first, all) = catch_up(&relay, 100_000, 256).await?;
    println!(
        "catch-up of 100,000 x 256 B:           first entry {:.1} ms, all {:.1} ms",
        first.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0
    );
    relay.shutdown().await;
    Ok(())
}

/// `writers` connections, each writing one entry and waiting for its Ack, for `run_for`.
async fn concurrent_batch1(relay: &TestRelay, writers: u32, run_for: Duration) -> Result<f64> {
    let start = Instant::now();
    let counts = join_all((0..writers).map(|w| {
        let url = relay.url("bench-b1");
        async move {
            let mut c = Client::connect(&url).await?;
            let mut n = 0u32;
            while start.elapsed() < run_for {
                c.write_acked(PK, entries(w * 10_000_000 + n, 1, 256))
                    .await?;
                n += 1;
            }
            anyhow::Ok(u64::from(n))
        }
    }))
    .await;
    let total: u64 = counts.into_iter().collect::<Result<Vec<_>>>()?.iter().sum();
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// One connection keeping `in_flight` writes of `batch` entries outstanding.
async fn pipelined(
    relay: &TestRelay,
    batch: usize,
    in_flight: usize,
    run_for: Duration,
) -> Result<f64> {
    let mut c = relay.client("bench-b100").await;
    let start = Instant::now();
    let (mut sent, mut acked) = (0u32, 0u64);
    loop {
        while (sent as u64) * batch as u64 - acked < (in_flight * batch) as u64
            && start.elapsed() < run_for
        {
            c.write(PK, entries(sent, batch, 256)).await?;
            sent += 1;
        }
        if acked == sent as u64 * batch as u64 {
            break;
        }
        if let RelayMsg::Ack {
            sequence_numbers, ..
        } = c.recv().await?
        {
            acked += sequence_numbers.len() as u64;
        }
    }
    Ok(acked as f64 / start.elapsed().as_secs_f64())
}

async fn ack_latency(relay: &TestRelay, writes: u32) -> Result<Histogram<u64>> {
    let mut c = relay.client("bench-latency").await;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..writes {
        let es = entries(i, 1, 256);
        let t = Instant::now();
        c.write_acked(PK, es).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

async fn catch_up(relay: &TestRelay, count: usize, size: usize) -> Result<(Duration, Duration)> {
    let mut w = relay.client("bench-catchup").await;
    for chunk in entries(1, count, size).chunks(1_000) {
        w.write_acked(PK, chunk.to_vec()).await?;
    }
    let mut r = relay.client("bench-catchup").await;
    let start = Instant::now();
    r.subscribe(PK, 0).await?;
    let mut first = None;
    let mut got = 0;
    while got < count {
        if let RelayMsg::Changes { entries, .. } = r.recv().await? {
            first.get_or_insert_with(|| start.elapsed());
            got += entries.len();
        }
    }
    Ok((first.unwrap_or_default(), start.elapsed()))
}
