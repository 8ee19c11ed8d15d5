//! [`Backend`]: where tenants are stored, as one value the relay holds. It opens a tenant's
//! [`Store`] and [`Writer`], and answers every administrative question (list, describe,
//! delete, export, import, revocations, tenants with webhooks pending) for whichever backend
//! it is: nothing outside this crate asks which.

use std::sync::Arc;

use tokio::io::AsyncBufRead;
use tokio_util::sync::CancellationToken;

use crate::config::{StoreConfig, TenantId};
use crate::error::StoreError;
use crate::export::{ExportStream, ImportError, Imported};
use crate::model::{TenantDetail, TenantSummary};
use crate::postgres::feed::Ring;
use crate::revocations::{RevocationError, RevocationStore};
use crate::tenant::{Store, Writer};
use crate::{postgres, sqlite};

/// Where tenants are stored. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Backend {
    config: Arc<StoreConfig>,
    engine: Engine,
}

/// A borrowed view of the engine, the Postgres one known to be usable.
enum Which<'a> {
    Sqlite(&'a sqlite::Backend),
    Postgres(&'a postgres::Backend),
}

#[derive(Debug, Clone)]
enum Engine {
    /// `data/tenants/{tenant}.sqlite`, worked on by the storage threads.
    Sqlite(sqlite::Backend),
    /// One shared PostgreSQL database (or why its URL is unusable: [`Backend::prepare`]
    /// reports it, and the relay does not serve).
    Postgres(Arc<Result<postgres::Backend, String>>),
}

impl Backend {
    /// The backend `config.url` names. A Postgres pool connects on first use
    /// ([`Backend::prepare`] checks it).
    pub fn new(config: &StoreConfig) -> Self {
        let config = Arc::new(config.clone());
        let engine = match &config.url {
            None => Engine::Sqlite(sqlite::Backend::new(config.clone())),
            Some(url) => Engine::Postgres(Arc::new(
                postgres::Backend::connect_lazy(url, &config.postgres).map_err(|e| e.to_string()),
            )),
        };
        Self { config, engine }
    }

    /// The backend at hand (or why the Postgres one is unusable).
    fn which(&self) -> Result<Which<'_>, StoreError> {
        match &self.engine {
            Engine::Sqlite(sqlite) => Ok(Which::Sqlite(sqlite)),
            Engine::Postgres(pg) => match &**pg {
                Ok(pg) => Ok(Which::Postgres(pg)),
                Err(e) => Err(StoreError::Config(e.clone())),
            },
        }
    }

    /// Where tenants are, for the relay's log: `sqlite` or the database's URL (password
    /// redacted).
    pub fn location(&self) -> String {
        match &self.config.url {
            Some(url) => crate::config::redact_url(url),
            None => "sqlite".to_owned(),
        }
    }

    /// Readies the backend before the relay serves: the Postgres schema is migrated (which
    /// also proves the database is reachable).
    pub async fn prepare(&self) -> Result<(), StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.migrate().await,
            Which::Sqlite(_) => Ok(()),
        }
    }

    /// Whether the store answers (the Postgres database, within a few seconds).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.ping().await,
            Which::Sqlite(_) => Ok(()),
        }
    }

    /// Follows what other relays sharing this store change, until `stop`: `ring` hears of
    /// each commit, settings change and administrative change (see [`Ring`]). Nothing shares
    /// a SQLite store: it returns at once.
    pub async fn follow_others(
        &self,
        stop: CancellationToken,
        ring: impl Fn(Ring) + Send + 'static,
    ) -> Result<(), StoreError> {
        if let Which::Postgres(pg) = self.which()? {
            tokio::spawn(postgres::feed::listen(pg.clone(), stop, ring));
        }
        Ok(())
    }

    /// What a relay does last: gives back the webhook notifications it claimed and never
    /// reported on, so other relays deliver them at once; how many.
    pub async fn release(&self) -> Result<u64, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.release_claims().await,
            Which::Sqlite(_) => Ok(0),
        }
    }

    /// Opens (creating it if needed) `tenant`'s storage.
    pub async fn open(&self, tenant: &TenantId) -> Result<(Store, Writer), StoreError> {
        match self.which()? {
            Which::Sqlite(sqlite) => {
                let (store, writer) = sqlite.open(tenant).await?;
                Ok((Store::Sqlite(store.clone()), Writer::sqlite(store, writer)))
            }
            Which::Postgres(pg) => {
                let (store, writer) = pg.open(tenant).await?;
                Ok((Store::Postgres(store), Writer::postgres(writer)))
            }
        }
    }

    /// The revocation list, where this store keeps it.
    pub async fn revocations(&self) -> Result<RevocationStore, RevocationError> {
        let shared = match self.which().map_err(RevocationError::Postgres)? {
            Which::Postgres(pg) => Some(pg),
            Which::Sqlite(_) => None,
        };
        RevocationStore::open(&self.config, shared).await
    }

    /// Tenants with webhook notifications waiting to be delivered (left by a relay that
    /// stopped, or restarted): opening them delivers the notifications without waiting for a
    /// client.
    pub async fn pending_webhooks(&self) -> Result<Vec<TenantId>, StoreError> {
        let names = match self.which()? {
            Which::Postgres(pg) => pg.tenants_with_outbox().await?,
            Which::Sqlite(sqlite) => sqlite.pending_webhooks().await?,
        };
        Ok(names.iter().filter_map(|n| TenantId::parse(n)).collect())
    }

    /// How many tenants the store holds (open or not).
    pub async fn tenant_count(&self) -> Result<usize, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.tenant_count().await,
            Which::Sqlite(sqlite) => Ok(sqlite.tenant_count().await),
        }
    }

    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantSummary>, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.tenants().await,
            Which::Sqlite(sqlite) => sqlite.tenants().await,
        }
    }

    /// `tenant` described in full; `None` if it does not exist.
    pub async fn describe(&self, tenant: &TenantId) -> Result<Option<TenantDetail>, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.describe(tenant).await,
            Which::Sqlite(sqlite) => sqlite.describe(tenant).await,
        }
    }

    /// Whether the admin API may open `tenant` to read or change its settings or apply its
    /// retention: on SQLite, a tenant that exists (opening would create it); on a shared
    /// database, any (an administrator may store settings ahead of the first connection).
    pub async fn may_configure(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        match self.which()? {
            Which::Sqlite(sqlite) => Ok(sqlite.exists(tenant)),
            Which::Postgres(_) => Ok(true),
        }
    }

    /// Whether `tenant` holds data (an import without `replace` is refused then).
    pub async fn has_data(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        match self.which()? {
            Which::Sqlite(sqlite) => Ok(sqlite.exists(tenant)),
            Which::Postgres(pg) => Ok(pg.describe(tenant).await?.is_some()),
        }
    }

    /// What `tenant` occupies in bytes: its database file (SQLite), or the ciphertext and
    /// snapshots it holds (Postgres, which gives space back to itself through autovacuum).
    pub async fn footprint(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg
                .describe(tenant)
                .await?
                .map(|d| d.summary.size_bytes)
                .ok_or_else(|| StoreError::NotFound(format!("no tenant {:?}", tenant.as_str()))),
            Which::Sqlite(sqlite) => Ok(sqlite.file_size(tenant)),
        }
    }

    /// Deletes `tenant` and everything it holds; whether it existed. The caller holds the
    /// tenant (no actor runs it here); relays sharing the store let its clients go.
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.delete_tenant(tenant).await,
            Which::Sqlite(sqlite) => sqlite.delete_tenant(tenant).await,
        }
    }

    /// Deletes one log of `tenant` with its entries, snapshots and notifications; whether it
    /// existed. The caller holds the tenant.
    pub async fn delete_log(
        &self,
        tenant: &TenantId,
        public_key: &str,
    ) -> Result<bool, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.delete_log(tenant, public_key).await,
            Which::Sqlite(sqlite) => sqlite.delete_log(tenant, public_key).await,
        }
    }

    /// Exports `tenant` (NDJSON, [`crate::export`]) from one consistent snapshot while relays
    /// keep serving. [`StoreError::NotFound`] before anything is sent when there is no such
    /// tenant.
    pub async fn export(&self, tenant: &TenantId) -> Result<ExportStream, StoreError> {
        match self.which()? {
            Which::Postgres(pg) => pg.export_stream(tenant).await,
            Which::Sqlite(sqlite) => sqlite.export(tenant),
        }
    }

    /// Builds `tenant` from an export, keeping its `remoteId`, entry ids and sequences; checked
    /// whole before anything is visible, so a failed import changes nothing. An existing tenant
    /// is refused unless `replace`. Entries take `now_ms` as their commit time. The caller
    /// holds the tenant. On failure, what is left of `input` is not read.
    pub async fn import(
        &self,
        tenant: &TenantId,
        input: &mut (dyn AsyncBufRead + Send + Unpin),
        replace: bool,
        now_ms: i64,
    ) -> Result<Imported, ImportError> {
        match self.which()? {
            Which::Postgres(pg) => pg.import(tenant, input, replace, now_ms).await,
            Which::Sqlite(sqlite) => sqlite.import(tenant, input, replace).await,
        }
    }
}
