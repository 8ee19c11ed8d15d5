//! The Wharf relay: a WebSocket relay for append-only, end-to-end-encrypted event logs that
//! speaks the Effect v3 `EventLogRemote` protocol.
//!
//! Module map:
//! - [`server`]: routes (`/t/{tenant}`, `/healthz`) and [`serve`], which takes a bound
//!   listener and a shutdown future.
//! - [`auth`]: admission: the upgrade request to a [`auth::Grant`] or a refusal, the
//!   per-message authorisation step, tokens ([`auth::token`]) and revocation
//!   ([`auth::revocation`]).
//! - [`counters`]: refusals, throttling, iv reuse and TLS reloads, counted.
//! - [`limits`]: connection limits (total, per tenant, per IP) and write/byte rates per
//!   connection and per tenant; a client over a rate is slowed, never closed.
//! - [`session`]: one WebSocket connection: decoding, writes, subscriptions, outbound queues.
//! - [`registry`]: tenant id → running actor, created race-free on first use.
//! - [`tenant`]: the actor that owns a tenant's database, assigns sequences and group-commits.
//! - [`store`]: the SQLite schema and queries (sqlx).
//! - [`config`]: every setting, from defaults, TOML, `WHARF_*` and flags.
//! - [`tls`]: rustls for `wss://` and `https://`, with certificate reload.
//! - [`viewer`]: the browser viewer's files, built into the binary and served at `/viewer/`.
//!
//! The relay stores and forwards ciphertext; no key material ever reaches it.

pub mod auth;
pub mod config;
pub mod counters;
pub mod limits;
pub mod registry;
pub mod server;
pub mod session;
pub mod store;
pub mod tenant;
pub mod tls;
pub mod viewer;

pub use config::{Config, Durability, TenantId};
pub use server::{serve, Relay, ServeError};
