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
//!
//! - this module: [`Backend`] (the pool, its session settings, migrations, opening a tenant),
//!   and one tenant's [`Store`] and [`Writer`];
//! - `read`: pages of a log, history, snapshots, other relays' heads;
//! - `commit`: the group commit and the doorbell;
//! - `snapshots`, `settings`, `retention`, `outbox`: one concern each, as in `sqlite`;
//! - [`admin`]: list, describe, delete, export and import, each ringing `wharf_evict`;
//! - [`feed`]: the LISTEN connection that carries other relays' changes.

pub mod admin;
mod commit;
pub mod feed;
mod outbox;
mod read;
mod retention;
mod settings;
mod snapshots;

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::config::{PostgresConfig, TenantId};
use crate::error::StoreError;

/// The schema, applied when a relay starts (`store/migrations/postgres/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The channel commits ring. Payload: a JSON array of `[tenant, publicKey, nextSequence]`
/// (never ciphertext), split to stay under Postgres's 8,000-byte limit.
pub const CHANNEL: &str = "wharf_commits";
/// The channel a settings change rings (payload: the tenant id), so that every relay with the
/// tenant open applies it.
pub const SETTINGS_CHANNEL: &str = "wharf_settings";

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
