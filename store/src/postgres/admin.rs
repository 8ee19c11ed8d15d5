//! The admin API's work on the shared database: tenants listed and described, a log or a
//! tenant deleted, a tenant exported and imported in the same NDJSON format as the SQLite
//! store (so an export from a SQLite relay moves a tenant onto Postgres).
//!
//! Whatever changes a tenant under the relays serving it rings [`EVICT_CHANNEL`] in its own
//! transaction: every relay with the tenant open closes its sessions and stops its actor when
//! (and only if) the change commits, and clients reconnect to what is now stored.

use std::collections::HashMap;

use bytes::Bytes;
use sqlx::{Postgres, Row, Transaction};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;

use uuid::Uuid;

use super::commit::{Columns, INSERT_CHUNK_BYTES};
use super::{to_i64, to_u64, Backend};
use crate::config::TenantId;
use crate::error::StoreError;
use crate::export::{
    write_line, ExportEnd, ExportEntry, ExportError, ExportHeader, ExportStream, ImportCheck,
    ImportError, Imported, EXPORT_FORMAT, EXPORT_VERSION,
};
use crate::model::{LogState, TenantDetail, TenantSummary};

/// The channel an administrative change to a tenant rings (payload: the tenant id).
pub const EVICT_CHANNEL: &str = "wharf_evict";

/// Export output is handed over in chunks of about this size.
const EXPORT_CHUNK: usize = 256 * 1024;

/// Every tenant's summary, or one tenant's (`$1` NULL: all). Entries are counted from the
/// logs' rows (`next_seq - first_seq`: sequences are dense), never by scanning entries.
const SUMMARY: &str =
    "SELECT t.id, COUNT(l.id), COALESCE(SUM(l.next_seq - l.first_seq), 0)::int8, \
     (COALESCE(SUM(l.bytes), 0) + COALESCE((SELECT SUM(length(s.data)) FROM snapshots s \
     JOIN logs sl ON sl.id = s.log_id WHERE sl.tenant = t.id), 0))::int8, \
     MAX((SELECT e.at FROM entries e WHERE e.log_id = l.id AND e.seq = l.next_seq - 1)) \
     FROM tenants t LEFT JOIN logs l ON l.tenant = t.id \
     WHERE $1::text IS NULL OR t.id = $1 GROUP BY t.id ORDER BY t.id";

/// A tenant's summary: its size is the ciphertext and snapshot bytes it holds, its last write
/// when its newest entry was committed.
fn summary_row(r: &sqlx::postgres::PgRow) -> Result<TenantSummary, sqlx::Error> {
    Ok(TenantSummary {
        tenant: r.try_get(0)?,
        logs: usize::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
        entries: to_u64(r.try_get(2)?),
        size_bytes: to_u64(r.try_get(3)?),
        last_write_unix_ms: r.try_get::<Option<i64>, _>(4)?.map(to_u64),
    })
}

impl Backend {
    /// How many tenants the database holds.
    pub async fn tenant_count(&self) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantSummary>, StoreError> {
        let rows = sqlx::query(SUMMARY)
            .bind(None::<&str>)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(summary_row).collect::<Result<_, _>>()?)
    }

    /// `tenant`'s summary, `remoteId` and logs (by public key), from one snapshot of the
    /// database; `None` if no relay has opened it.
    pub async fn describe(&self, tenant: &TenantId) -> Result<Option<TenantDetail>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let described = describe_in(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(described)
    }

    /// Deletes `tenant` (its logs, entries, snapshots, settings and `remoteId`); whether it
    /// existed. Relays serving it let its clients go.
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.delete_ringing(tenant, None).await {
                // A commit creating a log while holding others can still cross this
                // deletion's locks; Postgres breaks the cycle, and the deletion goes again.
                Err(StoreError::Contended(_)) if attempt < 3 => {}
                done => return done,
            }
        }
    }

    /// Deletes log `public_key` of `tenant` with its entries and snapshots; whether it
    /// existed. Relays serving the tenant let its clients go.
    pub async fn delete_log(
        &self,
        tenant: &TenantId,
        public_key: &str,
    ) -> Result<bool, StoreError> {
        self.delete_ringing(tenant, Some(public_key)).await
    }

    /// Deletes one log of `tenant`, or (`None`) the whole tenant, ringing `wharf_evict` in the
    /// same transaction; whether there was anything to delete.
    async fn delete_ringing(
        &self,
        tenant: &TenantId,
        public_key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.admin_transaction().await?;
        let sql = match public_key {
            None => {
                lock_whole_tenant(&mut tx, tenant).await?;
                "WITH gone AS (DELETE FROM tenants WHERE id = $1 RETURNING id) \
                 SELECT pg_notify($2, id) FROM gone"
            }
            Some(_) => {
                "WITH gone AS (DELETE FROM logs WHERE tenant = $1 AND public_key = $3 \
                 RETURNING tenant) SELECT pg_notify($2, tenant) FROM gone"
            }
        };
        let mut query = sqlx::query(sql).bind(tenant.as_str()).bind(EVICT_CHANNEL);
        if let Some(public_key) = public_key {
            query = query.bind(public_key);
        }
        let gone = query.fetch_optional(&mut *tx).await?.is_some();
        tx.commit().await?;
        Ok(gone)
    }

    /// Writes `tenant` as NDJSON to `out` in chunks, from one snapshot of the database while
    /// relays keep serving; how many entries it wrote. `Ok(None)`: no such tenant (nothing was
    /// written).
    pub async fn export(
        &self,
        tenant: &TenantId,
        out: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<Option<u64>, ExportError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // It waits on the client between statements: neither limit of a commit applies.
        for setting in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "SET LOCAL statement_timeout = 0",
            "SET LOCAL idle_in_transaction_session_timeout = 0",
        ] {
            sqlx::query(setting)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        let Some(TenantDetail {
            remote_id, logs, ..
        }) = describe_in(&mut tx, tenant).await?
        else {
            return Ok(None);
        };
        let mut buf = Vec::with_capacity(EXPORT_CHUNK);
        write_line(
            &mut buf,
            &ExportHeader {
                format: EXPORT_FORMAT.to_owned(),
                version: EXPORT_VERSION,
                tenant: tenant.as_str().to_owned(),
                remote_id,
                logs: logs.clone(),
            },
        )?;
        let mut n = 0u64;
        for log in &logs {
            let mut rows = sqlx::query(
                "SELECT e.seq, e.entry_id, e.iv, e.ciphertext FROM entries e \
                 WHERE e.log_id = (SELECT id FROM logs WHERE tenant = $1 AND public_key = $2) \
                 ORDER BY e.seq",
            )
            .bind(tenant.as_str())
            .bind(&log.public_key)
            .fetch(&mut *tx);
            while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
                .await
                .map_err(StoreError::from)?
            {
                let blob = |i: usize| -> Result<String, StoreError> {
                    use base64::Engine;
                    Ok(base64::engine::general_purpose::STANDARD
                        .encode(row.try_get::<&[u8], _>(i)?))
                };
                write_line(
                    &mut buf,
                    &ExportEntry {
                        log: log.public_key.clone(),
                        seq: to_u64(row.try_get(0).map_err(StoreError::from)?),
                        entry_id: blob(1)?,
                        iv: blob(2)?,
                        ciphertext: blob(3)?,
                    },
                )?;
                n += 1;
                if buf.len() >= EXPORT_CHUNK {
                    send(out, &mut buf).await?;
                }
            }
        }
        // The snapshot is no longer needed for the last chunk.
        tx.commit().await.map_err(StoreError::from)?;
        write_line(
            &mut buf,
            &ExportEnd {
                end: true,
                entries: n,
            },
        )?;
        send(out, &mut buf).await?;
        Ok(Some(n))
    }

    /// [`Backend::export`] on a task of its own, into a channel: `NotFound` before anything is
    /// sent when no relay has opened `tenant`.
    pub async fn export_stream(&self, tenant: &TenantId) -> Result<ExportStream, StoreError> {
        if self.describe(tenant).await?.is_none() {
            return Err(StoreError::NotFound(format!(
                "no tenant {:?}",
                tenant.as_str()
            )));
        }
        let (tx, rx) = mpsc::channel(8);
        let (backend, tenant) = (self.clone(), tenant.clone());
        tokio::spawn(async move {
            let why = match backend.export(&tenant, &tx).await {
                Ok(Some(_)) => return,
                Ok(None) => "the tenant was deleted".to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(tenant = tenant.as_str(), error = %why, "export failed");
            let _ = tx.send(Err(std::io::Error::other(why))).await;
        });
        Ok(rx)
    }

    /// Builds `tenant` from the NDJSON export in `input`, keeping `remoteId`, entry ids and
    /// sequences, in one transaction: checked as a whole (the same checks as the SQLite
    /// store's import) before anything is visible, so a failed import changes nothing. An
    /// existing tenant is refused unless `replace`, which deletes it in the same transaction.
    pub async fn import(
        &self,
        tenant: &TenantId,
        input: &mut (dyn AsyncBufRead + Send + Unpin),
        replace: bool,
        now_ms: i64,
    ) -> Result<Imported, ImportError> {
        let mut lines = input.lines();
        let first = lines.next_line().await?;
        let mut check = ImportCheck::start(first.as_deref())?;
        let header = check.header().clone();
        let mut tx = self.admin_transaction().await?;
        if replace {
            lock_whole_tenant(&mut tx, tenant).await?;
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        // Another relay opening the tenant meanwhile waits for this transaction, then finds
        // the imported tenant.
        let created = sqlx::query(
            "INSERT INTO tenants (id, remote_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING \
             RETURNING id",
        )
        .bind(tenant.as_str())
        .bind(header.remote_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if created.is_none() {
            return Err(ImportError::Exists(format!(
                "tenant {:?} already has data; add ?replace=true to replace it",
                tenant.as_str()
            )));
        }
        let (keys, nexts, firsts): (Vec<&str>, Vec<i64>, Vec<i64>) = header
            .logs
            .iter()
            .map(|l| {
                (
                    l.public_key.as_str(),
                    to_i64(l.first_sequence.saturating_add(l.entries)),
                    to_i64(l.first_sequence),
                )
            })
            .fold(Default::default(), |(mut k, mut n, mut f), (a, b, c)| {
                k.push(a);
                n.push(b);
                f.push(c);
                (k, n, f)
            });
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO logs (tenant, public_key, next_seq, first_seq) \
             SELECT $1, k, n, f FROM UNNEST($2::text[], $3::int8[], $4::int8[]) AS t(k, n, f) \
             RETURNING id, public_key",
        )
        .bind(tenant.as_str())
        .bind(&keys)
        .bind(&nexts)
        .bind(&firsts)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        // Each log's id and the ciphertext bytes it receives.
        let mut logs: HashMap<String, (i64, i64)> =
            rows.into_iter().map(|(id, pk)| (pk, (id, 0))).collect();
        let mut batch = Columns::default();
        while let Some(text) = lines.next_line().await? {
            let Some(e) = check.line(&text)? else {
                continue;
            };
            let (id, bytes) = logs
                .get_mut(&e.log)
                .ok_or_else(|| check.invalid(format!("log {:?} is not in the header", e.log)))?;
            *bytes += to_i64(e.ciphertext.len() as u64);
            batch.push(*id, e.seq, e.entry_id, e.iv, e.ciphertext);
            if batch.bytes >= INSERT_CHUNK_BYTES || batch.len() >= 10_000 {
                insert_imported(&mut batch, &mut tx, now_ms, &check).await?;
            }
        }
        insert_imported(&mut batch, &mut tx, now_ms, &check).await?;
        let imported = check.finish()?;
        let (ids, bytes): (Vec<i64>, Vec<i64>) = logs.into_values().unzip();
        sqlx::query(
            "WITH sized AS (UPDATE logs SET bytes = t.b FROM UNNEST($1::int8[], $2::int8[]) \
             AS t(id, b) WHERE logs.id = t.id) SELECT pg_notify($3, $4)",
        )
        .bind(&ids)
        .bind(&bytes)
        .bind(EVICT_CHANNEL)
        .bind(tenant.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(imported)
    }

    /// A transaction for an administrative change: it may run longer than a commit's
    /// `statement_timeout` (deleting or importing a large tenant) and wait on its client
    /// between statements (an import's upload), but never waits for a lock longer than
    /// `lock_timeout`.
    async fn admin_transaction(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        for setting in [
            "SET LOCAL statement_timeout = 0",
            "SET LOCAL idle_in_transaction_session_timeout = 0",
        ] {
            sqlx::query(setting).execute(&mut *tx).await?;
        }
        Ok(tx)
    }
}

/// Locks `tenant`'s row, then its logs' rows in the order commits lock them (by public key,
/// bytewise), before a statement deletes them all: a cascade alone would lock the logs in
/// whatever order it finds them and could deadlock with commits.
async fn lock_whole_tenant(
    tx: &mut Transaction<'static, Postgres>,
    tenant: &TenantId,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(tenant.as_str())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "SELECT 1 FROM logs WHERE tenant = $1 ORDER BY public_key COLLATE \"C\" FOR UPDATE",
    )
    .bind(tenant.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn describe_in(
    tx: &mut Transaction<'static, Postgres>,
    tenant: &TenantId,
) -> Result<Option<TenantDetail>, StoreError> {
    let summary = sqlx::query(SUMMARY)
        .bind(tenant.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    let Some(summary) = summary else {
        return Ok(None);
    };
    let summary = summary_row(&summary)?;
    let remote_id: Uuid = sqlx::query_scalar("SELECT remote_id FROM tenants WHERE id = $1")
        .bind(tenant.as_str())
        .fetch_one(&mut **tx)
        .await?;
    let logs: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT public_key, next_seq, first_seq FROM logs WHERE tenant = $1 ORDER BY public_key COLLATE \"C\"",
    )
    .bind(tenant.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let logs = logs
        .into_iter()
        .map(|(public_key, next, first)| LogState {
            public_key,
            entries: to_u64(next - first),
            next_sequence: to_u64(next),
            first_sequence: to_u64(first),
        })
        .collect();
    Ok(Some(TenantDetail {
        summary,
        remote_id,
        logs,
    }))
}

async fn send(
    out: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: &mut Vec<u8>,
) -> Result<(), ExportError> {
    let chunk = std::mem::replace(buf, Vec::with_capacity(EXPORT_CHUNK));
    out.send(Ok(Bytes::from(chunk))).await.map_err(|_| {
        ExportError::Io(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "client went away",
        ))
    })
}

/// Inserts an import's pending entries; a repeated entry id is the export's fault.
async fn insert_imported(
    batch: &mut Columns,
    tx: &mut Transaction<'static, Postgres>,
    now_ms: i64,
    check: &ImportCheck,
) -> Result<(), ImportError> {
    match batch.insert(tx, now_ms).await {
        Ok(()) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(check.invalid(
            "an entry id is repeated within a log (in this line or the ones before it)".into(),
        )),
        Err(e) => Err(StoreError::from(e).into()),
    }
}
