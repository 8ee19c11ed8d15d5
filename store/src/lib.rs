//! Wharf's storage: each tenant's SQLite database, or one PostgreSQL database shared by many
//! relays; the only crate that knows which. The relay cannot name rusqlite or sqlx: this
//! crate's types are all it sees.
//!
//! - [`backend`]: [`Backend`], where tenants are stored: it opens a tenant, and answers every
//!   administrative question (list, describe, delete, export, import, revocations, tenants
//!   with webhooks pending) for both backends.
//! - [`tenant`]: one tenant's [`Store`] (the reading side sessions and the webhook sender
//!   share) and [`Writer`] (the writing side only the tenant's actor holds), each a closed
//!   enum over the backends.
//! - [`model`]: the types the boundary speaks in (writes and their outcomes, retention,
//!   snapshots, webhook outbox rows, tenant summaries).
//! - [`error`]: [`StoreError`], what went wrong by kind, whichever library said it.
//! - [`config`]: [`StoreConfig`], what the storage needs to know (built by the relay), and
//!   [`TenantId`].
//! - [`export`]: the export format both stores read and write, and the checks of an import.
//! - [`sqlite`]: one SQLite file per tenant (the default), synchronous rusqlite calls on the
//!   storage threads ([`StorePool`]).
//! - [`postgres`]: every tenant in one PostgreSQL database that any number of relays share
//!   (scale-out), through sqlx; [`postgres::feed`] carries other relays' changes.
//! - [`revocations`]: the revocation list's storage.
//! - [`backup`]: online snapshots of a SQLite data directory, and restores.
//!
//! Architecture invariant: nothing here imports the relay (the dependency goes one way), and
//! no module imports one that imports it back.

pub mod backend;
pub mod backup;
pub mod config;
pub mod error;
pub mod export;
pub mod model;
pub mod postgres;
pub mod revocations;
pub mod sqlite;
pub mod tenant;

pub use backend::Backend;
pub use config::{Durability, PostgresConfig, StoreConfig, TenantId};
pub use error::StoreError;
pub use export::{ExportError, ExportStream, ImportError, Imported};
pub use model::{
    CommitRules, LogState, OutboxRow, Outcome, RetainReport, RetentionLimits, SnapshotRefusal,
    StoredSnapshot, TenantDetail, TenantSummary, Totals, WriteReq,
};
pub use postgres::feed::Ring;
pub use sqlite::pool::{PoolError, StorePool};
pub use tenant::{Store, Writer};
/// Durable names (a directory's fsync after every name change), for the relay's own files.
pub use wharf_durable as durable;
