//! The group commit: each log's id and next sequence (loaded once, then kept by the writer),
//! dedup by entry id, the iv check, the inserts, the quota check and the outbox rows, in one
//! transaction; the writer's in-memory state moves only after `COMMIT` returned.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::{outbox, LogMeta, Writer};
use crate::error::StoreError;
use crate::model::{CommitRules, Outcome, Totals, WriteReq};

impl Writer {
    /// The sequence the next entry of `public_key` gets (loaded once, then kept).
    pub fn next_sequence(&mut self, public_key: &str) -> Result<u64, StoreError> {
        Ok(self.meta(public_key)?.next)
    }

    pub(super) fn meta(&mut self, public_key: &str) -> Result<LogMeta, StoreError> {
        if let Some(meta) = self.logs.get(public_key) {
            return Ok(*meta);
        }
        let row: Option<(i64, i64)> = self
            .conn
            .prepare_cached("SELECT id, first_seq FROM logs WHERE public_key = ?1")?
            .query_row([public_key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (id, first) = match row {
            None => (None, 0),
            Some((id, first)) => (Some(id), u64::try_from(first).unwrap_or(0)),
        };
        let next = match id {
            None => 0,
            Some(id) => {
                let max: Option<i64> = self
                    .conn
                    .prepare_cached("SELECT MAX(seq) FROM entries WHERE log_id = ?1")?
                    .query_row([id], |r| r.get(0))?;
                match max {
                    Some(m) => {
                        u64::try_from(m)
                            .map_err(|_| StoreError::Corrupt(format!("negative sequence {m}")))?
                            + 1
                    }
                    None => 0,
                }
            }
        };
        // A log whose every entry was deleted continues after them: sequences are never reused.
        let meta = LogMeta {
            id,
            next: next.max(first),
            first,
        };
        self.logs.insert(public_key.to_owned(), meta);
        Ok(meta)
    }

    /// Commits `writes` in one transaction: each log's entries get the next sequences in
    /// order, an entry id the log already holds gets its original sequence, and a write whose
    /// 12-byte iv the log already holds is flagged (or, under `strict_iv`, left out). The
    /// in-memory sequence state moves only once `COMMIT` has returned.
    pub fn commit(
        &mut self,
        writes: &[WriteReq],
        rules: &CommitRules,
    ) -> Result<Vec<Outcome>, StoreError> {
        let strict_iv = rules.strict_iv;
        let mut metas: HashMap<&str, LogMeta> = HashMap::new();
        for w in writes {
            if !metas.contains_key(w.public_key.as_str()) {
                metas.insert(&w.public_key, self.meta(&w.public_key)?);
            }
        }
        let quota = rules.quota_applies();
        let mut totals = if quota {
            self.totals()?
        } else {
            Totals::default()
        };
        let mut new_logs = 0u64;
        // Ciphertext bytes each log gained in this commit.
        let mut grown: HashMap<i64, u64> = HashMap::new();
        // (log, first new sequence, end, count) for the webhook outbox.
        let mut appended: HashMap<i64, (u64, u64, u64)> = HashMap::new();
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(writes.len());
        {
            let mut insert_log = tx.prepare_cached(
                "INSERT INTO logs (public_key, first_seq) VALUES (?1, ?2) RETURNING id",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO entries (log_id, seq, entry_id, iv, ciphertext, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (log_id, entry_id) DO NOTHING",
            )?;
            let mut existing =
                tx.prepare_cached("SELECT seq FROM entries WHERE log_id = ?1 AND entry_id = ?2")?;
            let mut iv_used = tx.prepare_cached(
                "SELECT 1 FROM entries WHERE log_id = ?1 AND length(iv) = 12 AND iv = ?2 LIMIT 1",
            )?;
            for w in writes {
                let meta = metas
                    .get_mut(w.public_key.as_str())
                    .ok_or_else(|| StoreError::Corrupt("log state missing".into()))?;
                // A v4 batch whose every entry id the log holds is a retry: acked where it
                // was stored, before the iv check (its iv is stored, with it).
                if w.batch && !w.entries.is_empty() {
                    if let Some(id) = meta.id {
                        let mut originals = Vec::with_capacity(w.entries.len());
                        for e in &w.entries {
                            match existing
                                .query_row(params![id, &e.entry_id[..]], |r| r.get::<_, i64>(0))
                                .optional()?
                            {
                                Some(seq) => originals.push(seq as u64),
                                None => break,
                            }
                        }
                        if originals.len() == w.entries.len() {
                            outcomes.push(Outcome::Written {
                                sequences: originals,
                                new: Vec::new(),
                                iv_reused: false,
                            });
                            continue;
                        }
                    }
                }
                let iv_reused = match meta.id {
                    Some(id) if w.iv.len() == 12 && !w.entries.is_empty() => {
                        iv_used.exists(params![id, &w.iv[..]])?
                    }
                    _ => false,
                };
                if iv_reused && strict_iv {
                    outcomes.push(Outcome::IvRefused);
                    continue;
                }
                if quota {
                    // Checked before any insert. Entries the log already holds (a retry after a
                    // lost Ack) add nothing, so they do not count.
                    let mut size = 0u64;
                    for e in &w.entries {
                        // A batch not skipped above is stored whole.
                        let stored = match meta.id {
                            Some(id) if !w.batch => {
                                existing.exists(params![id, &e.entry_id[..]])?
                            }
                            _ => false,
                        };
                        if !stored {
                            size += e.encrypted_entry.len() as u64;
                        }
                    }
                    if let Some(why) = rules.over_quota(&totals, meta.id.is_none(), size) {
                        outcomes.push(Outcome::OverQuota(why));
                        continue;
                    }
                    totals.bytes += size;
                    if meta.id.is_none() {
                        totals.logs += 1;
                    }
                }
                let log_id = match meta.id {
                    Some(id) => id,
                    None => {
                        let id: i64 = insert_log.query_row(
                            params![&w.public_key, i64::try_from(meta.next).unwrap_or(0)],
                            |r| r.get(0),
                        )?;
                        meta.id = Some(id);
                        new_logs += 1;
                        id
                    }
                };
                let mut sequences = Vec::with_capacity(w.entries.len());
                let mut new = Vec::new();
                for (i, e) in w.entries.iter().enumerate() {
                    let seq = i64::try_from(meta.next)
                        .map_err(|_| StoreError::Corrupt("sequence overflow".into()))?;
                    let mut inserted = insert.execute(params![
                        log_id,
                        seq,
                        &e.entry_id[..],
                        &w.iv[..],
                        &e.encrypted_entry[..],
                        rules.now_ms,
                    ])?;
                    if inserted == 0 && w.batch {
                        inserted = insert.execute(params![
                            log_id,
                            seq,
                            &crate::model::repeat_id(meta.next)[..],
                            &w.iv[..],
                            &e.encrypted_entry[..],
                            rules.now_ms,
                        ])?;
                    }
                    if inserted == 1 {
                        sequences.push(meta.next);
                        new.push(i);
                        *grown.entry(log_id).or_default() += e.encrypted_entry.len() as u64;
                        let span = appended.entry(log_id).or_insert((meta.next, meta.next, 0));
                        span.1 = meta.next;
                        span.2 += 1;
                        meta.next += 1;
                    } else {
                        let original: i64 = existing
                            .query_row(params![log_id, &e.entry_id[..]], |r| r.get(0))
                            .optional()?
                            .ok_or_else(|| {
                                StoreError::Corrupt(format!("sequence {seq} taken twice"))
                            })?;
                        sequences.push(original as u64);
                    }
                }
                outcomes.push(Outcome::Written {
                    sequences,
                    new,
                    iv_reused,
                });
            }
            let mut add_bytes =
                tx.prepare_cached("UPDATE logs SET bytes = bytes + ?2 WHERE id = ?1")?;
            for (log_id, bytes) in &grown {
                add_bytes.execute(params![log_id, i64::try_from(*bytes).unwrap_or(i64::MAX)])?;
            }
            outbox::enqueue_notifications(&tx, &rules.webhooks, &appended, rules.now_ms)?;
        }
        tx.commit()?;
        // Durable: now the in-memory state may move on.
        for (pk, meta) in metas {
            self.logs.insert(pk.to_owned(), meta);
        }
        if let Some(t) = self.totals.as_mut() {
            t.bytes += grown.values().sum::<u64>();
            t.logs += new_logs;
        }
        Ok(outcomes)
    }
}
