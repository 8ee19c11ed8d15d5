//! The Wharf client SDK: what an agent runtime embeds to share end-to-end-encrypted,
//! append-only event logs through a Wharf relay (or any Effect v3 `EventLogServer`).
//!
//! - Appending is a local durable write (SQLite journal) that returns at once, online or not.
//! - A background task syncs with the relay over `ws://` or `wss://`: uploads the outbox,
//!   subscribes every log from its cursor, applies entries in the relay's order, pings, and
//!   reconnects with jittered backoff.
//! - Entries are encrypted before they leave the process ([`wharf_protocol::crypto`]); the relay
//!   sees log names, entry ids and ciphertext only.
//!
//! Module map: [`client`] (the public [`Client`]), [`journal`] (the SQLite journal),
//! [`connection`] (one WebSocket connection), `sync` (the background task), [`v4`] (one
//! Effect v4 connection, for v4 logs).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # let relay = wharf_relay::Relay::new(wharf_relay::Config { data: dir.path().join("relay"), ..Default::default() });
//! # tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
//! # let relay_url = format!("ws://{addr}");
//! use wharf_client::{Client, Identity};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Fact { text: String }
//!
//! let identity = Identity::generate(&mut rand::rngs::OsRng);
//! let client = Client::builder(&relay_url, "acme")
//!     .identity(identity)
//!     .journal(dir.path().join("agent.db"))
//!     .open()
//!     .await?;
//! client.append("FactLearned", "sky", &Fact { text: "the sky is blue".into() }).await?;
//! client.flush().await?; // acknowledged by the relay
//!
//! let mut entries = client.entries();
//! let first = entries.next().await?;
//! assert_eq!(first.sequence, 0);
//! assert_eq!(first.payload_as::<Fact>()?.text, "the sky is blue");
//! let view = client.view().await?;
//! assert!(view.get("FactLearned", "sky").is_some());
//! client.close().await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod connection;
mod error;
pub mod journal;
mod sync;
pub mod v4;

pub use client::{
    Client, ClientBuilder, Delivered, EntryStream, NewEvent, Record, Status, SyncConfig, View,
};
pub use connection::{ConnectOptions, Connection, TokenPlacement};
pub use error::Error;
pub use journal::Journal;
pub use sync::backoff;
pub use v4::V4Connection;
pub use wharf_protocol::{EffectIdentity, Entry, Grant, GrantKeyPair, Identity, ReadKey, Suite};
