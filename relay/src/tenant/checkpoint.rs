//! The checkpointer: a tenant's WAL is checkpointed off the write path (`PASSIVE`: never
//! blocks the writer), when a quiet period follows writes or once the WAL has grown enough.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, Instrument};
use wharf_store::Store;

/// What the checkpointer watches.
#[derive(Debug, Default)]
pub(super) struct WalGrowth {
    pub(super) bytes: AtomicU64,
    pub(super) commits: AtomicU64,
}

/// A tenant's WAL is checkpointed, off the write path, once it holds this much since the last
/// checkpoint, whether or not writes go on.
pub(super) const CHECKPOINT_BYTES: u64 = 4 << 20;
/// Checkpoints the tenant's WAL (`PASSIVE`: never blocks the writer), looking every `every`:
/// when a quiet period follows writes, or once the WAL has grown by [`CHECKPOINT_BYTES`]. A
/// busy small tenant is not checkpointed every tick: with many tenants, that would double
/// the disk's fsyncs.
pub(super) fn spawn_checkpointer(
    store: Store,
    wal: Arc<WalGrowth>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let commits = wal.commits.swap(0, Ordering::Relaxed);
                let bytes = wal.bytes.load(Ordering::Relaxed);
                let quiet = commits == 0 && bytes > 0;
                if !quiet && bytes < CHECKPOINT_BYTES {
                    continue;
                }
                wal.bytes.fetch_sub(bytes, Ordering::Relaxed);
                if let Err(e) = store.checkpoint().await {
                    debug!(error = %e, "checkpoint skipped");
                }
            }
        }
        .in_current_span(),
    )
}
