//! Retention: whole prefixes of logs deleted in bounded steps, `first_seq` moved so sequences
//! are never reused, and the pages given back (incremental vacuum). It runs on the tenant's
//! [`Writer`] (the actor's one read-write connection).

use rusqlite::{params, OptionalExtension};

use super::{Store, Writer};
use crate::error::StoreError;
use crate::model::{RetainBudget, RetainReport, RetentionLimits};

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Writer {
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
            // The signing keys pinned for v4 identities are not history: never deleted.
            if public_key == wharf_protocol::v4::stored::PINS_LOG {
                continue;
            }
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
}

impl Store {}
