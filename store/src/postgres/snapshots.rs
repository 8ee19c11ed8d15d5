//! Snapshots: stored by the tenant's writer, the newest `keep` per log, within the quota.

use super::commit::tenant_totals;
use super::{to_i64, to_u64, Writer};
use crate::error::StoreError;
use crate::model::{snapshot_growth, CommitRules, SnapshotRefusal, StoredSnapshot};

impl Writer {
    /// Stores a snapshot, keeping the newest `keep` of its log.
    pub async fn write_snapshot(
        &mut self,
        public_key: &str,
        snapshot: &StoredSnapshot,
        keep: usize,
        rules: &CommitRules,
    ) -> Result<Result<(), SnapshotRefusal>, StoreError> {
        let tenant = &*self.tenant;
        let mut tx = self.pool.begin().await?;
        if rules.quota_applies() {
            sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
        }
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, next_seq FROM logs WHERE tenant = $1 AND public_key = $2 FOR NO KEY UPDATE",
        )
        .bind(tenant)
        .bind(public_key)
        .fetch_optional(&mut *tx)
        .await?;
        let log_id = match row {
            Some((id, next)) if snapshot.sequence < to_u64(next) => id,
            other => {
                return Ok(Err(SnapshotRefusal::NotReached {
                    log: public_key.to_owned(),
                    sequence: snapshot.sequence,
                    next: other.map_or(0, |(_, n)| to_u64(n)),
                }))
            }
        };
        let keep = to_i64(keep.max(1) as u64);
        if rules.quota_applies() {
            let kept: Vec<(i64, i64)> =
                sqlx::query_as("SELECT seq, length(data)::int8 FROM snapshots WHERE log_id = $1")
                    .bind(log_id)
                    .fetch_all(&mut *tx)
                    .await?;
            let kept = kept
                .into_iter()
                .map(|(s, n)| (to_u64(s), to_u64(n)))
                .collect();
            let growth = snapshot_growth(
                kept,
                snapshot.sequence,
                snapshot.data.len() as u64,
                keep as usize,
            );
            let totals = tenant_totals(&mut tx, tenant).await?;
            if let Some(why) = rules.over_quota(&totals, false, growth) {
                return Ok(Err(SnapshotRefusal::Quota(why)));
            }
        }
        sqlx::query(
            "INSERT INTO snapshots (log_id, seq, iv, data, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (log_id, seq) DO UPDATE SET iv = excluded.iv, data = excluded.data, \
             at = excluded.at",
        )
        .bind(log_id)
        .bind(to_i64(snapshot.sequence))
        .bind(&snapshot.iv[..])
        .bind(&snapshot.data[..])
        .bind(rules.now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM snapshots WHERE log_id = $1 AND seq NOT IN \
             (SELECT seq FROM snapshots WHERE log_id = $1 ORDER BY seq DESC LIMIT $2)",
        )
        .bind(log_id)
        .bind(keep)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}
