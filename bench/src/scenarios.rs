//! The scenarios: what a user of an event-log relay cares about, each measured over the wire
//! protocol against a running server. Every function returns named figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use wharf_protocol::RelayMsg;

use crate::servers::Server;
use crate::sys;
use crate::wire::{connect_all, entries, Conn};

/// Named figures of one run of one scenario.
pub type Figures = BTreeMap<String, f64>;

const LOG: &str = "bench-log";

/// How big and how long.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub run_for: Duration,
    pub entry_bytes: usize,
    pub concurrent_connections: usize,
    pub tenants: usize,
    pub tenant_writers: usize,
    pub lockstep_subscribers: usize,
    pub lockstep_rounds: usize,
    pub flat_subscribers: usize,
    pub catch_up: Vec<usize>,
    pub idle_connections: usize,
    pub active_tenants: usize,
    pub cold_tenants: usize,
    /// Tenants written once and left to hibernate, and active tenants kept beside them.
    pub hibernated_tenants: usize,
    pub awake_tenants: usize,
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?)
}

pub(crate) fn percentiles(figures: &mut Figures, prefix: &str, h: &Histogram<u64>) {
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        figures.insert(
            format!("{prefix}{name}_ms"),
            h.value_at_quantile(q) as f64 / 1000.0,
        );
    }
}

/// One connection, one entry at a time, each waiting for its Ack.
pub async fn serial(s: &Server, z: &Sizes) -> Result<Figures> {
    let mut c = Conn::connect(&s.url("serial")).await?;
    let mut h = histogram()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < z.run_for {
        let t = Instant::now();
        c.write_acked(LOG, entries(1, z.entry_bytes)).await?;
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

/// One connection keeping `in_flight` writes of `batch` entries outstanding.
pub async fn pipelined(s: &Server, z: &Sizes, batch: usize, in_flight: usize) -> Result<Figures> {
    let c = Conn::connect(&s.url("pipelined")).await?;
    let (mut tx, mut rx) = (c.tx, c.rx);
    let start = Instant::now();
    let (mut sent, mut acked) = (0usize, 0usize);
    loop {
        while sent - acked < in_flight && start.elapsed() < z.run_for {
            tx.write(LOG, entries(batch, z.entry_bytes)).await?;
            sent += 1;
        }
        if acked == sent {
            break;
        }
        rx.next_ack().await?;
        acked += 1;
    }
    let mut f = Figures::new();
    f.insert(
        "entries_per_s".into(),
        (acked * batch) as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(f)
}

/// `conns` connections to one tenant, each writing one entry at a time.
pub async fn concurrent(s: &Server, z: &Sizes) -> Result<Figures> {
    let conns = connect_all((0..z.concurrent_connections).map(|_| s.url("concurrent"))).await?;
    let start = Instant::now();
    let run_for = z.run_for;
    let size = z.entry_bytes;
    let counts = try_join_all(conns.into_iter().map(|mut c| async move {
        let mut n = 0u64;
        while start.elapsed() < run_for {
            c.write_acked(LOG, entries(1, size)).await?;
            n += 1;
        }
        anyhow::Ok(n)
    }))
    .await?;
    let mut f = Figures::new();
    f.insert(
        "entries_per_s".into(),
        counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(f)
}

/// One connection per tenant (`tenants` of them), and `tenant_writers` writers, each going
/// round its share of the tenants one entry at a time. On Effect's server, which has no
/// tenants, each connection writes its own log instead.
pub async fn many_tenants(s: &Server, z: &Sizes) -> Result<Figures> {
    let conns = connect_all((0..z.tenants).map(|i| s.url(&format!("tenant-{i}")))).await?;
    let writers = z.tenant_writers.max(1);
    let mut shares: Vec<Vec<(usize, Conn)>> = (0..writers).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        shares[i % writers].push((i, c));
    }
    let start = Instant::now();
    let (run_for, size) = (z.run_for, z.entry_bytes);
    let counts = try_join_all(shares.into_iter().map(|mut share| async move {
        let mut n = 0u64;
        'outer: loop {
            for (i, c) in &mut share {
                if start.elapsed() >= run_for {
                    break 'outer;
                }
                c.write_acked(&format!("log-{i}"), entries(1, size)).await?;
                n += 1;
            }
        }
        anyhow::Ok(n)
    }))
    .await?;
    let mut f = Figures::new();
    f.insert(
        "entries_per_s".into(),
        counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64(),
    );
    Ok(f)
}

/// Subscribers that report each entry they receive: (subscriber index, entries, when).
async fn subscribers(
    s: &Server,
    tenant: &str,
    n: usize,
) -> Result<(
    Vec<tokio::task::JoinHandle<Result<()>>>,
    tokio::sync::mpsc::UnboundedReceiver<(usize, usize, Instant)>,
)> {
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    let conns = connect_all((0..n).map(|_| s.url(tenant))).await?;
    let mut tasks = Vec::with_capacity(n);
    for (i, mut c) in conns.into_iter().enumerate() {
        c.tx.subscribe(LOG, 0).await?;
        let report = report.clone();
        tasks.push(tokio::spawn(async move {
            let _keep = c.tx;
            loop {
                let got = c.rx.next_changes().await?;
                if report.send((i, got, Instant::now())).is_err() {
                    return Ok(());
                }
            }
        }));
    }
    Ok((tasks, reports))
}

/// `lockstep_subscribers` follow a log; a writer writes one entry and the next only once every
/// subscriber has it. Latency: from the write leaving to each subscriber having it.
pub async fn fanout_lockstep(s: &Server, z: &Sizes) -> Result<Figures> {
    let subs = z.lockstep_subscribers;
    let (tasks, mut reports) = subscribers(s, "fanout", subs).await?;
    let mut w = Conn::connect(&s.url("fanout")).await?;
    let mut delivery = histogram()?;
    let mut round_h = histogram()?;
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < z.lockstep_rounds && start.elapsed() < z.run_for * 4 {
        let sent = Instant::now();
        w.tx.write(LOG, entries(1, z.entry_bytes)).await?;
        let mut have = 0;
        while have < subs {
            let Some((_, n, at)) = reports.recv().await else {
                bail!("a subscriber ended");
            };
            for _ in 0..n {
                delivery.record(at.duration_since(sent).as_micros().max(1) as u64)?;
            }
            have += n;
        }
        round_h.record(sent.elapsed().as_micros().max(1) as u64)?;
        rounds += 1;
    }
    for t in tasks {
        t.abort();
    }
    let mut f = Figures::new();
    percentiles(&mut f, "delivery_", &delivery);
    percentiles(&mut f, "round_", &round_h);
    f.insert("rounds".into(), rounds as f64);
    Ok(f)
}

/// `flat_subscribers` follow a log while one connection writes batches of 100, 8 in flight,
/// for the run time; deliveries per second until every subscriber has every entry.
pub async fn fanout_flat(s: &Server, z: &Sizes) -> Result<Figures> {
    let subs = z.flat_subscribers;
    let (tasks, mut reports) = subscribers(s, "flat", subs).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut last = Instant::now();
            while let Some((_, n, at)) = reports.recv().await {
                received.fetch_add(n as u64, Ordering::Relaxed);
                last = at;
            }
            last
        })
    };
    let w = Conn::connect(&s.url("flat")).await?;
    let (mut tx, mut rx) = (w.tx, w.rx);
    let start = Instant::now();
    let (mut sent, mut acked, batch) = (0u64, 0u64, 100u64);
    loop {
        while sent - acked < 8 && start.elapsed() < z.run_for {
            tx.write(LOG, entries(batch as usize, z.entry_bytes))
                .await?;
            sent += 1;
        }
        if acked == sent {
            break;
        }
        rx.next_ack().await?;
        acked += 1;
    }
    let expected = sent * batch * subs as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = received.load(Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let last = counter.await?;
    let mut f = Figures::new();
    f.insert(
        "deliveries_per_s".into(),
        got as f64 / last.duration_since(start).as_secs_f64(),
    );
    f.insert("entries_written".into(), (sent * batch) as f64);
    f.insert("complete".into(), if got >= expected { 1.0 } else { 0.0 });
    Ok(f)
}

/// Writes `count` entries, then a new connection reads them all from sequence 0: time to the
/// first entry, to all, and the curve (ms, entries) in between.
pub async fn catch_up(s: &Server, z: &Sizes, count: usize) -> Result<(Figures, Vec<(f64, f64)>)> {
    let w = Conn::connect(&s.url("catchup")).await?;
    let (mut tx, mut rx) = (w.tx, w.rx);
    let (batch, mut sent, mut acked) = (1_000usize, 0usize, 0usize);
    let writes = count.div_ceil(batch);
    while acked < writes {
        while sent < writes && sent - acked < 8 {
            tx.write(LOG, entries(batch.min(count - sent * batch), z.entry_bytes))
                .await?;
            sent += 1;
        }
        rx.next_ack().await?;
        acked += 1;
    }
    let mut r = Conn::connect(&s.url("catchup")).await?;
    let start = Instant::now();
    r.tx.subscribe(LOG, 0).await?;
    let (mut got, mut first, mut curve) = (0usize, None, vec![(0.0, 0.0)]);
    while got < count {
        if let RelayMsg::Changes { entries, .. } = r.rx.recv().await? {
            first.get_or_insert_with(|| start.elapsed());
            got += entries.len();
            curve.push((ms(start.elapsed()), got as f64));
        }
    }
    let mut f = Figures::new();
    f.insert("first_ms".into(), first.map_or(0.0, ms));
    f.insert("all_ms".into(), ms(start.elapsed()));
    Ok((f, curve))
}

/// Opens `idle_connections` connections that do nothing: the server's memory per connection.
pub async fn idle(s: &Server, z: &Sizes) -> Result<Figures> {
    let pid = s.pid()?;
    // A first connection and a pause, so one-time allocations are not counted.
    let warm = Conn::connect(&s.url("idle")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sys::rss_kib(pid)?;
    let conns = connect_all((0..z.idle_connections).map(|_| s.url("idle"))).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sys::rss_kib(pid)?;
    let mut f = Figures::new();
    f.insert(
        "kib_per_connection".into(),
        after.saturating_sub(before) as f64 / conns.len().max(1) as f64,
    );
    f.insert("connections".into(), conns.len() as f64);
    f.insert("rss_mib".into(), after as f64 / 1024.0);
    f.insert("threads".into(), sys::threads(pid)? as f64);
    drop((warm, conns));
    Ok(f)
}

/// `active_tenants` tenants, each with one connection that wrote one entry: OS threads and
/// memory beyond the connections themselves (`kib_per_connection` from [`idle`]).
pub async fn active_tenants(s: &Server, z: &Sizes, kib_per_connection: f64) -> Result<Figures> {
    let pid = s.pid()?;
    let warm = Conn::connect(&s.url("warm")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, threads_before) = (sys::rss_kib(pid)?, sys::threads(pid)?);
    let parts_before = sys::rss_parts_kib(pid)?;
    let mut conns = Vec::with_capacity(z.active_tenants);
    for chunk in (0..z.active_tenants).collect::<Vec<_>>().chunks(64) {
        conns.extend(
            try_join_all(chunk.iter().map(|i| async move {
                let mut c = Conn::connect(&s.url(&format!("active-{i}"))).await?;
                c.write_acked(&format!("log-{i}"), entries(1, 256)).await?;
                anyhow::Ok(c)
            }))
            .await?,
        );
    }
    // At rest: a server may give back caches a little after its last write (Wharf: 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, threads) = (sys::rss_kib(pid)?, sys::threads(pid)?);
    let parts = sys::rss_parts_kib(pid)?;
    let per = after.saturating_sub(before) as f64 / conns.len().max(1) as f64;
    let n = conns.len().max(1) as f64;
    let mut f = Figures::new();
    f.insert(
        "kib_anon_per_tenant".into(),
        parts.0.saturating_sub(parts_before.0) as f64 / n,
    );
    f.insert(
        "kib_file_per_tenant".into(),
        parts.1.saturating_sub(parts_before.1) as f64 / n,
    );
    f.insert(
        "kib_shmem_per_tenant".into(),
        parts.2.saturating_sub(parts_before.2) as f64 / n,
    );
    f.insert("threads".into(), threads as f64);
    f.insert("threads_before".into(), threads_before as f64);
    f.insert("kib_per_tenant_with_connection".into(), per);
    f.insert("kib_per_tenant".into(), (per - kib_per_connection).max(0.0));
    drop((warm, conns));
    Ok(f)
}

/// Tenants that were written once and then hibernated (their database closed after the
/// relay's idle timeout): time from connecting to `Hello`, cold against warm.
pub async fn cold_open(s: &Server, z: &Sizes, hibernate_after: Duration) -> Result<Figures> {
    for i in 0..z.cold_tenants {
        let mut c = Conn::connect(&s.url(&format!("cold-{i}"))).await?;
        c.write_acked(LOG, entries(1, 256)).await?;
    }
    let _warm_keeper = Conn::connect(&s.url("warm")).await?;
    // Idle tenants are closed within the idle timeout and a quarter of it.
    tokio::time::sleep(hibernate_after).await;
    let mut cold = histogram()?;
    let mut warm = histogram()?;
    for i in 0..z.cold_tenants {
        let t = Instant::now();
        let c = Conn::connect(&s.url(&format!("cold-{i}"))).await?;
        cold.record(t.elapsed().as_micros().max(1) as u64)?;
        drop(c);
        let t = Instant::now();
        let c = Conn::connect(&s.url("warm")).await?;
        warm.record(t.elapsed().as_micros().max(1) as u64)?;
        drop(c);
    }
    let mut f = Figures::new();
    percentiles(&mut f, "cold_hello_", &cold);
    percentiles(&mut f, "warm_hello_", &warm);
    Ok(f)
}

/// `hibernated_tenants` tenants written once and left to hibernate, in waves of a tenth of
/// them (so no more than a wave is open at once), then `awake_tenants` tenants that stay
/// connected beside them. What a hibernated tenant costs is the slope between the first and
/// the second half of the waves: memory the allocator kept from the first wave's open
/// databases, reused by later ones, is not a cost of each hibernated tenant.
pub async fn hibernated_tenants(
    s: &Server,
    z: &Sizes,
    hibernate_after: Duration,
) -> Result<Figures> {
    let pid = s.pid()?;
    let warm = Conn::connect(&s.url("warm")).await?;
    let n = z.hibernated_tenants.max(2);
    let wave = (n / 10).max(1);
    let mut half = None;
    let mut done = 0;
    while done < n {
        let upto = (done + wave).min(n);
        try_join_all((done..upto).map(|i| async move {
            let mut c = Conn::connect(&s.url(&format!("sleepy-{i}"))).await?;
            c.write_acked(LOG, entries(1, 256)).await?;
            anyhow::Ok(())
        }))
        .await?;
        // Closed within the idle timeout and a quarter of it.
        tokio::time::sleep(hibernate_after).await;
        done = upto;
        if half.is_none() && done >= n / 2 {
            half = Some((done, sys::rss_kib(pid)?));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hibernated = sys::rss_kib(pid)?;
    let (half_n, half_rss) = half.unwrap_or((0, hibernated));
    let mut awake = Vec::with_capacity(z.awake_tenants);
    for chunk in (0..z.awake_tenants).collect::<Vec<_>>().chunks(64) {
        awake.extend(
            try_join_all(chunk.iter().map(|i| async move {
                let mut c = Conn::connect(&s.url(&format!("awake-{i}"))).await?;
                c.write_acked(LOG, entries(1, 256)).await?;
                anyhow::Ok(c)
            }))
            .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = sys::rss_kib(pid)?;
    let mut f = Figures::new();
    f.insert(
        "kib_per_hibernated".into(),
        hibernated.saturating_sub(half_rss) as f64 / (n - half_n).max(1) as f64,
    );
    f.insert("rss_mib_hibernated".into(), hibernated as f64 / 1024.0);
    f.insert(
        "kib_per_awake_with_connection".into(),
        after.saturating_sub(hibernated) as f64 / z.awake_tenants.max(1) as f64,
    );
    f.insert("rss_mib".into(), after as f64 / 1024.0);
    drop((warm, awake));
    Ok(f)
}
