//! The revocation list's storage: revoked `jti`s and, per tenant, a "not before" time that
//! revokes every token issued earlier. Persisted in `{data}/auth/revocations.sqlite`, or, with
//! the Postgres store, in the shared database, so a revocation made through any relay reaches
//! every relay. [`RevocationStore::data_version`] changes with every committed change (SQLite's
//! `data_version`, the Postgres `revocations_version` row): the relay polls it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use sqlx::postgres::PgPool;
use wharf_sqlite::{Db, DbError, Options, Synchronous};

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::postgres::Backend as PgBackend;

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Sqlite(#[from] DbError),
    #[error(transparent)]
    Postgres(#[from] StoreError),
}

impl From<sqlx::Error> for RevocationError {
    fn from(e: sqlx::Error) -> Self {
        RevocationError::Postgres(e.into())
    }
}

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

/// The revocation list's storage.
#[derive(Debug, Clone)]
pub struct RevocationStore(Backing);

#[derive(Debug, Clone)]
enum Backing {
    Sqlite(Db),
    /// `owned`: this store made the pool (rather than sharing the relay's), and closes it.
    Postgres {
        pool: PgPool,
        owned: bool,
    },
}

/// `(jti, revoked_at)` or `(tenant, not_before)` rows.
type Rows = Vec<(String, i64)>;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl RevocationStore {
    /// The list `config` names: in the Postgres database with the Postgres store (`shared`:
    /// the relay's own connection pool, if it has one; otherwise one is made, and the schema
    /// brought up to date), else in the data directory.
    pub async fn open(
        config: &StoreConfig,
        shared: Option<&PgBackend>,
    ) -> Result<Self, RevocationError> {
        let store = match (&config.url, shared) {
            (Some(_), Some(pg)) => Self(Backing::Postgres {
                pool: pg.pool().clone(),
                owned: false,
            }),
            (Some(url), None) => {
                let pg = PgBackend::connect_lazy(url, &config.postgres)?;
                pg.migrate().await?;
                Self(Backing::Postgres {
                    pool: pg.pool().clone(),
                    owned: true,
                })
            }
            (None, _) => return Self::open_file(&config.revocations_path()).await,
        };
        // A list kept in the data directory (before the relay moved to Postgres, or written
        // by `token revoke` without --store) is merged in: nothing revoked is forgotten.
        let file = config.revocations_path();
        if file.exists() {
            let old = Self::open_file(&file).await?;
            let rows = old.rows().await;
            old.close().await;
            let (tokens, tenants) = rows?;
            let merged = tokens.len() + tenants.len();
            for (jti, at) in tokens {
                store.revoke(&jti, to_u64(at)).await?;
            }
            for (tenant, not_before) in tenants {
                store.revoke_tenant(&tenant, to_u64(not_before)).await?;
            }
            if merged > 0 {
                tracing::info!(
                    merged,
                    file = %file.display(),
                    "revocations from the data directory merged into the database"
                );
            }
        }
        Ok(store)
    }

    /// The list in a SQLite file at `path`.
    pub async fn open_file(path: &Path) -> Result<Self, RevocationError> {
        let options = Options {
            synchronous: Synchronous::Full,
            readers: 1,
            idle_timeout: Some(Duration::from_secs(30)),
            ..Options::default()
        };
        Ok(Self(Backing::Sqlite(
            Db::open(path, &options, MIGRATIONS).await?,
        )))
    }

    pub async fn load(&self) -> Result<Revocations, RevocationError> {
        let (tokens, tenants) = self.rows().await?;
        Ok(Revocations {
            jtis: tokens.into_iter().map(|(jti, _)| jti).collect(),
            not_before: tenants
                .into_iter()
                .map(|(tenant, nb)| (tenant, to_u64(nb)))
                .collect(),
        })
    }

    /// Revoked tokens (`jti`, when), and tenants' "not before" times, in order.
    pub async fn rows(&self) -> Result<(Rows, Rows), RevocationError> {
        const TOKENS: &str = "SELECT jti, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti";
        const TENANTS: &str = "SELECT tenant, not_before FROM tenant_not_before ORDER BY tenant";
        Ok(match &self.0 {
            Backing::Sqlite(db) => (
                sqlx::query_as(TOKENS)
                    .fetch_all(&db.writer)
                    .await
                    .map_err(DbError::from)?,
                sqlx::query_as(TENANTS)
                    .fetch_all(&db.writer)
                    .await
                    .map_err(DbError::from)?,
            ),
            Backing::Postgres { pool, .. } => (
                sqlx::query_as(TOKENS).fetch_all(pool).await?,
                sqlx::query_as(TENANTS).fetch_all(pool).await?,
            ),
        })
    }

    /// Revokes `jti`; false if it already was.
    pub async fn revoke(&self, jti: &str, now: u64) -> Result<bool, RevocationError> {
        Ok(match &self.0 {
            Backing::Sqlite(db) => {
                sqlx::query(
                    "INSERT INTO revoked_tokens (jti, revoked_at) VALUES (?, ?) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(jti)
                .bind(to_i64(now))
                .execute(&db.writer)
                .await
                .map_err(DbError::from)?
                .rows_affected()
                    == 1
            }
            Backing::Postgres { pool, .. } => {
                let added: i64 = sqlx::query_scalar(
                    "WITH added AS (INSERT INTO revoked_tokens (jti, revoked_at) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING RETURNING 1), \
                     moved AS (UPDATE revocations_version SET version = version + 1 \
                     WHERE EXISTS (SELECT 1 FROM added)) SELECT COUNT(*) FROM added",
                )
                .bind(jti)
                .bind(to_i64(now))
                .fetch_one(pool)
                .await?;
                added == 1
            }
        })
    }

    /// Revokes every token of `tenant` issued before `not_before` (it only moves forward).
    pub async fn revoke_tenant(
        &self,
        tenant: &str,
        not_before: u64,
    ) -> Result<(), RevocationError> {
        match &self.0 {
            Backing::Sqlite(db) => {
                sqlx::query(
                    "INSERT INTO tenant_not_before (tenant, not_before) VALUES (?1, ?2)
                     ON CONFLICT (tenant) DO UPDATE SET not_before = max(not_before, ?2)",
                )
                .bind(tenant)
                .bind(to_i64(not_before))
                .execute(&db.writer)
                .await
                .map_err(DbError::from)?;
            }
            Backing::Postgres { pool, .. } => {
                sqlx::query(
                    "WITH moved AS (UPDATE revocations_version SET version = version + 1) \
                     INSERT INTO tenant_not_before (tenant, not_before) VALUES ($1, $2) \
                     ON CONFLICT (tenant) DO UPDATE \
                     SET not_before = GREATEST(tenant_not_before.not_before, excluded.not_before)",
                )
                .bind(tenant)
                .bind(to_i64(not_before))
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<Revoked>, RevocationError> {
        let (tokens, tenants) = self.rows().await?;
        Ok(tokens
            .into_iter()
            .map(|(jti, at)| Revoked::Token {
                jti,
                revoked_at: to_u64(at),
            })
            .chain(tenants.into_iter().map(|(tenant, nb)| Revoked::Tenant {
                tenant,
                not_before: to_u64(nb),
            }))
            .collect())
    }

    /// Changes whenever a change to the list was committed (by any connection).
    pub async fn data_version(&self) -> Result<i64, RevocationError> {
        Ok(match &self.0 {
            Backing::Sqlite(db) => sqlx::query_scalar("PRAGMA data_version")
                .fetch_one(&db.writer)
                .await
                .map_err(DbError::from)?,
            Backing::Postgres { pool, .. } => {
                sqlx::query_scalar("SELECT version FROM revocations_version")
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// Closes the list's connections (a pool shared with the relay stays open).
    pub async fn close(&self) {
        match &self.0 {
            Backing::Sqlite(db) => db.close().await,
            Backing::Postgres { pool, owned: true } => pool.close().await,
            Backing::Postgres { owned: false, .. } => {}
        }
    }
}
