//! A TCP proxy that misbehaves: it delays what it forwards, and after a random number of bytes
//! (often in the middle of a WebSocket frame) either cuts the connection or goes silent,
//! dropping everything from then on while both sockets stay open, as a dead route does; only
//! the endpoints' own timeouts can notice that. Deterministic for a seed.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to each connection.
#[derive(Clone, Debug)]
pub struct Faults {
    pub seed: u64,
    /// Each chunk forwarded waits up to this long first.
    pub max_delay: Duration,
    /// A connection is cut once this many bytes (both directions) have passed, drawn per
    /// connection; the chunk that crosses the line is forwarded only in part.
    pub cut_after: Range<usize>,
    /// The share of connections that, at that point, go silent instead of closing.
    pub silent: f64,
}

/// What happened.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub silences: AtomicU64,
    pub bytes: AtomicU64,
}

/// A running proxy in front of one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let task = {
            let stats = stats.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(faults.seed);
                while let Ok((client, _)) = listener.accept().await {
                    let n = stats.connections.fetch_add(1, Ordering::Relaxed);
                    let budget = rng.gen_range(faults.cut_after.clone());
                    let silent = rng.gen_bool(faults.silent.clamp(0.0, 1.0));
                    let seed = faults.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let (stats, max_delay) = (stats.clone(), faults.max_delay);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let fault = Fault {
                            budget,
                            silent,
                            seed,
                            max_delay,
                        };
                        relay_with_faults(client, server, fault, &stats).await;
                    });
                }
            })
        };
        Ok(Self { addr, stats, task })
    }

    pub fn cuts(&self) -> u64 {
        self.stats.cuts.load(Ordering::Relaxed)
    }

    pub fn silences(&self) -> u64 {
        self.stats.silences.load(Ordering::Relaxed)
    }
}

/// What happens to one connection.
struct Fault {
    budget: usize,
    silent: bool,
    seed: u64,
    max_delay: Duration,
}

/// Copies both ways until either side ends or `budget` bytes have passed. Then it drops both
/// sockets (after forwarding only part of the chunk that crossed the budget), or, for a silent
/// connection, forwards nothing more and keeps both open until an endpoint gives up.
async fn relay_with_faults(client: TcpStream, server: TcpStream, fault: Fault, stats: &ProxyStats) {
    let Fault {
        budget,
        silent,
        seed,
        max_delay,
    } = fault;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let remaining = Arc::new(AtomicU64::new(budget as u64));
    let cut = Arc::new(tokio::sync::Notify::new());
    let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                seed: u64| {
        let (remaining, cut) = (remaining.clone(), cut.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                if !max_delay.is_zero() {
                    tokio::time::sleep(rng.gen_range(Duration::ZERO..=max_delay)).await;
                }
                let left = remaining.load(Ordering::Relaxed);
                if silent && (n as u64) >= left {
                    // The route died: this chunk and everything after it vanish.
                    if remaining.swap(0, Ordering::Relaxed) > 0 {
                        stats.silences.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                if (n as u64) >= left {
                    // Cut mid-chunk: part of it, then nothing.
                    let part = rng.gen_range(0..=left as usize).min(n);
                    let _ = to.write_all(&buf[..part]).await;
                    remaining.store(0, Ordering::Relaxed);
                    cut.notify_waiters();
                    return true;
                }
                remaining.fetch_sub(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
            }
        }
    };
    let up = pump(cr, sw, seed);
    let down = pump(sr, cw, seed.rotate_left(17));
    let was_cut = tokio::select! {
        c = up => c,
        c = down => c,
        () = cut.notified() => true,
    };
    if was_cut {
        stats.cuts.fetch_add(1, Ordering::Relaxed);
    }
    stats.bytes.fetch_add(
        budget as u64 - remaining.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    // Dropping the halves closes both connections abruptly.
}
