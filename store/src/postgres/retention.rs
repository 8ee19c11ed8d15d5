//! Retention on the shared database: each log's prefix deleted under its row lock (relays
//! trimming one log take turns), in bounded steps, `first_seq` moved so sequences are never
//! reused.

use sqlx::{Postgres, Transaction};

use super::{to_i64, to_u64, Writer};
use crate::error::StoreError;
use crate::model::{RetainBudget, RetainReport, RetentionLimits};

/// Ciphertext bytes one retention step deletes from a log, at most (about).
const RETAIN_STEP_BYTES: u64 = 64 << 20;
impl Writer {
    /// Applies `limits` to every log of the tenant, deleting at most `budget` entries (oldest
    /// first, whole prefixes only: a log's history starts at `first_seq`, and sequences are
    /// never reused). Each log is trimmed in a transaction of its own under its row lock, so
    /// relays running retention on one tenant at once take turns, and each computes its cut
    /// from what the other left.
    pub async fn retain(
        &mut self,
        limits: &RetentionLimits,
        now_ms: i64,
        budget: u64,
    ) -> Result<RetainReport, StoreError> {
        if limits.is_off() {
            return Ok(RetainReport::default());
        }
        let logs: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, public_key FROM logs WHERE tenant = $1 ORDER BY id")
                .bind(&*self.tenant)
                .fetch_all(&self.pool)
                .await?;
        let mut budget = RetainBudget::new(budget);
        for (log_id, public_key) in logs {
            // The signing keys pinned for v4 identities are not history: never deleted.
            if public_key == wharf_protocol::v4::stored::PINS_LOG {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            let row: Option<(i64, i64, i64)> = sqlx::query_as(
                "SELECT first_seq, next_seq, bytes FROM logs WHERE id = $1 FOR NO KEY UPDATE",
            )
            .bind(log_id)
            .fetch_optional(&mut *tx)
            .await?;
            // Deleted meanwhile by an administrator.
            let Some((first, next, bytes)) = row else {
                continue;
            };
            let (first, next) = (to_u64(first), to_u64(next));
            let Some(mut window) = budget.window(first) else {
                break;
            };
            if to_u64(bytes) > RETAIN_STEP_BYTES {
                // Large entries: a step also stops at about RETAIN_STEP_BYTES of ciphertext,
                // so it stays well inside statement_timeout while it holds the log's lock.
                let past: Option<i64> = sqlx::query_scalar(
                    "SELECT seq FROM (SELECT seq, SUM(length(ciphertext)) OVER (ORDER BY seq) \
                     AS upto FROM entries WHERE log_id = $1 AND seq >= $2 AND seq < $3) t \
                     WHERE upto > $4 ORDER BY seq LIMIT 1",
                )
                .bind(log_id)
                .bind(to_i64(first))
                .bind(to_i64(window))
                .bind(to_i64(RETAIN_STEP_BYTES))
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(seq) = past {
                    window = window.min(to_u64(seq).max(first + 1));
                }
            }
            let target = retention_target(
                &mut tx,
                log_id,
                (first, next, to_u64(bytes)),
                limits,
                now_ms,
                window,
            )
            .await?;
            if target <= first {
                continue;
            }
            let end = target.min(window);
            let (deleted, freed): (i64, i64) = sqlx::query_as(
                "WITH gone AS (DELETE FROM entries WHERE log_id = $1 AND seq >= $2 AND seq < $3 \
                 RETURNING length(ciphertext) AS n) \
                 SELECT COUNT(*), COALESCE(SUM(n), 0)::int8 FROM gone",
            )
            .bind(log_id)
            .bind(to_i64(first))
            .bind(to_i64(end))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE logs SET first_seq = $2, bytes = GREATEST(bytes - $3, 0) WHERE id = $1",
            )
            .bind(log_id)
            .bind(to_i64(end))
            .bind(freed)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            budget.trimmed(
                public_key,
                (first, end, target),
                to_u64(deleted),
                to_u64(freed),
            );
        }
        Ok(budget.finish())
    }
}

/// Where a log's history should start under `limits` (the log's `first`, `next` and
/// ciphertext `bytes` as locked), as far as `window`: searches stop there, so a step costs
/// what it deletes, not the whole log.
async fn retention_target(
    tx: &mut Transaction<'static, Postgres>,
    log_id: i64,
    (first, next, bytes): (u64, u64, u64),
    limits: &RetentionLimits,
    now_ms: i64,
    window: u64,
) -> Result<u64, StoreError> {
    let mut target = first;
    if let Some(max) = limits.max_entries {
        target = target.max(next.saturating_sub(max));
    }
    if limits.after_snapshot {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM snapshots WHERE log_id = $1")
                .bind(log_id)
                .fetch_one(&mut **tx)
                .await?;
        if let Some(s) = newest {
            target = target.max(to_u64(s) + 1);
        }
    }
    if let Some(max_age) = limits.max_age_ms {
        // The first entry young enough to keep; none: every entry up to the window is too old.
        let young: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM entries WHERE log_id = $1 AND seq >= $2 AND seq < $3 AND at >= $4 \
             ORDER BY seq LIMIT 1",
        )
        .bind(log_id)
        .bind(to_i64(target))
        .bind(to_i64(window))
        .bind(now_ms.saturating_sub(max_age))
        .fetch_optional(&mut **tx)
        .await?;
        target = target.max(young.map_or(window.min(next), to_u64));
    }
    if let Some(max) = limits.max_bytes.filter(|max| bytes > *max) {
        // From the oldest entry on, the first whose deletion (with those before it) frees
        // enough; none in the window: the whole window goes.
        let enough: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM (SELECT seq, SUM(length(ciphertext)) \
             OVER (ORDER BY seq) AS freed FROM entries \
             WHERE log_id = $1 AND seq >= $2 AND seq < $3) t \
             WHERE freed >= $4 ORDER BY seq LIMIT 1",
        )
        .bind(log_id)
        .bind(to_i64(first))
        .bind(to_i64(window))
        .bind(to_i64(bytes - max))
        .fetch_optional(&mut **tx)
        .await?;
        target = target.max(enough.map_or(window.min(next), |s| to_u64(s) + 1));
    }
    Ok(target.min(next))
}
