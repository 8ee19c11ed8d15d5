//! The Effect v4 scenarios: Wharf's `/v4/t/{tenant}` against Effect 4.x's own servers, over
//! the same protocol (Effect RPC in schema-binary; every connection signs its challenge). The
//! batches carry random bytes as ciphertext: no server decrypts, so the client's crypto is left
//! out of what is measured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use rand::RngCore;
use wharf_client::V4Connection;
use wharf_protocol::v4::eventlog::{self, tag};
use wharf_protocol::v4::{EncryptedBatch, Exit, FromServer, V4Identity, WriteAck, WriteEntries};

use crate::scenarios::{histogram, ms, percentiles, Figures, Sizes};
use crate::servers::Server;

const STORE: &str = "bench";

/// A batch of `n` entries of `size` bytes each (random ids, iv and bytes).
fn batch(n: usize, size: usize) -> EncryptedBatch {
    let mut rng = rand::thread_rng();
    let mut ids = vec![[0u8; 16]; n];
    for id in &mut ids {
        rng.fill_bytes(id);
    }
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut iv);
    let mut bytes = vec![0u8; n * size + 16];
    rng.fill_bytes(&mut bytes);
    EncryptedBatch {
        entry_ids: ids,
        iv: iv.to_vec().into(),
        encrypted_batch: bytes.into(),
    }
}

fn write_payload(identity: &V4Identity, batches: Vec<EncryptedBatch>) -> Vec<u8> {
    eventlog::encode_write_single(
        &WriteEntries {
            public_key: identity.public_key.clone(),
            store_id: STORE.into(),
            batches,
        }
        .encode(),
    )
}

/// A connection with `identity` authenticated on it.
async fn open(s: &Server, tenant: &str, identity: &V4Identity) -> Result<V4Connection> {
    let mut c = V4Connection::connect(&s.v4_url(tenant))
        .await
        .with_context(|| format!("connecting to {}", s.kind.label()))?;
    match c.authenticate(identity).await? {
        Exit::Success(()) => Ok(c),
        other => bail!("Authenticate: {other:?}"),
    }
}

fn acked(exit: &[u8]) -> Result<Vec<WriteAck>> {
    match Exit::<Vec<WriteAck>>::decode(exit)? {
        Exit::Success(acks) => Ok(acks),
        other => bail!("write failed: {other:?}"),
    }
}

fn identity() -> V4Identity {
    V4Identity::generate(&mut rand::rngs::OsRng)
}

/// One connection, one entry at a time, each waiting for its acknowledgement.
pub async fn serial(s: &Server, z: &Sizes) -> Result<Figures> {
    let id = identity();
    let mut c = open(s, "v4-serial", &id).await?;
    let mut h = histogram()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < z.run_for {
        let t = Instant::now();
        let exit = c
            .call(
                tag::WRITE_SINGLE,
                write_payload(&id, vec![batch(1, z.entry_bytes)]),
            )
            .await?;
        acked(&exit)?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
        n += 1;
    }
    let mut f = Figures::new();
    f.insert(
        "entries_per_s".into(),
        n as f64 / start.elapsed().as_secs_f64(),
    );
    percentiles(&mut f, "ack_", &h);
    Ok(f)
}

/// Keeps `in_flight` writes of `size` entries outstanding on one connection.
async fn keep_writing(
    c: &mut V4Connection,
    id: &V4Identity,
    entries: usize,
    entry_bytes: usize,
    in_flight: usize,
    until: impl Fn(usize) -> bool,
) -> Result<usize> {
    let (mut sent, mut done) = (0usize, 0usize);
    loop {
        while sent - done < in_flight && !until(sent) {
            c.request(
                tag::WRITE_SINGLE,
                write_payload(id, vec![batch(entries, entry_bytes)]),
            )
            .await?;
            sent += 1;
        }
        if done == sent {
            return Ok(done * entries);
        }
        match c
            .recv()
            .await?
            .context("the server closed the connection")?
        {
            FromServer::Exit { exit, .. } => {
                acked(&exit)?;
                done += 1;
            }
            FromServer::Defect(d) => bail!("defect: {:?}", eventlog::decode_defect(&d)),
            _ => {}
        }
    }
}

/// One connection keeping 8 single-entry writes outstanding.
pub async fn pipelined(s: &Server, z: &Sizes) -> Result<Figures> {
    let id = identity();
    let mut c = open(s, "v4-pipelined", &id).await?;
    let start = Instant::now();
    let run_for = z.run_for;
    let n = keep_writing(&mut c, &id, 1, z.entry_bytes, 8, |_| {
        start.elapsed() >= run_for
    })
    .await?;
    let mut f = Figures::new();
    f.insert(
        "entries_per_s".into(),
        n as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(f)
}

/// `subscribers` connections follow one log while a writer writes one entry at a time: the
/// time from a write leaving the writer to its arrival at each subscriber.
pub async fn fanout(s: &Server, z: &Sizes) -> Result<Figures> {
    let id = identity();
    let subs = z.lockstep_subscribers;
    let sent: Arc<Mutex<HashMap<[u8; 16], Instant>>> = Arc::default();
    let mut readers = Vec::with_capacity(subs);
    for _ in 0..subs {
        let mut c = open(s, "v4-fanout", &id).await?;
        let stream = c.changes(&id.public_key, STORE, 0).await?;
        readers.push((c, stream));
    }
    let rounds = z.lockstep_rounds;
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|(mut c, stream)| {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut h = histogram()?;
                let mut got = 0usize;
                while got < rounds {
                    for b in c.batches(&stream).await? {
                        let at = Instant::now();
                        for entry in &b.batch.entry_ids {
                            let start = sent.lock().ok().and_then(|m| m.get(entry).copied());
                            if let Some(start) = start {
                                h.record(at.duration_since(start).as_micros().max(1) as u64)?;
                            }
                            got += 1;
                        }
                    }
                }
                anyhow::Ok(h)
            })
        })
        .collect();
    let mut w = open(s, "v4-fanout", &id).await?;
    for _ in 0..rounds {
        let b = batch(1, z.entry_bytes);
        if let Ok(mut m) = sent.lock() {
            m.insert(b.entry_ids[0], Instant::now());
        }
        let exit = w
            .call(tag::WRITE_SINGLE, write_payload(&id, vec![b]))
            .await?;
        acked(&exit)?;
    }
    let mut h = histogram()?;
    let all = tokio::time::timeout(Duration::from_secs(120), try_join_all(tasks))
        .await
        .context("subscribers did not receive every entry")??;
    for one in all {
        h.add(one?)?;
    }
    let mut f = Figures::new();
    percentiles(&mut f, "delivery_", &h);
    f.insert("subscribers".into(), subs as f64);
    Ok(f)
}

/// Writes `count` entries (batches of 100, 8 in flight), then a new connection reads them all
/// from sequence 0.
pub async fn catch_up(s: &Server, z: &Sizes, count: usize) -> Result<Figures> {
    let id = identity();
    let mut w = open(s, "v4-catchup", &id).await?;
    let writes = count.div_ceil(100);
    keep_writing(&mut w, &id, 100, z.entry_bytes, 8, |sent| sent >= writes).await?;
    let mut r = open(s, "v4-catchup", &id).await?;
    let start = Instant::now();
    let stream = r.changes(&id.public_key, STORE, 0).await?;
    let (mut got, mut first) = (0usize, None);
    let total = writes * 100;
    while got < total {
        for b in r.batches(&stream).await? {
            first.get_or_insert_with(|| start.elapsed());
            got += b.batch.entry_ids.len();
        }
    }
    let all = start.elapsed();
    let mut f = Figures::new();
    f.insert("first_ms".into(), first.map_or(0.0, ms));
    f.insert("all_ms".into(), ms(all));
    f.insert("entries_per_s".into(), got as f64 / all.as_secs_f64());
    Ok(f)
}
