//! The change feed between relays: each relay keeps one LISTEN connection on
//! [`CHANNEL`](super::CHANNEL). A commit's doorbell names a log and its new next sequence; the
//! relay's tenant actor reads what it has not seen (`sequence >= its tail`) from the database.
//! A doorbell carries no entries, so a lost one costs latency, never entries: after the LISTEN
//! connection comes back every open tenant looks again ([`Ring::Resync`]), and each tenant
//! with subscribers also looks on its own every `postgres.poll_interval`.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admin::EVICT_CHANNEL;
use super::{Backend, CHANNEL, SETTINGS_CHANNEL};

/// How often the LISTEN connection is checked (a half-open TCP connection would otherwise wait
/// for notifications forever), and how long the check may take.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that stayed up this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);

/// What the feed tells the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ring {
    /// `public_key` of `tenant` has entries up to (not including) `next`.
    Log {
        tenant: String,
        public_key: String,
        next: u64,
    },
    /// An administrator changed `tenant`'s settings (through any relay): reload them.
    Settings { tenant: String },
    /// An administrator deleted or replaced `tenant`'s data (through any relay): let its
    /// clients go, so that they reconnect to what is stored now.
    Evict { tenant: String },
    /// Notifications may have been missed: every open tenant should look at its logs and
    /// reload its settings. `lost`: after a lost connection (not at the first connect).
    Resync { lost: bool },
}

/// Listens until `stop` is cancelled, calling `ring` for every doorbell, and reconnecting
/// (with backoff, then [`Ring::Resync`]) whenever the connection is lost or stops answering.
pub async fn listen(backend: Backend, stop: CancellationToken, ring: impl Fn(Ring) + Send) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_once = false;
    loop {
        let listener = tokio::select! {
            () = stop.cancelled() => return,
            l = connect(&backend) => l,
        };
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot listen for other relays' commits");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let connected = tokio::time::Instant::now();
        if connected_once {
            info!("listening for other relays' commits again");
        }
        // Whatever was committed (or reconfigured) while nobody listened.
        ring(Ring::Resync {
            lost: connected_once,
        });
        connected_once = true;
        let mut check = tokio::time::interval_at(connected + CHECK_EVERY, CHECK_EVERY);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.try_recv() => n,
                _ = check.tick() => {
                    let alive = tokio::time::timeout(
                        CHECK_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut listener),
                    )
                    .await;
                    match alive {
                        Ok(Ok(_)) => continue,
                        _ => Ok(None),
                    }
                }
            };
            match next {
                Ok(Some(n)) if n.channel() == SETTINGS_CHANNEL => ring(Ring::Settings {
                    tenant: n.payload().to_owned(),
                }),
                Ok(Some(n)) if n.channel() == EVICT_CHANNEL => ring(Ring::Evict {
                    tenant: n.payload().to_owned(),
                }),
                Ok(Some(n)) => {
                    match serde_json::from_str::<Vec<(String, String, u64)>>(n.payload()) {
                        Ok(bells) => {
                            for (tenant, public_key, next) in bells {
                                ring(Ring::Log {
                                    tenant,
                                    public_key,
                                    next,
                                });
                            }
                        }
                        Err(e) => debug!(error = %e, "unreadable doorbell ignored"),
                    }
                }
                Ok(None) | Err(_) => {
                    warn!(
                        "lost the connection that listens for other relays' commits; reconnecting"
                    );
                    break;
                }
            }
        }
        if connected.elapsed() >= STABLE {
            backoff = Duration::from_millis(100);
        } else {
            // It dropped right away: wait before trying again, so a flapping connection does
            // not make every open tenant look at its logs in a tight loop.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

async fn connect(backend: &Backend) -> Result<PgListener, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(backend.options());
    let mut listener = PgListener::connect_with(&pool).await?;
    // The relay reconnects itself, and rings Resync when it does.
    listener.ignore_pool_close_event(true);
    listener
        .listen_all([CHANNEL, SETTINGS_CHANNEL, EVICT_CHANNEL])
        .await?;
    Ok(listener)
}
