//! The webhook outbox: rows written inside a commit (one per endpoint and log, coalesced),
//! read by the sender through the store, updated by the writer after each delivery; and the
//! mark in `data/webhooks/` that makes a restarted relay look at the outbox.

use std::collections::HashMap;

use rusqlite::{params, Transaction};

use super::{Store, Writer};
use crate::error::StoreError;
use crate::model::OutboxRow;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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

impl Writer {
    /// A notification was delivered: what it announced leaves the outbox; anything coalesced
    /// into the row meanwhile stays, due at once.
    pub fn outbox_delivered(&mut self, row: &OutboxRow, now_ms: i64) -> Result<(), StoreError> {
        self.retire_attempted(row, now_ms)
    }

    /// What `row` announced leaves the outbox (delivered, or given up); anything coalesced into
    /// the row since is new news, due at `due_at` with its attempts reset.
    fn retire_attempted(&mut self, row: &OutboxRow, due_at: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM webhook_outbox WHERE endpoint = ?1 AND log_id = ?2 AND to_seq <= ?3",
            params![row.endpoint, row.log_id, to_i64(row.to_seq)],
        )?;
        tx.execute(
            "UPDATE webhook_outbox SET from_seq = ?3 + 1, count = max(count - ?4, 1), \
             attempts = 0, due_at = ?5 WHERE endpoint = ?1 AND log_id = ?2",
            params![
                row.endpoint,
                row.log_id,
                to_i64(row.to_seq),
                to_i64(row.count),
                due_at
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A delivery failed: try again at `due_at`, or drop the row when `give_up`.
    pub fn outbox_failed(
        &mut self,
        row: &OutboxRow,
        due_at: i64,
        give_up: bool,
    ) -> Result<(), StoreError> {
        if give_up {
            // What was tried is dropped; entries coalesced into the row since are new news.
            self.retire_attempted(row, due_at)?;
        } else {
            self.conn.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, due_at = ?3 \
                 WHERE endpoint = ?1 AND log_id = ?2",
                params![row.endpoint, row.log_id, due_at],
            )?;
        }
        Ok(())
    }

    /// Drops notifications for endpoints no longer configured.
    pub fn outbox_retain_endpoints(&mut self, endpoints: &[String]) -> Result<u64, StoreError> {
        let list = serde_json::to_string(endpoints).unwrap_or_else(|_| "[]".into());
        Ok(self.conn.execute(
            "DELETE FROM webhook_outbox WHERE endpoint NOT IN (SELECT value FROM json_each(?1))",
            [list],
        )? as u64)
    }
}

impl Store {
    /// Leaves (or removes) the tenant's mark in `data/webhooks/`, durably: a relay that
    /// restarts looks at the outboxes of the marked tenants.
    pub async fn mark_webhooks(&self, endpoints: bool) -> Result<(), StoreError> {
        let marker = self.shared.webhook_marker.clone();
        tokio::task::spawn_blocking(move || {
            if !endpoints {
                return wharf_durable::remove_file(&marker);
            }
            if let Some(dir) = marker.parent() {
                wharf_durable::create_dir_all(dir)?;
            }
            wharf_durable::touch(&marker)
        })
        .await
        .map_err(|e| StoreError::Failed(format!("a storage task failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("the webhook mark: {e}")))
    }

    /// Notifications due at `now_ms`, oldest first, at most `limit`.
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<OutboxRow>, Option<i64>), StoreError> {
        self.with_read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT o.endpoint, o.log_id, l.public_key, o.from_seq, o.to_seq, o.count, \
             o.attempts, o.due_at FROM webhook_outbox o JOIN logs l ON l.id = o.log_id \
             WHERE o.due_at <= ?1 ORDER BY o.due_at LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![now_ms, to_i64(limit as u64)], |r| {
                    Ok(OutboxRow {
                        endpoint: r.get(0)?,
                        log_id: r.get(1)?,
                        public_key: r.get(2)?,
                        from_seq: to_u64(r.get(3)?),
                        to_seq: to_u64(r.get(4)?),
                        count: to_u64(r.get(5)?),
                        attempts: u32::try_from(r.get::<_, i64>(6)?).unwrap_or(u32::MAX),
                        due_at: r.get(7)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            // When the next row not yet due is due.
            let next: Option<i64> = conn
                .prepare_cached("SELECT MIN(due_at) FROM webhook_outbox WHERE due_at > ?1")?
                .query_row([now_ms], |r| r.get(0))?;
            Ok((rows, next))
        })
        .await
    }
}
