//! The webhook outbox: rows upserted by commits, claimed by one relay at a time (`FOR UPDATE
//! SKIP LOCKED`, `claimed_by`), reported on by the claiming relay's tenant writer, given back
//! when a relay stops.

use sqlx::Row;

use super::{to_i64, to_u64, Backend, Store, Writer};
use crate::error::StoreError;
use crate::model::OutboxRow;

impl Backend {
    /// The tenants with webhook notifications pending, by id.
    pub async fn tenants_with_outbox(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT l.tenant FROM webhook_outbox o JOIN logs l ON l.id = o.log_id \
             ORDER BY l.tenant",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Gives back the webhook notifications this relay claimed and never reported on (it is
    /// stopping): due at once, for whichever relay looks next.
    pub async fn release_claims(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE webhook_outbox o SET claimed_by = NULL, due_at = LEAST(o.due_at, $2) \
             FROM (SELECT log_id, endpoint FROM webhook_outbox WHERE claimed_by = $1 \
             ORDER BY log_id, endpoint FOR UPDATE) mine \
             WHERE o.log_id = mine.log_id AND o.endpoint = mine.endpoint",
        )
        .bind(self.instance)
        .bind(crate::config::now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

impl Store {
    /// Claims up to `limit` of the tenant's notifications due at `now_ms`, oldest first, for
    /// `claim_ms` (their `due_at` moves that far ahead, so no other relay delivers them
    /// meanwhile; rows another relay holds are skipped); and when the next row not yet due
    /// (or claimed) is due.
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        limit: usize,
        claim_ms: i64,
    ) -> Result<(Vec<OutboxRow>, Option<i64>), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "WITH due AS (SELECT o.log_id, o.endpoint, o.due_at FROM webhook_outbox o \
             JOIN logs l ON l.id = o.log_id WHERE l.tenant = $1 AND o.due_at <= $2 \
             ORDER BY o.due_at LIMIT $3 FOR UPDATE OF o SKIP LOCKED) \
             UPDATE webhook_outbox o SET due_at = $4, claimed_by = $5 FROM due, logs l \
             WHERE o.log_id = due.log_id AND o.endpoint = due.endpoint AND l.id = o.log_id \
             RETURNING o.endpoint, o.log_id, l.public_key, o.from_seq, o.to_seq, o.count, \
             o.attempts, due.due_at",
        )
        .bind(&*self.tenant)
        .bind(now_ms)
        .bind(to_i64(limit as u64))
        .bind(now_ms.saturating_add(claim_ms))
        .bind(self.instance)
        .fetch_all(&mut *tx)
        .await?;
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(o.due_at) FROM webhook_outbox o JOIN logs l ON l.id = o.log_id \
             WHERE l.tenant = $1 AND o.due_at > $2",
        )
        .bind(&*self.tenant)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut rows = rows
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    endpoint: r.try_get(0)?,
                    log_id: r.try_get(1)?,
                    public_key: r.try_get(2)?,
                    from_seq: to_u64(r.try_get(3)?),
                    to_seq: to_u64(r.try_get(4)?),
                    count: to_u64(r.try_get(5)?),
                    attempts: u32::try_from(r.try_get::<i32, _>(6)?).unwrap_or(0),
                    due_at: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        rows.sort_by_key(|r| r.due_at);
        // The claimed rows are due again when the claim ends (if this relay never reports).
        let next = match (next, rows.is_empty()) {
            (n, true) => n,
            (n, false) => {
                let claim_ends = now_ms.saturating_add(claim_ms);
                Some(n.map_or(claim_ends, |n| n.min(claim_ends)))
            }
        };
        Ok((rows, next))
    }

    /// Gives back what this relay claimed of the tenant's outbox: due at once.
    pub async fn release_claims(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox o SET claimed_by = NULL, due_at = LEAST(o.due_at, $3) \
             FROM (SELECT c.log_id, c.endpoint FROM webhook_outbox c \
             JOIN logs l ON l.id = c.log_id WHERE l.tenant = $1 AND c.claimed_by = $2 \
             ORDER BY c.log_id, c.endpoint FOR UPDATE OF c) mine \
             WHERE o.log_id = mine.log_id AND o.endpoint = mine.endpoint",
        )
        .bind(&*self.tenant)
        .bind(self.instance)
        .bind(crate::config::now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Writer {
    /// A notification was delivered (`due_at`: now) or given up: what `row` announced leaves
    /// the outbox; anything coalesced into the row since is new news, due at `due_at` with its
    /// attempts reset.
    pub async fn outbox_retire(&mut self, row: &OutboxRow, due_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "WITH gone AS (DELETE FROM webhook_outbox WHERE log_id = $1 AND endpoint = $2 \
             AND to_seq <= $3 AND claimed_by = $6 RETURNING 1) \
             UPDATE webhook_outbox SET from_seq = $3 + 1, count = GREATEST(count - $4, 1), \
             attempts = 0, due_at = $5, claimed_by = NULL WHERE log_id = $1 AND endpoint = $2 \
             AND claimed_by = $6 AND NOT EXISTS (SELECT 1 FROM gone)",
        )
        .bind(row.log_id)
        .bind(&row.endpoint)
        .bind(to_i64(row.to_seq))
        .bind(to_i64(row.count))
        .bind(due_at)
        .bind(self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A delivery failed: due again at `due_at`.
    pub async fn outbox_retry(&mut self, row: &OutboxRow, due_at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, due_at = $3, claimed_by = NULL \
             WHERE log_id = $1 AND endpoint = $2 AND claimed_by = $4",
        )
        .bind(row.log_id)
        .bind(&row.endpoint)
        .bind(due_at)
        .bind(self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the tenant's notifications for endpoints not in `endpoints`.
    pub async fn outbox_retain_endpoints(
        &mut self,
        endpoints: &[String],
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM webhook_outbox o USING logs l WHERE l.id = o.log_id \
             AND l.tenant = $1 AND NOT (o.endpoint = ANY($2))",
        )
        .bind(&*self.tenant)
        .bind(endpoints)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
