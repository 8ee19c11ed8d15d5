//! `wharf-auth-bench`: what access control costs on the write path. Write throughput without
//! access control and with token auth (a token scoped to its tenant and 9 logs, checked on
//! every message), in alternated rounds on fresh in-process relays, medians; and the checks
//! themselves timed in this process (admission per connection, `Grant::authorize` and rate
//! accounting per message).
//!
//! `cargo run --release -p wharf-tests --bin wharf-auth-bench [-- --quick]`
//!
//! The relay's other figures, against Effect's servers: `wharf-bench` (`bench/`).

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;
use wharf_protocol::RelayMsg;
use wharf_relay::auth::token::Action;
use wharf_relay::Durability;
use wharf_tests::{claims, entries, Client, TestRelay};

const PK: &str = "bench-log";

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let run_for = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    auth_overhead(if quick { 1 } else { 3 }, run_for).await
}

/// Rounds of (no auth, token auth) on fresh relays; prints each round and the medians.
async fn auth_overhead(rounds: usize, run_for: Duration) -> Result<()> {
    println!(
        "wharf-auth-bench: {rounds} alternated rounds of {} s per scenario, 256 B \
         entries; fresh relay each time; the token names its tenant and 8 logs",
        run_for.as_secs()
    );
    // (scenario, durability, [no auth, token] rates of each round)
    let mut results: Vec<(&str, Durability, [Vec<f64>; 2])> = vec![
        (
            "batch-1, 8 in flight, 1 connection",
            Durability::Normal,
            Default::default(),
        ),
        (
            "batch-1, 8 in flight, 1 connection",
            Durability::Full,
            Default::default(),
        ),
        (
            "batch-1, 64 connections",
            Durability::Full,
            Default::default(),
        ),
    ];
    for round in 0..rounds {
        for (scenario, durability, rates) in &mut results {
            for (mode, rates) in rates.iter_mut().enumerate() {
                let tokens = mode == 1;
                let relay = if tokens {
                    TestRelay::start_with_tokens(|c| c.durability = *durability).await
                } else {
                    TestRelay::start_with(|c| c.durability = *durability).await
                };
                let mut grant = claims("bench", &[Action::Read, Action::Write]);
                grant.logs = Some(
                    (0..8)
                        .map(|i| format!("{PK}-{i}"))
                        .chain([PK.into()])
                        .collect(),
                );
                let token = relay.mint(&grant);
                let url = |_: &str| {
                    if tokens {
                        relay.url_with_token("bench", &token)
                    } else {
                        relay.url("bench")
                    }
                };
                let rate = if scenario.contains("64") {
                    concurrent_batch1(&url, 64, run_for).await?
                } else {
                    pipelined(&url("bench"), 1, 8, run_for).await?
                };
                println!(
                    "round {}: {scenario:<36} {durability:?} {:<10} {rate:>9.0} acked entries/s",
                    round + 1,
                    if tokens { "token" } else { "no auth" },
                );
                rates.push(rate);
                relay.shutdown().await;
            }
        }
    }
    check_cost(&results).await?;
    println!("medians:");
    for (scenario, durability, [open, token]) in &results {
        let (open, token) = (median(open), median(token));
        println!(
            "  {scenario:<36} {durability:?}: no auth {open:>9.0}, token {token:>9.0} \
             entries/s ({:+.1} %)",
            (token / open - 1.0) * 100.0
        );
    }
    Ok(())
}

/// The CPU cost of the checks themselves, timed in this process: admission (signature and
/// claims) once per connection, `Grant::authorize` once per message. End-to-end rates move by
/// several percent between rounds; this says how much of that the checks can be.
async fn check_cost(results: &[(&str, Durability, [Vec<f64>; 2])]) -> Result<()> {
    use wharf_relay::auth::{Admission, Authenticator};
    let dir = tempfile::tempdir()?;
    let mut config = wharf_relay::Config {
        data: dir.path().to_path_buf(),
        ..wharf_relay::Config::default()
    };
    config.auth.mode = Some(wharf_relay::config::AuthMode::Token);
    let stop = tokio_util::sync::CancellationToken::new();
    let revocations =
        wharf_store::revocations::RevocationStore::open(&config.store_config(), None).await?;
    let auth = Authenticator::tokens(&config, revocations, stop.clone()).await?;
    let mut grant = claims("bench", &[Action::Read, Action::Write]);
    grant.logs = Some(
        (0..8)
            .map(|i| format!("{PK}-{i}"))
            .chain([PK.into()])
            .collect(),
    );
    let token =
        wharf_relay::auth::token::RelayKey::load_or_create(&config.key_path())?.mint(&grant)?;
    let tenant = wharf_relay::TenantId::parse("bench").ok_or_else(|| anyhow::anyhow!("tenant"))?;
    let mut headers = tokio_tungstenite::tungstenite::http::HeaderMap::new();
    headers.insert(
        tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    let admission = Admission {
        tenant: &tenant,
        headers: &headers,
        query: None,
    };
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        auth.admit(&admission).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let admit = t.elapsed() / n;
    let granted = auth.admit(&admission).map_err(|e| anyhow::anyhow!("{e}"))?;
    let msg = wharf_protocol::ClientMsg::WriteEntries(wharf_protocol::WriteEntries {
        public_key: PK.into(),
        id: 1u32.into(),
        iv: bytes::Bytes::from_static(&[7; 12]),
        entries: entries(1, 1, 256),
    });
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(granted.authorize(std::hint::black_box(&msg)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let authorize = t.elapsed() / n;
    stop.cancel();
    // The rate-limit accounting every message also pays (default limits; both modes have it).
    let limits = std::sync::Arc::new(wharf_relay::limits::Limits::new(config.limits.clone()));
    let slot = limits
        .admit(&tenant, std::net::Ipv4Addr::LOCALHOST.into())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut throttle = slot.throttle();
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        throttle.charge_bytes(300);
        throttle.charge_write();
        std::hint::black_box(throttle.settle());
    }
    let accounting = t.elapsed() / n;
    let fastest = results
        .iter()
        .flat_map(|(_, _, [open, _])| open.iter().copied())
        .fold(0.0, f64::max);
    let per_write = Duration::from_secs_f64(1.0 / fastest.max(1.0));
    println!(
        "check cost: admission (EdDSA verify + claims) {:.1} us per connection; \
         Grant::authorize {:.0} ns per message = {:.3} % of the fastest write above ({:.0} us); \
         rate-limit accounting {:.0} ns per message",
        admit.as_secs_f64() * 1e6,
        authorize.as_secs_f64() * 1e9,
        authorize.as_secs_f64() / per_write.as_secs_f64() * 100.0,
        per_write.as_secs_f64() * 1e6,
        accounting.as_secs_f64() * 1e9,
    );
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `writers` connections, each writing one entry and waiting for its Ack, for `run_for`.
async fn concurrent_batch1(
    url: &dyn Fn(&str) -> String,
    writers: u32,
    run_for: Duration,
) -> Result<f64> {
    let start = Instant::now();
    let counts = join_all((0..writers).map(|w| {
        let url = url("bench-b1");
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
async fn pipelined(url: &str, batch: usize, in_flight: usize, run_for: Duration) -> Result<f64> {
    let mut c = Client::connect(url).await?;
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
