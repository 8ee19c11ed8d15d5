//! The revocation list, persisted in `{data}/auth/revocations.sqlite`: revoked `jti`s and, per
//! tenant, a "not before" time that revokes every token issued earlier. `wharf-relay token
//! revoke` writes it (also while the relay runs); the relay re-reads it when SQLite's
//! `data_version` says another connection changed it, and open connections holding a revoked
//! token are closed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wharf_sqlite::{Db, DbError, Options, Synchronous};

const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE revoked_tokens (
        jti TEXT PRIMARY KEY NOT NULL,
        revoked_at INTEGER NOT NULL
    ) STRICT",
    "CREATE TABLE tenant_not_before (
        tenant TEXT PRIMARY KEY NOT NULL,
        not_before INTEGER NOT NULL
    ) STRICT",
]];

/// What is revoked, as of the last read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revocations {
    jtis: HashSet<String>,
    not_before: HashMap<String, u64>,
}

impl Revocations {
    /// Whether a token of `tenant` with this `jti`, issued at `iat`, is revoked.
    pub fn revokes(&self, tenant: &str, jti: &str, iat: u64) -> bool {
        self.jtis.contains(jti) || self.not_before.get(tenant).is_some_and(|nb| iat < *nb)
    }
}

/// One entry of `wharf-relay token list-revoked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Token { jti: String, revoked_at: u64 },
    Tenant { tenant: String, not_before: u64 },
}

/// The revocation database.
#[derive(Debug, Clone)]
pub struct RevocationStore {
    db: Db,
}

impl RevocationStore {
    pub async fn open(path: &Path) -> Result<Self, DbError> {
        let options = Options {
            synchronous: Synchronous::Full,
            readers: 1,
            idle_timeout: Some(Duration::from_secs(30)),
            ..Options::default()
        };
        Ok(Self {
            db: Db::open(path, &options, MIGRATIONS).await?,
        })
    }

    pub async fn load(&self) -> Result<Revocations, DbError> {
        let mut out = Revocations::default();
        for row in sqlx::query("SELECT jti FROM revoked_tokens")
            .fetch_all(&self.db.writer)
            .await?
        {
            out.jtis.insert(row.try_get(0)?);
        }
        for row in sqlx::query("SELECT tenant, not_before FROM tenant_not_before")
            .fetch_all(&self.db.writer)
            .await?
        {
            let nb: i64 = row.try_get(1)?;
            out.not_before
                .insert(row.try_get(0)?, u64::try_from(nb).unwrap_or(0));
        }
        Ok(out)
    }

    /// Revokes `jti`; false if it already was.
    pub async fn revoke(&self, jti: &str, now: u64) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO revoked_tokens (jti, revoked_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(jti)
        .bind(i64::try_from(now).unwrap_or(i64::MAX))
        .execute(&self.db.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every token of `tenant` issued before `not_before` (it only moves forward).
    pub async fn revoke_tenant(&self, tenant: &str, not_before: u64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO tenant_not_before (tenant, not_before) VALUES (?1, ?2)
             ON CONFLICT (tenant) DO UPDATE SET not_before = max(not_before, ?2)",
        )
        .bind(tenant)
        .bind(i64::try_from(not_before).unwrap_or(i64::MAX))
        .execute(&self.db.writer)
        .await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Revoked>, DbError> {
        let mut out = Vec::new();
        for row in
            sqlx::query("SELECT jti, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti")
                .fetch_all(&self.db.writer)
                .await?
        {
            let at: i64 = row.try_get(1)?;
            out.push(Revoked::Token {
                jti: row.try_get(0)?,
                revoked_at: u64::try_from(at).unwrap_or(0),
            });
        }
        for row in sqlx::query("SELECT tenant, not_before FROM tenant_not_before ORDER BY tenant")
            .fetch_all(&self.db.writer)
            .await?
        {
            let nb: i64 = row.try_get(1)?;
            out.push(Revoked::Tenant {
                tenant: row.try_get(0)?,
                not_before: u64::try_from(nb).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Changes whenever another connection committed to the database.
    async fn data_version(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&self.db.writer)
            .await?)
    }

    pub async fn close(&self) {
        self.db.close().await;
    }

    /// Loads the list and re-reads it every `poll` when it changed, until `stop`; the receiver
    /// always holds the latest list.
    pub async fn watch(
        self,
        poll: Duration,
        stop: CancellationToken,
    ) -> Result<watch::Receiver<Arc<Revocations>>, DbError> {
        let mut version = self.data_version().await?;
        let (tx, rx) = watch::channel(Arc::new(self.load().await?));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let reread = async {
                    let now = self.data_version().await?;
                    if now == version {
                        return Ok::<_, DbError>(None);
                    }
                    version = now;
                    self.load().await.map(Some)
                };
                match reread.await {
                    Ok(Some(list)) => {
                        tx.send_if_modified(|old| {
                            let changed = **old != list;
                            if changed {
                                tracing::info!("revocation list changed");
                                *old = Arc::new(list);
                            }
                            changed
                        });
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot re-read the revocation list"),
                }
            }
            self.close().await;
        });
        Ok(rx)
    }
}
