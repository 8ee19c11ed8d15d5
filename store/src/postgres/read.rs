//! The reading side: pages of a log, where its history starts, its snapshots, and how far
//! other relays have taken its logs.

use bytes::Bytes;
use sqlx::Row;
use uuid::Uuid;
use wharf_protocol::RemoteEntry;

use super::{to_i64, to_u64, Store};
use crate::error::StoreError;
use crate::model::StoredSnapshot;

impl Store {
    /// How often the tenant's actor looks for other relays' commits on its own.
    pub fn poll_interval(&self) -> std::time::Duration {
        self.poll_interval
    }

    pub fn remote_id(&self) -> Uuid {
        self.remote_id
    }

    pub async fn read(
        &self,
        public_key: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<RemoteEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, entry_id, iv, ciphertext FROM entries \
             WHERE log_id = (SELECT id FROM logs WHERE tenant = $1 AND public_key = $2) \
             AND seq >= $3 AND seq < $4 ORDER BY seq LIMIT $5",
        )
        .bind(&*self.tenant)
        .bind(public_key)
        .bind(to_i64(from))
        .bind(to_i64(to))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RemoteEntry {
                    sequence: to_u64(r.try_get(0)?),
                    entry_id: Bytes::from(r.try_get::<Vec<u8>, _>(1)?),
                    iv: Bytes::from(r.try_get::<Vec<u8>, _>(2)?),
                    encrypted_entry: Bytes::from(r.try_get::<Vec<u8>, _>(3)?),
                })
            })
            .collect()
    }

    pub async fn history(&self, public_key: &str) -> Result<(u64, Option<u64>), StoreError> {
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT first_seq, (SELECT MAX(seq) FROM snapshots WHERE log_id = logs.id) \
             FROM logs WHERE tenant = $1 AND public_key = $2",
        )
        .bind(&*self.tenant)
        .bind(public_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or((0, None), |(first, newest)| {
            (to_u64(first), newest.map(to_u64))
        }))
    }

    pub async fn snapshot(
        &self,
        public_key: &str,
        sequence: u64,
    ) -> Result<Option<StoredSnapshot>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT iv, data FROM snapshots WHERE seq = $3 AND log_id = \
             (SELECT id FROM logs WHERE tenant = $1 AND public_key = $2)",
        )
        .bind(&*self.tenant)
        .bind(public_key)
        .bind(to_i64(sequence))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(iv, data)| StoredSnapshot {
            sequence,
            iv: iv.into(),
            data: data.into(),
        }))
    }

    /// The tenant's `remoteId` as stored now (`None`: deleted).
    pub async fn stored_identity(&self) -> Result<Option<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT remote_id FROM tenants WHERE id = $1")
                .bind(&*self.tenant)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The next sequence of each of `public_keys` that exists, as committed now.
    pub async fn heads(&self, public_keys: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT public_key, next_seq FROM logs WHERE tenant = $1 AND public_key = ANY($2)",
        )
        .bind(&*self.tenant)
        .bind(public_keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(pk, n)| (pk, to_u64(n))).collect())
    }
}
