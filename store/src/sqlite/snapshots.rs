//! Encrypted snapshots, opaque to the relay: stored by the writer (the newest `keep` per log,
//! within the quota), read by sessions.

use bytes::Bytes;
use rusqlite::{params, OptionalExtension};

use super::{Store, Writer};
use crate::error::StoreError;
use crate::model::{snapshot_growth, CommitRules, SnapshotRefusal, StoredSnapshot};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Writer {
    /// Stores a snapshot of `public_key` covering sequences up to and including `sequence`,
    /// and keeps only the newest `keep` of the log. Refused if the log has not reached
    /// `sequence`, or if it would take the tenant over its byte quota.
    pub fn write_snapshot(
        &mut self,
        public_key: &str,
        snapshot: &StoredSnapshot,
        keep: usize,
        rules: &CommitRules,
    ) -> Result<Result<(), SnapshotRefusal>, StoreError> {
        let meta = self.meta(public_key)?;
        let log_id = match meta.id {
            Some(id) if snapshot.sequence < meta.next => id,
            _ => {
                return Ok(Err(SnapshotRefusal::NotReached {
                    log: public_key.to_owned(),
                    sequence: snapshot.sequence,
                    next: meta.next,
                }))
            }
        };
        let size = snapshot.data.len() as u64;
        if rules.quota_applies() {
            // What the tenant gains: this snapshot, less the one it replaces and those it pushes
            // out of the newest `keep` (a tenant at its quota can still move its snapshot on).
            let kept: Vec<(u64, u64)> = {
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT seq, length(data) FROM snapshots WHERE log_id = ?1")?;
                let rows = stmt.query_map([log_id], |r| {
                    Ok((to_u64(r.get::<_, i64>(0)?), to_u64(r.get(1)?)))
                })?;
                rows.collect::<Result<_, _>>()?
            };
            let growth = snapshot_growth(kept, snapshot.sequence, size, keep);
            let totals = self.totals()?;
            if let Some(why) = rules.over_quota(&totals, false, growth) {
                return Ok(Err(SnapshotRefusal::Quota(why)));
            }
        }
        let tx = self.conn.transaction()?;
        let replaced: Option<i64> = tx
            .query_row(
                "SELECT length(data) FROM snapshots WHERE log_id = ?1 AND seq = ?2",
                params![log_id, to_i64(snapshot.sequence)],
                |r| r.get(0),
            )
            .optional()?;
        tx.execute(
            "INSERT INTO snapshots (log_id, seq, iv, data, at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (log_id, seq) DO UPDATE SET iv = excluded.iv, data = excluded.data, \
             at = excluded.at",
            params![
                log_id,
                to_i64(snapshot.sequence),
                &snapshot.iv[..],
                &snapshot.data[..],
                rules.now_ms
            ],
        )?;
        // The newest `keep` stay.
        let dropped: i64 = tx.query_row(
            "SELECT COALESCE(SUM(length(data)), 0) FROM snapshots WHERE log_id = ?1 AND seq NOT IN \
             (SELECT seq FROM snapshots WHERE log_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![log_id, to_i64(keep.max(1) as u64)],
            |r| r.get(0),
        )?;
        tx.execute(
            "DELETE FROM snapshots WHERE log_id = ?1 AND seq NOT IN \
             (SELECT seq FROM snapshots WHERE log_id = ?1 ORDER BY seq DESC LIMIT ?2)",
            params![log_id, to_i64(keep.max(1) as u64)],
        )?;
        tx.commit()?;
        if let Some(t) = self.totals.as_mut() {
            t.bytes = (t.bytes + size).saturating_sub(to_u64(replaced.unwrap_or(0) + dropped));
        }
        Ok(Ok(()))
    }
}

impl Store {
    /// Where `public_key`'s history starts, and the sequence its newest snapshot covers.
    pub async fn history(&self, public_key: &str) -> Result<(u64, Option<u64>), StoreError> {
        let public_key = public_key.to_owned();
        self.with_read(move |conn| {
            let row: Option<(i64, i64, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT id, first_seq, (SELECT MAX(seq) FROM snapshots \
                 WHERE log_id = logs.id) FROM logs WHERE public_key = ?1",
                )?
                .query_row([&public_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            Ok(match row {
                None => (0, None),
                Some((_, first, newest)) => (to_u64(first), newest.map(to_u64)),
            })
        })
        .await
    }

    /// The snapshot of `public_key` covering `sequence` (read only when it is to be sent: it
    /// may be megabytes).
    pub async fn snapshot(
        &self,
        public_key: &str,
        sequence: u64,
    ) -> Result<Option<StoredSnapshot>, StoreError> {
        let public_key = public_key.to_owned();
        self.with_read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT iv, data FROM snapshots WHERE seq = ?2 AND log_id = \
                 (SELECT id FROM logs WHERE public_key = ?1)",
                )?
                .query_row(params![public_key, to_i64(sequence)], |r| {
                    Ok(StoredSnapshot {
                        sequence,
                        iv: Bytes::from(r.get::<_, Vec<u8>>(0)?),
                        data: Bytes::from(r.get::<_, Vec<u8>>(1)?),
                    })
                })
                .optional()?)
        })
        .await
    }
}
