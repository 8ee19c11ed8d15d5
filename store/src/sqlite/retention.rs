//! What keeps a tenant database from growing forever: snapshots, retention, quotas and the
//! webhook outbox. Every write here runs on the tenant's [`Writer`] (the actor's one
//! read-write connection); reads that sessions and the webhook sender need go through
//! [`Store`]'s read-only connections.

use bytes::Bytes;
use rusqlite::{params, OptionalExtension};

use super::{Store, Writer};
use crate::error::StoreError;
use crate::model::{
    snapshot_growth, CommitRules, OutboxRow, RetainBudget, RetainReport, RetentionLimits,
    SnapshotRefusal, StoredSnapshot, Totals,
};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Writer {
    /// What the tenant stores (loaded once, then kept up to date by commits and retention).
    pub fn totals(&mut self) -> Result<Totals, StoreError> {
        if let Some(t) = self.totals {
            return Ok(t);
        }
        let (bytes, logs): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM logs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let snapshots: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(length(data)), 0) FROM snapshots",
            [],
            |r| r.get(0),
        )?;
        let t = Totals {
            bytes: to_u64(bytes) + to_u64(snapshots),
            logs: to_u64(logs),
        };
        self.totals = Some(t);
        Ok(t)
    }

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

    /// Applies `limits` to every log, deleting at most `budget` entries (oldest first, whole
    /// prefixes only, so a log's history always starts at one sequence and sequences are never
    /// reused). Then gives freed pages back to the file system (incremental vacuum).
    pub fn retain(
        &mut self,
        limits: &RetentionLimits,
        now_ms: i64,
        budget: u64,
    ) -> Result<RetainReport, StoreError> {
        if limits.is_off() {
            return Ok(RetainReport::default());
        }
        let logs: Vec<(i64, String, i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, public_key, first_seq, bytes FROM logs ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let epoch: i64 = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'retention_epoch'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let mut budget = RetainBudget::new(budget);
        for (log_id, public_key, first, bytes) in logs {
            let first = to_u64(first);
            let Some(window) = budget.window(first) else {
                break;
            };
            let next = self.meta(&public_key)?.next;
            let target = self.retention_target(
                log_id,
                first,
                next,
                to_u64(bytes),
                limits,
                (now_ms, epoch),
                window,
            )?;
            if target <= first {
                continue;
            }
            let end = target.min(window);
            let tx = self.conn.transaction()?;
            let freed: i64 = tx.query_row(
                "SELECT COALESCE(SUM(length(ciphertext)), 0) FROM entries \
                 WHERE log_id = ?1 AND seq >= ?2 AND seq < ?3",
                params![log_id, to_i64(first), to_i64(end)],
                |r| r.get(0),
            )?;
            let deleted = tx.execute(
                "DELETE FROM entries WHERE log_id = ?1 AND seq >= ?2 AND seq < ?3",
                params![log_id, to_i64(first), to_i64(end)],
            )? as u64;
            tx.execute(
                "UPDATE logs SET first_seq = ?2, bytes = max(bytes - ?3, 0) WHERE id = ?1",
                params![log_id, to_i64(end), freed],
            )?;
            tx.commit()?;
            if let Some(meta) = self.logs.get_mut(&public_key) {
                meta.first = end;
            }
            if let Some(t) = self.totals.as_mut() {
                t.bytes = t.bytes.saturating_sub(to_u64(freed));
            }
            budget.trimmed(public_key, (first, end, target), deleted, to_u64(freed));
        }
        if budget.report().entries_deleted > 0 {
            self.vacuum()?;
        }
        let report = budget.finish();
        Ok(report)
    }

    /// Where a log's history should start under `limits`, as far as `window`.
    #[allow(clippy::too_many_arguments)]
    fn retention_target(
        &mut self,
        log_id: i64,
        first: u64,
        next: u64,
        bytes: u64,
        limits: &RetentionLimits,
        (now_ms, epoch): (i64, i64),
        window: u64,
    ) -> Result<u64, StoreError> {
        // Nothing at or beyond `window` can be deleted by this step: searches stop there, so
        // a step costs what it deletes, not the whole log.
        let mut target = first;
        if let Some(max) = limits.max_entries {
            target = target.max(next.saturating_sub(max));
        }
        if limits.after_snapshot {
            let newest: Option<i64> = self
                .conn
                .prepare_cached("SELECT MAX(seq) FROM snapshots WHERE log_id = ?1")?
                .query_row([log_id], |r| r.get(0))?;
            if let Some(s) = newest {
                target = target.max(to_u64(s) + 1);
            }
        }
        if let Some(max_age) = limits.max_age_ms {
            let cutoff = now_ms.saturating_sub(max_age);
            // The first entry young enough to keep; none: every entry is too old.
            let young: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM entries WHERE log_id = ?1 AND seq >= ?2 AND seq < ?5 \
                     AND COALESCE(at, ?3) >= ?4 ORDER BY seq LIMIT 1",
                )?
                .query_row(
                    params![log_id, to_i64(target), epoch, cutoff, to_i64(window)],
                    |r| r.get(0),
                )
                .optional()?;
            target = target.max(young.map_or(window.min(next), to_u64));
        }
        if let Some(max) = limits.max_bytes {
            if bytes > max {
                // Walk from the oldest kept entry until enough bytes are gone.
                let mut excess = bytes - max;
                let mut stmt = self.conn.prepare_cached(
                    "SELECT seq, length(ciphertext) FROM entries WHERE log_id = ?1 AND seq >= ?2 \
                     AND seq < ?3 ORDER BY seq",
                )?;
                let mut rows = stmt.query(params![log_id, to_i64(first), to_i64(window)])?;
                let mut cut = first;
                while let Some(row) = rows.next()? {
                    if excess == 0 {
                        break;
                    }
                    let (seq, len): (i64, i64) = (row.get(0)?, row.get(1)?);
                    excess = excess.saturating_sub(to_u64(len));
                    cut = to_u64(seq) + 1;
                }
                target = target.max(cut);
            }
        }
        Ok(target.min(next))
    }

    /// Returns free pages to the file system (databases created with `auto_vacuum =
    /// INCREMENTAL`; older ones reuse the pages for new entries instead).
    pub fn vacuum(&mut self) -> Result<(), StoreError> {
        // The pragma frees one page per step: step it to the end (`execute_batch` steps once).
        let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    }

    /// The tenant's settings as an administrator stored them (JSON), if any.
    pub fn settings(&self) -> Result<Option<String>, StoreError> {
        let raw: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'settings'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(raw.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn set_settings(&mut self, json: Option<&str>) -> Result<(), StoreError> {
        match json {
            Some(json) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('settings', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [json.as_bytes()],
            )?,
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = 'settings'", [])?,
        };
        Ok(())
    }

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
