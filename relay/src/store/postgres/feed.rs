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

use super::{Backend, CHANNEL};

/// What the feed tells the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ring {
    /// `public_key` of `tenant` has entries up to (not including) `next`.
    Log {
        tenant: String,
        public_key: String,
        next: u64,
    },
    /// Notifications may have been missed: every open tenant should look at its logs.
    /// `lost`: because the LISTEN connection was lost (not at the first connect).
    Resync { lost: bool },
}

/// Listens until `stop` is cancelled, calling `ring` for every doorbell, and reconnecting
/// (with backoff, then [`Ring::Resync`]) whenever the connection is lost.
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
        backoff = Duration::from_millis(100);
        if connected_once {
            info!("listening for other relays' commits again");
        }
        connected_once = true;
        // Whatever was committed while nobody listened.
        ring(Ring::Resync { lost: false });
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            match next {
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
                    ring(Ring::Resync { lost: true });
                    break;
                }
            }
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
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
