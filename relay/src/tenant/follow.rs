//! Following what other relays commit to a tenant's logs (a store other relays write): the
//! live tails are brought up to the database, on a doorbell, after a resync, on the store's
//! poll, and before a local group is published (its entries come after what others committed
//! first). On a store only this relay writes, a tail is never behind: nothing is read.

use tracing::{debug, warn};
use wharf_store::Store;

use crate::live::LiveTails;

/// Entries read per query while following a shared log.
const FOLLOW_PAGE: u64 = 256;
/// A tail further behind the database than this is not caught up page by page on the actor's
/// task: it restarts at the newest page, and subscribers behind it read storage themselves.
const FOLLOW_MAX: u64 = 4_096;
/// Appends to `public_key`'s live tail, if it has one, what the shared database holds from
/// the tail's next sequence up to `until`. A failed read is left to the next doorbell or poll.
pub(super) async fn follow_log(live: &mut LiveTails, store: &Store, public_key: &str, until: u64) {
    loop {
        let Some(from) = live.get(public_key).map(|l| l.next()) else {
            return;
        };
        if from >= until {
            return;
        }
        let far = until - from > FOLLOW_MAX;
        let start = if far { until - FOLLOW_PAGE } else { from };
        let entries = match store
            .read(public_key, start, until, FOLLOW_PAGE as usize)
            .await
        {
            Ok(entries) => entries,
            Err(e) => {
                warn!(error = %e, "cannot read other relays' entries; the poll retries");
                return;
            }
        };
        let Some(first) = entries.first() else {
            return;
        };
        // Sequences are dense and commits are seen in order, so a gap means history below was
        // deleted (by an administrator): the tail restarts, readers catch up from storage.
        let restart = far || first.sequence != from;
        if restart {
            debug!(from, found = first.sequence, "shared log's tail restarts");
        }
        live.followed(public_key, entries, restart);
    }
}

/// Follows every subscribed log that another relay has moved past its tail.
pub(super) async fn follow_all(live: &mut LiveTails, store: &Store) {
    let keys = live.keys();
    if keys.is_empty() {
        return;
    }
    match store.heads(&keys).await {
        Ok(heads) => {
            for (public_key, next) in heads {
                follow_log(live, store, &public_key, next).await;
            }
        }
        Err(e) => warn!(error = %e, "cannot look for other relays' commits; retried"),
    }
}
