//! The group commit: the logs' row locks in sorted order, dedup and the iv check against what
//! each log holds, one `UNNEST` insert, `next_seq` moved and the doorbell rung, in one
//! transaction.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use sqlx::{Postgres, Transaction};

use super::{to_i64, to_u64, Writer, CHANNEL};
use crate::error::StoreError;
use crate::model::{CommitRules, Outcome, Totals, WriteReq};

/// Largest payload sent in one notification (Postgres refuses 8,000 bytes and more).
const MAX_PAYLOAD: usize = 7_900;
/// Ciphertext bytes inserted by one statement, at most (about: an entry is never split).
pub(super) const INSERT_CHUNK_BYTES: usize = 16 << 20;
/// One log as a commit holds it: locked, with what the group does to it.
struct Locked {
    id: i64,
    /// Its next sequence when locked, and as this group leaves it.
    start: u64,
    next: u64,
    /// Inserted by this transaction (no entries yet before it).
    created: bool,
    /// Some write to it was accepted.
    accepted: bool,
    /// Entry ids the log holds (among those this group writes), with their sequences.
    known: HashMap<Bytes, u64>,
    /// 12-byte ivs the log holds (among those this group writes).
    ivs: HashSet<Bytes>,
    /// Ciphertext bytes this commit adds.
    bytes: u64,
}

/// A row of what a log already holds: an entry id with its sequence, or a 12-byte iv.
type Held = (Option<Vec<u8>>, Option<i64>, Option<Vec<u8>>);
/// New entries, column by column, for `UNNEST` inserts: a commit's group, or a batch of an
/// import.
#[derive(Default)]
pub(super) struct Columns {
    pub(super) log_ids: Vec<i64>,
    pub(super) seqs: Vec<i64>,
    pub(super) entry_ids: Vec<Vec<u8>>,
    pub(super) ivs: Vec<Vec<u8>>,
    pub(super) ciphertexts: Vec<Vec<u8>>,
    /// Ciphertext bytes held.
    pub(super) bytes: usize,
}

impl Columns {
    pub(super) fn push(
        &mut self,
        log_id: i64,
        seq: i64,
        entry_id: Vec<u8>,
        iv: Vec<u8>,
        ciphertext: Vec<u8>,
    ) {
        self.bytes += ciphertext.len();
        self.log_ids.push(log_id);
        self.seqs.push(seq);
        self.entry_ids.push(entry_id);
        self.ivs.push(iv);
        self.ciphertexts.push(ciphertext);
    }

    pub(super) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Inserts every entry held, committed at `at_ms`, one statement per ~16 MiB of
    /// ciphertext (a group may hold far more than one message to the server should); then
    /// holds none.
    pub(super) async fn insert(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
        at_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let mut start = 0;
        while start < self.len() {
            let mut end = start;
            let mut size = 0;
            while end < self.len() && (end == start || size < INSERT_CHUNK_BYTES) {
                size += self.ciphertexts[end].len();
                end += 1;
            }
            sqlx::query(
                "INSERT INTO entries (log_id, seq, entry_id, iv, ciphertext, at) \
                 SELECT l, s, e, i, c, $6 FROM UNNEST($1::int8[], $2::int8[], $3::bytea[], \
                 $4::bytea[], $5::bytea[]) AS t(l, s, e, i, c)",
            )
            .bind(&self.log_ids[start..end])
            .bind(&self.seqs[start..end])
            .bind(&self.entry_ids[start..end])
            .bind(&self.ivs[start..end])
            .bind(&self.ciphertexts[start..end])
            .bind(at_ms)
            .execute(&mut **tx)
            .await?;
            start = end;
        }
        *self = Columns::default();
        Ok(())
    }
}

/// Takes `public_key`'s row lock, creating the log if no relay has yet: its id, its next
/// sequence, and whether this transaction created it.
pub(super) async fn lock_log(
    tx: &mut Transaction<'static, Postgres>,
    tenant: &str,
    public_key: &str,
) -> Result<(i64, u64, bool), StoreError> {
    for _ in 0..2 {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, next_seq FROM logs WHERE tenant = $1 AND public_key = $2 FOR NO KEY UPDATE",
        )
        .bind(tenant)
        .bind(public_key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some((id, next)) = row {
            return Ok((id, to_u64(next), false));
        }
        // Nobody has it. If another relay creates it at this moment, the insert waits for that
        // transaction and inserts nothing; the lock is then taken on its row.
        let created: Option<i64> = sqlx::query_scalar(
            "INSERT INTO logs (tenant, public_key) VALUES ($1, $2) \
             ON CONFLICT (tenant, public_key) DO NOTHING RETURNING id",
        )
        .bind(tenant)
        .bind(public_key)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = created {
            return Ok((id, 0, true));
        }
    }
    Err(StoreError::Corrupt(format!(
        "log {public_key:?} could not be created or locked"
    )))
}

/// What the tenant stores, for quotas.
pub(super) async fn tenant_totals(
    tx: &mut Transaction<'static, Postgres>,
    tenant: &str,
) -> Result<Totals, StoreError> {
    let (bytes, logs, snapshots): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(bytes), 0)::int8, COUNT(*), \
         COALESCE((SELECT SUM(length(s.data)) FROM snapshots s JOIN logs l ON l.id = s.log_id \
         WHERE l.tenant = $1), 0)::int8 FROM logs WHERE tenant = $1",
    )
    .bind(tenant)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Totals {
        bytes: to_u64(bytes) + to_u64(snapshots),
        logs: to_u64(logs),
    })
}

/// The doorbells of one commit as notification payloads, each under [`MAX_PAYLOAD`] bytes. A
/// log whose own doorbell would not fit (it cannot, with `max_public_key_bytes` ≤ 7 kB) is
/// left to the safety poll.
fn doorbell_payloads(bells: Vec<serde_json::Value>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for bell in bells {
        let item = bell.to_string();
        if item.len() + 2 > MAX_PAYLOAD {
            continue;
        }
        if !current.is_empty() && current.len() + item.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            payloads.push(std::mem::take(&mut current));
        }
        current.push(if current.is_empty() { '[' } else { ',' });
        current.push_str(&item);
    }
    if !current.is_empty() {
        current.push(']');
        payloads.push(current);
    }
    payloads
}

impl Writer {
    /// The sequence the next entry of `public_key` gets, as committed now (by any relay).
    pub async fn next_sequence(&mut self, public_key: &str) -> Result<u64, StoreError> {
        let next: Option<i64> =
            sqlx::query_scalar("SELECT next_seq FROM logs WHERE tenant = $1 AND public_key = $2")
                .bind(&*self.tenant)
                .bind(public_key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(next.map_or(0, to_u64))
    }

    /// Commits `writes` in one transaction (see the module's documentation). Nothing is kept
    /// in memory: the next commit reads each log's row again under its lock.
    pub async fn commit(
        &mut self,
        writes: &[WriteReq],
        rules: &CommitRules,
    ) -> Result<Vec<Outcome>, StoreError> {
        let tenant = &*self.tenant;
        let mut tx = self.pool.begin().await?;
        let quota = rules.quota_applies();
        let mut totals = Totals::default();
        if quota {
            // Quotas count the whole tenant: its commits take turns across relays.
            sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            totals = tenant_totals(&mut tx, tenant).await?;
        }
        let mut keys: Vec<&str> = writes.iter().map(|w| w.public_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut logs: HashMap<&str, Locked> = HashMap::with_capacity(keys.len());
        for pk in keys {
            let (id, next, created) = lock_log(&mut tx, tenant, pk).await?;
            let mut ids: Vec<&[u8]> = Vec::new();
            let mut ivs: Vec<&[u8]> = Vec::new();
            for w in writes.iter().filter(|w| w.public_key == pk) {
                ids.extend(w.entries.iter().map(|e| &e.entry_id[..]));
                if w.iv.len() == 12 {
                    ivs.push(&w.iv[..]);
                }
            }
            ivs.sort_unstable();
            ivs.dedup();
            let mut locked = Locked {
                id,
                start: next,
                next,
                created,
                accepted: false,
                known: HashMap::new(),
                ivs: HashSet::new(),
                bytes: 0,
            };
            if !created {
                // Under the lock (a statement of its own, so it sees every commit that held
                // the lock before): the entry ids the log already holds, with their
                // sequences, and the 12-byte ivs it already holds (one index probe each).
                let rows: Vec<Held> = sqlx::query_as(
                    "SELECT entry_id, seq, NULL::bytea FROM entries \
                     WHERE log_id = $1 AND entry_id = ANY($2) \
                     UNION ALL SELECT NULL, NULL, t.iv FROM UNNEST($3::bytea[]) AS t(iv) \
                     WHERE EXISTS (SELECT 1 FROM entries e WHERE e.log_id = $1 \
                     AND length(e.iv) = 12 AND e.iv = t.iv)",
                )
                .bind(id)
                .bind(&ids)
                .bind(&ivs)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    match row {
                        (Some(entry_id), Some(seq), _) => {
                            locked.known.insert(Bytes::from(entry_id), to_u64(seq));
                        }
                        (_, _, Some(iv)) => {
                            locked.ivs.insert(Bytes::from(iv));
                        }
                        _ => {}
                    }
                }
            }
            logs.insert(pk, locked);
        }

        let mut columns = Columns::default();
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut counted_new: HashSet<&str> = HashSet::new();
        for w in writes {
            let log = logs
                .get_mut(w.public_key.as_str())
                .ok_or_else(|| StoreError::Corrupt("log state missing".into()))?;
            // A v4 batch whose every entry id the log holds is a retry: acked where it was
            // stored, before the iv check (its iv is stored, with it).
            if w.batch
                && !w.entries.is_empty()
                && w.entries
                    .iter()
                    .all(|e| log.known.contains_key(&e.entry_id))
            {
                let sequences = w
                    .entries
                    .iter()
                    .filter_map(|e| log.known.get(&e.entry_id).copied())
                    .collect();
                outcomes.push(Outcome::Written {
                    sequences,
                    new: Vec::new(),
                    iv_reused: false,
                });
                continue;
            }
            let iv_reused = w.iv.len() == 12 && !w.entries.is_empty() && log.ivs.contains(&w.iv);
            if iv_reused && rules.strict_iv {
                outcomes.push(Outcome::IvRefused);
                continue;
            }
            if quota {
                // Entries the log already holds (a retry after a lost Ack) add nothing.
                let size: u64 = w
                    .entries
                    .iter()
                    .filter(|e| w.batch || !log.known.contains_key(&e.entry_id))
                    .map(|e| e.encrypted_entry.len() as u64)
                    .sum();
                let new_log = log.created && !counted_new.contains(w.public_key.as_str());
                if let Some(why) = rules.over_quota(&totals, new_log, size) {
                    outcomes.push(Outcome::OverQuota(why));
                    continue;
                }
                totals.bytes += size;
                if new_log {
                    totals.logs += 1;
                    counted_new.insert(w.public_key.as_str());
                }
            }
            log.accepted = true;
            let mut sequences = Vec::with_capacity(w.entries.len());
            let mut new = Vec::new();
            for (i, e) in w.entries.iter().enumerate() {
                let repeat = match log.known.get(&e.entry_id) {
                    Some(seq) if !w.batch => {
                        sequences.push(*seq);
                        continue;
                    }
                    Some(_) => true,
                    None => false,
                };
                let seq = log.next;
                log.next += 1;
                // A batch stored whole keeps an id the log holds under a repeat id; the id's
                // first sequence stays the one retries are acked at.
                let entry_id = if repeat {
                    crate::model::repeat_id(seq).to_vec()
                } else {
                    log.known.insert(e.entry_id.clone(), seq);
                    e.entry_id.to_vec()
                };
                log.bytes += e.encrypted_entry.len() as u64;
                columns.push(
                    log.id,
                    to_i64(seq),
                    entry_id,
                    w.iv.to_vec(),
                    e.encrypted_entry.to_vec(),
                );
                sequences.push(seq);
                new.push(i);
            }
            if w.iv.len() == 12 && !new.is_empty() {
                log.ivs.insert(w.iv.clone());
            }
            outcomes.push(Outcome::Written {
                sequences,
                new,
                iv_reused,
            });
        }

        columns.insert(&mut tx, rules.now_ms).await?;
        let (mut ids, mut nexts, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        let (mut firsts, mut counts) = (Vec::new(), Vec::new());
        let mut abandoned = Vec::new();
        let mut bells = Vec::new();
        for (pk, log) in &logs {
            if log.created && !log.accepted {
                abandoned.push(log.id);
            } else if log.next > log.start {
                ids.push(log.id);
                nexts.push(to_i64(log.next));
                bytes.push(to_i64(log.bytes));
                firsts.push(to_i64(log.start));
                counts.push(to_i64(log.next - log.start));
                bells.push(serde_json::json!([tenant, pk, log.next]));
            }
        }
        if !rules.webhooks.is_empty() && !ids.is_empty() {
            // Every endpoint is to be told about every log that grew; a row still pending for
            // the (log, endpoint) absorbs the news (its due time, or another relay's claim on
            // it, stays).
            let lasts: Vec<i64> = nexts.iter().map(|n| n - 1).collect();
            sqlx::query(
                "INSERT INTO webhook_outbox (log_id, endpoint, from_seq, to_seq, count, due_at) \
                 SELECT a.l, e, a.f, a.t, a.c, $6 \
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[]) AS a(l, f, t, c) \
                 CROSS JOIN UNNEST($5::text[]) AS e ORDER BY a.l, e \
                 ON CONFLICT (log_id, endpoint) DO UPDATE SET \
                 to_seq = GREATEST(webhook_outbox.to_seq, excluded.to_seq), \
                 count = webhook_outbox.count + excluded.count",
            )
            .bind(&ids)
            .bind(&firsts)
            .bind(&lasts)
            .bind(&counts)
            .bind(&rules.webhooks)
            .bind(rules.now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if !ids.is_empty() {
            // The logs move on, and the doorbells ring (delivered to every listening relay when,
            // and only if, the transaction commits): one statement.
            sqlx::query(
                "WITH moved AS (UPDATE logs SET next_seq = t.n, bytes = logs.bytes + t.b \
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) AS t(id, n, b) \
                 WHERE logs.id = t.id) \
                 SELECT pg_notify($4, p) FROM UNNEST($5::text[]) AS p",
            )
            .bind(&ids)
            .bind(&nexts)
            .bind(&bytes)
            .bind(CHANNEL)
            .bind(doorbell_payloads(bells))
            .execute(&mut *tx)
            .await?;
        }
        if !abandoned.is_empty() {
            // A log this commit created for a write a quota then refused: not kept.
            sqlx::query("DELETE FROM logs WHERE id = ANY($1)")
                .bind(&abandoned)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_split_under_the_payload_limit() {
        let bells: Vec<_> = (0..500)
            .map(|i| serde_json::json!(["tenant", format!("log-{i:04}-{}", "x".repeat(40)), i]))
            .collect();
        let payloads = doorbell_payloads(bells);
        assert!(payloads.len() > 1);
        let mut seen = 0;
        for p in &payloads {
            assert!(p.len() < 8000, "{} bytes", p.len());
            let parsed: Vec<(String, String, u64)> = serde_json::from_str(p).expect("json");
            seen += parsed.len();
        }
        assert_eq!(seen, 500);
    }
}
