//! The webhook outbox's rows written inside a commit.

use std::collections::HashMap;

use rusqlite::{params, Transaction};

use crate::error::StoreError;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Records, inside a commit, that `appended` (log id → first new sequence, last, count) must
/// be announced to every endpoint; rows for the same (endpoint, log) coalesce.
pub(super) fn enqueue_notifications(
    tx: &Transaction<'_>,
    webhooks: &[String],
    appended: &HashMap<i64, (u64, u64, u64)>,
    now_ms: i64,
) -> Result<(), StoreError> {
    if webhooks.is_empty() || appended.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO webhook_outbox (endpoint, log_id, from_seq, to_seq, count, attempts, due_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6) ON CONFLICT (endpoint, log_id) DO UPDATE SET \
         to_seq = max(to_seq, excluded.to_seq), count = count + excluded.count",
    )?;
    for endpoint in webhooks {
        for (log_id, (from, to, count)) in appended {
            upsert.execute(params![
                endpoint,
                log_id,
                to_i64(*from),
                to_i64(*to),
                to_i64(*count),
                now_ms
            ])?;
        }
    }
    Ok(())
}
