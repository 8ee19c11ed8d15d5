//! Tenants in one PostgreSQL database that any number of relays share (`--store
//! postgres://…`, docs/scale-out.md).
//!
//! Postgres decides the order. Each log's next sequence lives in its `logs` row; a commit
//! locks the rows of the logs it appends to (`SELECT … FOR NO KEY UPDATE`, in one fixed order so two
//! relays never deadlock), dedups entry ids against what the log holds, inserts the whole
//! group with one `UNNEST` statement, moves `next_seq`, and rings the doorbell (`NOTIFY`) in the
//! same transaction. A relay keeps no sequence state between commits: another relay may have
//! appended since. Every relay still runs one actor per open tenant, so group commit happens
//! per relay, and commits of different relays to one log take turns at its row lock.

pub mod admin;
pub mod feed;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;
use wharf_protocol::RemoteEntry;

use crate::config::{PostgresConfig, TenantId};
use crate::error::StoreError;
use crate::model::{
    snapshot_growth, CommitRules, OutboxRow, Outcome, RetainBudget, RetainReport, RetentionLimits,
    SnapshotRefusal, StoredSnapshot, Totals, WriteReq,
};

/// The schema, applied when a relay starts (`store/migrations/postgres/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The channel commits ring. Payload: a JSON array of `[tenant, publicKey, nextSequence]`
/// (never ciphertext), split to stay under Postgres's 8,000-byte limit.
pub const CHANNEL: &str = "wharf_commits";
/// The channel a settings change rings (payload: the tenant id), so that every relay with the
/// tenant open applies it.
pub const SETTINGS_CHANNEL: &str = "wharf_settings";
/// Largest payload sent in one notification (Postgres refuses 8,000 bytes and more).
const MAX_PAYLOAD: usize = 7_900;
/// Ciphertext bytes inserted by one statement, at most (about: an entry is never split).
const INSERT_CHUNK_BYTES: usize = 16 << 20;
/// Ciphertext bytes one retention step deletes from a log, at most (about).
const RETAIN_STEP_BYTES: u64 = 64 << 20;

/// The shared database, as one relay uses it.
#[derive(Debug, Clone)]
pub struct Backend {
    pool: PgPool,
    options: PgConnectOptions,
    /// This relay process, as the webhook outbox's claims name it.
    instance: Uuid,
    /// How often an open tenant looks for other relays' commits on its own.
    poll_interval: std::time::Duration,
}

impl Backend {
    /// A pool that connects on first use: `url` plus the relay's session settings (the
    /// timeouts that bound what a stuck or dead relay can hold).
    pub fn connect_lazy(url: &str, config: &PostgresConfig) -> Result<Self, StoreError> {
        let ms = |d: std::time::Duration| format!("{}ms", d.as_millis());
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e| StoreError::Config(format!("store: {e}")))?
            .application_name(&format!("wharf-relay/{}", std::process::id()))
            .options([
                ("lock_timeout", ms(config.lock_timeout)),
                ("statement_timeout", ms(config.statement_timeout)),
                (
                    "idle_in_transaction_session_timeout",
                    ms(config.idle_in_transaction_timeout),
                ),
                // An Ack means durable: never let a server default weaken that.
                ("synchronous_commit", "on".to_owned()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            instance: Uuid::new_v4(),
            poll_interval: config.poll_interval,
        })
    }

    /// The relay's connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Brings the schema up to date (every relay does at start; Postgres serializes them).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Whether the database answers within a few seconds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(std::time::Duration::from_secs(3), ping).await {
            Ok(done) => done.map(|_| ()).map_err(StoreError::from),
            Err(_) => Err(StoreError::Config(
                "the Postgres database did not answer within 3 s".into(),
            )),
        }
    }

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

    /// Options for a connection of its own (the LISTEN connection).
    pub fn options(&self) -> PgConnectOptions {
        self.options
            .clone()
            .application_name(&format!("wharf-relay-listen/{}", std::process::id()))
    }

    /// Opens `tenant`, creating it (and its `remoteId`) on first use by any relay.
    pub async fn open(&self, tenant: &TenantId) -> Result<(Store, Writer), StoreError> {
        sqlx::query(
            "INSERT INTO tenants (id, remote_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(Uuid::new_v4())
        .execute(&self.pool)
        .await?;
        let remote_id: Uuid = sqlx::query_scalar("SELECT remote_id FROM tenants WHERE id = $1")
            .bind(tenant.as_str())
            .fetch_one(&self.pool)
            .await?;
        let tenant: Arc<str> = tenant.as_str().into();
        Ok((
            Store {
                pool: self.pool.clone(),
                tenant: tenant.clone(),
                remote_id,
                instance: self.instance,
                poll_interval: self.poll_interval,
            },
            Writer {
                pool: self.pool.clone(),
                tenant,
                instance: self.instance,
            },
        ))
    }
}

/// The reading side of one tenant. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    tenant: Arc<str>,
    remote_id: Uuid,
    /// This relay process (it claims webhook notifications under this id).
    instance: Uuid,
    poll_interval: std::time::Duration,
}

/// The writing side of one tenant on this relay (other relays have their own).
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    tenant: Arc<str>,
    /// This relay process (its reports on webhook claims name it).
    instance: Uuid,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

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

    /// The tenant's `remoteId` as stored now (`None`: deleted).
    pub async fn stored_identity(&self) -> Result<Option<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT remote_id FROM tenants WHERE id = $1")
                .bind(&*self.tenant)
                .fetch_optional(&self.pool)
                .await?,
        )
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
struct Columns {
    log_ids: Vec<i64>,
    seqs: Vec<i64>,
    entry_ids: Vec<Vec<u8>>,
    ivs: Vec<Vec<u8>>,
    ciphertexts: Vec<Vec<u8>>,
    /// Ciphertext bytes held.
    bytes: usize,
}

impl Columns {
    fn push(&mut self, log_id: i64, seq: i64, entry_id: Vec<u8>, iv: Vec<u8>, ciphertext: Vec<u8>) {
        self.bytes += ciphertext.len();
        self.log_ids.push(log_id);
        self.seqs.push(seq);
        self.entry_ids.push(entry_id);
        self.ivs.push(iv);
        self.ciphertexts.push(ciphertext);
    }

    fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Inserts every entry held, committed at `at_ms`, one statement per ~16 MiB of
    /// ciphertext (a group may hold far more than one message to the server should); then
    /// holds none.
    async fn insert(
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
                    .filter(|e| !log.known.contains_key(&e.entry_id))
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
                if let Some(seq) = log.known.get(&e.entry_id) {
                    sequences.push(*seq);
                    continue;
                }
                let seq = log.next;
                log.next += 1;
                log.known.insert(e.entry_id.clone(), seq);
                log.bytes += e.encrypted_entry.len() as u64;
                columns.push(
                    log.id,
                    to_i64(seq),
                    e.entry_id.to_vec(),
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

    pub async fn settings(&mut self) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT settings FROM tenants WHERE id = $1")
                .bind(&*self.tenant)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Replaces the stored settings, and tells every relay (this one included) to reload them.
    pub async fn set_settings(&mut self, json: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE tenants SET settings = $2 WHERE id = $1")
            .bind(&*self.tenant)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SETTINGS_CHANNEL)
            .bind(&*self.tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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

/// Takes `public_key`'s row lock, creating the log if no relay has yet: its id, its next
/// sequence, and whether this transaction created it.
async fn lock_log(
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
async fn tenant_totals(
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
