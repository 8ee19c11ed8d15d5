//! `wharf-snapshot-bench`: what snapshots and retention buy. A log of 1,000,000 entries over
//! 10,000 keys; a new replica opens it from the full history and from a snapshot (time until
//! its journal holds the same view), then retention drops the history the snapshot covers and
//! the tenant's database file is measured before and after. Relay and clients in this process,
//! on 127.0.0.1:0, `synchronous=FULL` on both sides.
//!
//! `cargo run --release -p wharf-tests --bin wharf-snapshot-bench [-- --entries N]`

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use wharf_client::{Client, Identity, Status};
use wharf_protocol::{ClientMsg, EncryptedEntry, Entry, JsNumber, RelayMsg, Suite, WriteEntries};
use wharf_tests::{http_request, TestRelay};

const KEYS: u64 = 10_000;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let entries: u64 = match args.iter().position(|a| a == "--entries") {
        Some(i) => args.get(i + 1).context("--entries N")?.parse()?,
        None => 1_000_000,
    };
    let dir = tempfile::tempdir()?;
    let relay = TestRelay::start_with(|c| c.data = dir.path().join("relay")).await;
    let url = format!("ws://{}", relay.addr);
    let id = Identity::generate(&mut rand::rngs::OsRng);
    let log = id.log().to_owned();
    println!(
        "wharf-snapshot-bench: {entries} entries over {KEYS} keys, data in {}",
        dir.path().display()
    );

    // The log is written over the wire (sealed as the SDK seals), 1,000 entries per write,
    // 8 writes in flight: this measures opening, not an SDK's upload.
    let started = Instant::now();
    write_log(&relay, &id, entries).await?;
    println!(
        "written and acked:           {:>8.2} s",
        started.elapsed().as_secs_f64()
    );

    let (full, full_time) = replica(&url, &dir.path().join("full.db"), &id, false).await?;
    let started = Instant::now();
    let sequence = full.snapshot(&log).await?;
    println!(
        "snapshot (to seq {sequence}):   {:>8.3} s",
        started.elapsed().as_secs_f64()
    );
    let (snap, snap_time) = replica(&url, &dir.path().join("snap.db"), &id, true).await?;
    let full_stats = full.journal().stats(&log).await?;
    let snap_stats = snap.journal().stats(&log).await?;
    let (full_view, snap_view) = (full.view().await?, snap.view().await?);
    if full_view.len() != snap_view.len()
        || full_view
            .iter()
            .zip(snap_view.iter())
            .any(|(a, b)| a.0 != b.0 || a.1.entry.id != b.1.entry.id)
    {
        bail!("the two replicas' views differ");
    }
    println!(
        "new replica, full history:   {full_time:>8.3} s ({} entries in its journal)",
        full_stats.entries
    );
    println!(
        "new replica, from snapshot:  {snap_time:>8.3} s ({} entries in its journal; same view of {} records)",
        snap_stats.entries,
        snap_view.len()
    );
    println!(
        "speed-up:                    {:>8.1}x",
        full_time / snap_time
    );

    let path = "/admin/v1/tenants/bench/settings";
    let body = serde_json::to_vec(&serde_json::json!({ "retention": { "after_snapshot": true } }))?;
    let answer = http_request(
        relay.addr,
        "PUT",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await?;
    if answer.status != 200 {
        bail!("settings: {} {}", answer.status, answer.text());
    }
    let started = Instant::now();
    let answer = http_request(
        relay.addr,
        "POST",
        "/admin/v1/tenants/bench/retention",
        &[],
        Vec::new(),
    )
    .await?;
    let report: serde_json::Value = serde_json::from_slice(&answer.body)?;
    println!(
        "retention (after_snapshot): {:>7.2} s, {} entries deleted; database file {:.1} MB -> {:.1} MB",
        started.elapsed().as_secs_f64(),
        report["entries_deleted"],
        report["file_bytes_before"].as_f64().unwrap_or(0.0) / 1e6,
        report["file_bytes_after"].as_f64().unwrap_or(0.0) / 1e6,
    );
    for c in [full, snap] {
        c.close().await?;
    }
    relay.shutdown().await;
    let file = dir.path().join("relay/tenants/bench.sqlite");
    println!(
        "after the relay closed it:  database file {:.1} MB",
        std::fs::metadata(&file).map_or(0, |m| m.len()) as f64 / 1e6
    );
    if std::env::var_os("WHARF_BENCH_KEEP").is_some() {
        println!("kept: {}", dir.keep().display());
    }
    Ok(())
}

async fn write_log(relay: &TestRelay, id: &Identity, entries: u64) -> Result<()> {
    use rand::RngCore;
    let mut conn = wharf_tests::Client::connect(&relay.url("bench")).await?;
    let rk = id.read_key();
    let (mut sent, mut acked, mut next_id) = (0u64, 0u64, 0u32);
    let mut in_flight = 0;
    while acked < entries {
        while in_flight < 8 && sent < entries {
            let mut iv = [0u8; 8];
            rand::thread_rng().fill_bytes(&mut iv);
            let batch = (sent..(sent + 1000).min(entries))
                .map(|i| {
                    let entry = Entry {
                        id: *uuid::Uuid::now_v7().as_bytes(),
                        event: "set".into(),
                        primary_key: format!("k{}", i % KEYS),
                        payload: rmp_serde::to_vec_named(
                            &serde_json::json!({ "n": i, "text": "x".repeat(64) }),
                        )?,
                    };
                    let sealed =
                        rk.seal(Suite::XChaCha20Poly1305, &iv, &entry.id, &entry.encode())?;
                    Ok(EncryptedEntry {
                        entry_id: Bytes::copy_from_slice(&entry.id),
                        encrypted_entry: Bytes::from(sealed),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            sent += batch.len() as u64;
            let msg = ClientMsg::WriteEntries(WriteEntries {
                public_key: id.log().to_owned(),
                id: JsNumber::from(next_id),
                iv: Bytes::copy_from_slice(&iv),
                entries: batch,
            });
            for frame in wharf_protocol::frames(Bytes::from(msg.encode()), JsNumber::from(next_id))
            {
                conn.send_raw(frame).await?;
            }
            next_id += 1;
            in_flight += 1;
        }
        if let RelayMsg::Ack {
            sequence_numbers, ..
        } = conn.recv().await?
        {
            acked += sequence_numbers.len() as u64;
            in_flight -= 1;
        }
    }
    Ok(())
}

async fn open(url: &str, journal: &Path, id: &Identity, from_snapshot: bool) -> Result<Client> {
    Ok(Client::builder(url, "bench")
        .identity(id.clone())
        .journal(journal)
        .configure(|c| c.open_from_snapshot = from_snapshot)
        .open()
        .await?)
}

async fn live(client: &Client) -> Result<()> {
    let mut status = client.status();
    tokio::time::timeout(
        Duration::from_secs(600),
        status.wait_for(|s| *s == Status::Live),
    )
    .await
    .context("live in time")??;
    client.journal().barrier().await?;
    Ok(())
}

/// A new replica, and how long until its journal holds the log.
async fn replica(
    url: &str,
    journal: &Path,
    id: &Identity,
    from_snapshot: bool,
) -> Result<(Client, f64)> {
    let started = Instant::now();
    let client = open(url, journal, id, from_snapshot).await?;
    live(&client).await?;
    Ok((client, started.elapsed().as_secs_f64()))
}
