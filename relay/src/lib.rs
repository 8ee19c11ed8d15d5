//! The Wharf relay: a WebSocket relay for append-only, end-to-end-encrypted event logs that
//! speaks the Effect v3 `EventLogRemote` protocol.
//!
//! Module map:
//! - [`server`]: [`Relay`] and [`serve`], which take a bound listener and a shutdown future.
//! - `app`: the context every part shares (config, registry, limits, metrics, sessions,
//!   shutdown).
//! - `http`: the accept loop and router; WebSocket upgrades, health probes and the viewer,
//!   each in its own module, with one error type mapped to status codes.
//! - [`auth`]: admission: the upgrade request to a [`auth::Grant`] or a refusal, the
//!   per-message authorisation step, tokens ([`auth::token`]) and revocation
//!   ([`auth::revocation`]).
//! - [`metrics`]: what the relay measures, exported at `GET /metrics` (Prometheus).
//! - [`limits`]: connection limits (total, per tenant, per IP) and write/byte rates per
//!   connection and per tenant; a client over a rate is slowed, never closed.
//! - `session`: one WebSocket connection: decoding, writes, subscriptions, outbound queues.
//! - `registry`: tenant id → running actor, created race-free on first use.
//! - `tenant`: the actor that owns a tenant's database, assigns sequences and group-commits.
//! - `store`: the storage crate (`wharf-store`): each tenant's SQLite database, or one shared
//!   PostgreSQL database.
//! - `live`: the `Committed` event a tenant publishes after each durable commit, and the live
//!   tail of each log, one of its consumers.
//! - [`policy`]: per-tenant retention, quotas and webhooks, layered from the config file and
//!   the admin API.
//! - `webhook`: Standard Webhooks signing, the link-local guard, and delivery.
//! - [`config`]: every setting, from defaults, TOML, `WHARF_*` and flags.
//! - [`tls`]: rustls for `wss://` and `https://`, with certificate reload.
//!
//! The relay stores and forwards ciphertext; no key material ever reaches it.

mod app;
pub mod auth;
pub mod config;
mod http;
pub mod limits;
mod live;
pub mod metrics;
pub mod policy;
mod registry;
pub mod server;
mod session;
mod tenant;
pub mod tls;
mod v4;
mod webhook;

pub use config::{Config, Durability, TenantId};
pub use server::{serve, Relay, ServeError};
/// A `postgres://` URL with its password replaced, for output.
pub use wharf_store::config::redact_url as redact_store_url;
