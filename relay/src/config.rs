//! Every setting of the relay, with its default. Loaded from (lowest to highest precedence)
//! built-in defaults, a TOML file, `WHARF_*` environment variables, and command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use wharf_protocol::ReassemblerLimits;

use crate::policy::{Effective, Quota, Retention, TenantSettings, TenantTables};
use crate::webhook::settings::WebhooksConfig;
use wharf_store::config::StoreConfig;
pub use wharf_store::config::{Durability, PostgresConfig, TenantId};
pub use wharf_token::config::{AuthConfig, AuthMode, IssuerAlgorithm, TrustedIssuer};

/// How the relay writes its logs (to stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, with the connection's span fields, for log shippers.
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`wharf-relay serve` only; tests pass a bound listener).
    pub listen: SocketAddr,
    /// Serve `/metrics` (and the probes) on this address instead of `listen`, plain HTTP, for
    /// a scraper on a private network. Unset: `/metrics` is on `listen`. (Serialized even when
    /// unset: the names of the settings decide which `WHARF_*` variables are read.)
    pub metrics_listen: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Directory holding `tenants/{tenant}.sqlite` (and, whatever the store, the relay's key
    /// and revocation list).
    pub data: PathBuf,
    /// Where tenants are stored. Unset: one SQLite file per tenant under `data`. A
    /// `postgres://` URL: one PostgreSQL database that any number of relays share
    /// (`--store`, env `WHARF_STORE`; docs/scale-out.md).
    pub store: Option<String>,
    /// How the relay uses PostgreSQL when `store` is a `postgres://` URL ([`PostgresConfig`]).
    pub postgres: PostgresConfig,
    pub durability: Durability,
    /// An actor with no connections closes its database after this long.
    #[serde(with = "humantime_serde")]
    pub tenant_idle_timeout: Duration,
    /// Largest WebSocket frame or message accepted (the v3 client's chunks are ~512 kB).
    pub max_frame_bytes: usize,
    /// Largest message reassembled from `ChunkedMessage` parts, and the most bytes one
    /// connection may hold in incomplete chunked messages.
    pub max_message_bytes: usize,
    /// Chunked messages one connection may be sending at once.
    pub max_open_chunked: usize,
    /// An incomplete chunked message is dropped after this long.
    #[serde(with = "humantime_serde")]
    pub chunk_timeout: Duration,
    /// Longest `publicKey` (log name) accepted, in bytes.
    pub max_public_key_bytes: usize,
    /// Longest `entryId` and `iv`, in bytes (Effect sends 16 and 12).
    pub max_entry_id_bytes: usize,
    /// Most entries in one `WriteEntries`.
    pub max_entries_per_write: usize,
    /// Refuse (close 1008) a write whose 12-byte AES-GCM iv is reused: shared by several
    /// entries of the write (what Effect v3 clients do) or already stored in the log. Off by
    /// default: such writes are counted and logged once per connection. See SECURITY.md.
    pub strict_iv: bool,
    /// Most subscriptions (`RequestChanges` publicKeys) one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Writes a connection may have waiting for their Ack before the relay stops reading it.
    pub max_pending_writes_per_connection: usize,
    /// Messages queued to one connection before its subscriptions fall back to storage.
    pub outbound_queue_messages: usize,
    /// Target size of one `Changes` message (an entry larger than this travels alone).
    pub changes_max_bytes: usize,
    /// Most entries in one `Changes` message.
    pub changes_max_entries: usize,
    /// Most entries committed in one transaction (group commit).
    pub commit_max_entries: usize,
    /// OS threads that run every tenant's SQLite work (commits, reads, checkpoints): the
    /// relay's thread count does not grow with its tenants. More overlap more fsyncs of
    /// different tenants.
    pub storage_threads: usize,
    /// Bytes of recent entries kept in memory per subscribed log; a subscriber that falls
    /// further behind reads storage instead.
    pub live_tail_bytes: usize,
    /// How often a tenant's WAL is checkpointed, off the write path.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// On shutdown, a connection keeps reading until it has been quiet this long, so writes
    /// already sent are committed and acked before the close.
    #[serde(with = "humantime_serde")]
    pub shutdown_read_grace: Duration,
    /// How long shutdown waits for connections to flush before giving up on them.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Who may connect ([`AuthConfig`]).
    pub auth: AuthConfig,
    /// A client's HTTP request head (the upgrade) must arrive whole within this of connecting
    /// (of the TLS handshake's end, with TLS).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// TLS ([`TlsConfig`]); off unless `cert` and `key` are set.
    pub tls: TlsConfig,
    /// Connection and rate limits ([`LimitsConfig`]).
    pub limits: LimitsConfig,
    /// How often each open tenant applies its retention policy (off the write path, in
    /// bounded steps). A tenant also applies it when it opens.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// The retention policy of every tenant ([`Retention`]); `[tenants.<id>]` overrides it.
    pub retention: Retention,
    /// Every tenant's quota ([`Quota`]); `[tenants.<id>]` overrides it.
    pub quota: Quota,
    /// Snapshots kept per log (the newest).
    pub snapshots_per_log: usize,
    /// Largest snapshot accepted, in bytes (it travels as one message: at most
    /// `max_message_bytes`).
    pub max_snapshot_bytes: usize,
    /// How webhook notifications are delivered ([`WebhooksConfig`]).
    pub webhooks: WebhooksConfig,
    /// Per-tenant overrides: `[tenants.acme.retention]`, `[tenants.acme.quota]`,
    /// `[[tenants.acme.webhooks]]`.
    pub tenants: TenantTables,
}

/// The `[tls]` section: with `cert` and `key`, the relay serves `wss://` and `https://` itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (`--tls-cert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`--tls-key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// How often the files' modification times are checked; a change reloads them (so does
    /// SIGHUP). A pair that fails to load leaves the current certificate in place.
    #[serde(with = "humantime_serde")]
    pub reload_poll: Duration,
    /// A TLS handshake must finish within this of connecting.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_poll: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The `[limits]` section. `0` turns a limit off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// WebSocket connections the relay serves at once.
    pub max_connections: usize,
    /// WebSocket connections one tenant may hold at once.
    pub max_connections_per_tenant: usize,
    /// WebSocket connections from one client IP address (an IPv6 /64) at once. Behind a
    /// reverse proxy every connection comes from the proxy's address: raise this or set it to
    /// 0 there.
    pub max_connections_per_ip: usize,
    /// `WriteEntries` messages per second one connection may send.
    pub writes_per_second_per_connection: u32,
    /// Bytes per second one connection may send (every message frame counts; WebSocket
    /// control frames do not).
    pub bytes_per_second_per_connection: u32,
    /// `WriteEntries` messages per second all connections of a tenant may send together.
    pub writes_per_second_per_tenant: u32,
    /// Bytes per second all connections of a tenant may send together.
    pub bytes_per_second_per_tenant: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_tenant: 2_000,
            max_connections_per_ip: 1_000,
            writes_per_second_per_connection: 50_000,
            bytes_per_second_per_connection: 64 * 1024 * 1024,
            writes_per_second_per_tenant: 100_000,
            bytes_per_second_per_tenant: 128 * 1024 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            metrics_listen: None,
            log_format: LogFormat::Text,
            data: PathBuf::from("./data"),
            store: None,
            postgres: PostgresConfig::default(),
            durability: Durability::Full,
            tenant_idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 1024 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            max_open_chunked: 4,
            chunk_timeout: Duration::from_secs(60),
            max_public_key_bytes: 256,
            max_entry_id_bytes: 64,
            max_entries_per_write: 100_000,
            strict_iv: false,
            max_subscriptions_per_connection: 64,
            max_pending_writes_per_connection: 64,
            outbound_queue_messages: 16,
            changes_max_bytes: 256 * 1024,
            changes_max_entries: 1_000,
            commit_max_entries: 10_000,
            storage_threads: 8,
            live_tail_bytes: 4 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(1),
            shutdown_read_grace: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            auth: AuthConfig::default(),
            header_read_timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            retention_interval: Duration::from_secs(60),
            retention: Retention::default(),
            quota: Quota::default(),
            snapshots_per_log: 2,
            max_snapshot_bytes: 32 * 1024 * 1024,
            webhooks: WebhooksConfig::default(),
            tenants: TenantTables::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the TOML file (if any), then `WHARF_*` variables, then `overrides`
    /// (a serialisable struct holding only the flags the user gave).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only variables named after a setting (or a section) are settings: the `wharf` CLI's
        // WHARF_TOKEN, WHARF_RELAY and friends, WHARF_LOG (the log filter) and WHARF_CONFIG
        // (the file) may share the environment.
        let settings: Vec<String> = match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        figment
            .merge(
                Env::prefixed("WHARF_")
                    .filter(move |key| {
                        let top = key.as_str().split("__").next().unwrap_or_default();
                        settings.iter().any(|s| s.eq_ignore_ascii_case(top))
                    })
                    // `WHARF_AUTH=token` is the mode; `WHARF_AUTH__ISSUER` and friends the rest.
                    .map(|key| {
                        if key == "auth" {
                            "auth.mode".into()
                        } else {
                            key.as_str().replace("__", ".").into()
                        }
                    }),
            )
            .merge(Serialized::defaults(overrides))
            .extract::<Config>()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?
            .validated()
    }

    /// Refuses settings that cannot work: a zero period would spin, a zero timeout would refuse
    /// every connection.
    pub fn validated(self) -> Result<Self, ConfigError> {
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("tls.handshake_timeout", self.tls.handshake_timeout),
            ("tls.reload_poll", self.tls.reload_poll),
            ("auth.revocation_poll", self.auth.revocation_poll),
            ("checkpoint_interval", self.checkpoint_interval),
            ("retention_interval", self.retention_interval),
            ("webhooks.timeout", self.webhooks.timeout),
            ("postgres.acquire_timeout", self.postgres.acquire_timeout),
            ("postgres.lock_timeout", self.postgres.lock_timeout),
            (
                "postgres.statement_timeout",
                self.postgres.statement_timeout,
            ),
            (
                "postgres.idle_in_transaction_timeout",
                self.postgres.idle_in_transaction_timeout,
            ),
            ("postgres.poll_interval", self.postgres.poll_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!("{name} must be more than 0")));
            }
        }
        if self.postgres.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "postgres.max_connections must be more than 0".into(),
            ));
        }
        if let Some(store) = &self.store {
            if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid(format!(
                    "store: expected a postgres:// URL (or no store setting for SQLite), got {:?}",
                    wharf_store::config::redact_url(store)
                )));
            }
        }
        let global = self.global_settings();
        global
            .validate(&self.webhooks)
            .map_err(ConfigError::Invalid)?;
        for (tenant, settings) in &self.tenants {
            if TenantId::parse(tenant).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[tenants.{tenant}]: not a tenant id ([a-z0-9][a-z0-9_-]{{0,62}})"
                )));
            }
            settings
                .validate(&self.webhooks)
                .map_err(|e| ConfigError::Invalid(format!("[tenants.{tenant}]: {e}")))?;
        }
        Ok(self)
    }

    /// Settings that work but probably not as meant, for a warning at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let frame = self.max_frame_bytes as f64;
        for (name, rate) in [
            (
                "limits.bytes_per_second_per_connection",
                self.limits.bytes_per_second_per_connection,
            ),
            (
                "limits.bytes_per_second_per_tenant",
                self.limits.bytes_per_second_per_tenant,
            ),
        ] {
            if rate > 0 && frame / f64::from(rate) > 5.0 {
                warnings.push(format!(
                    "{name} = {rate} lets one {}-byte frame pause its connection for {:.0} s; \
                     clients whose pings go unanswered that long may reconnect (the SDK waits \
                     10 s)",
                    self.max_frame_bytes,
                    frame / f64::from(rate)
                ));
            }
        }
        warnings
    }

    pub(crate) fn reassembler_limits(&self) -> ReassemblerLimits {
        ReassemblerLimits {
            max_open: self.max_open_chunked,
            max_parts: u32::try_from(self.max_message_bytes.div_ceil(wharf_protocol::CHUNK_SIZE))
                .unwrap_or(u32::MAX)
                .max(1),
            max_bytes: self.max_message_bytes,
            max_age_ms: u64::try_from(self.chunk_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The relay's signing key.
    pub fn key_path(&self) -> PathBuf {
        self.auth
            .key_file
            .clone()
            .unwrap_or_else(|| self.data.join("auth").join("signing-key.pem"))
    }

    /// The revocation list, when it is kept in the data directory.
    pub fn revocations_path(&self) -> PathBuf {
        self.store_config().revocations_path()
    }

    /// What the storage needs of this configuration.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            data: self.data.clone(),
            url: self.store.clone(),
            postgres: self.postgres.clone(),
            durability: self.durability,
            storage_threads: self.storage_threads,
        }
    }

    /// The relay-wide layer of every tenant's settings.
    pub fn global_settings(&self) -> TenantSettings {
        TenantSettings {
            retention: self.retention.clone(),
            quota: self.quota.clone(),
            webhooks: None,
        }
    }

    /// A tenant's settings with the relay's and the config file's layers applied, and
    /// `stored` (what an administrator set through the admin API) on top.
    pub fn effective(&self, tenant: &TenantId, stored: Option<&TenantSettings>) -> Effective {
        Effective::resolve(
            &self.global_settings(),
            self.tenants.get(tenant.as_str()),
            stored,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail takes a closure returning its Error
    fn only_wharf_variables_named_after_settings_are_read() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WHARF_TOKEN", "a token for the wharf CLI");
            jail.set_env("WHARF_RELAY", "ws://elsewhere");
            jail.set_env("WHARF_LOG", "debug");
            jail.set_env("WHARF_TENANT_IDLE_TIMEOUT", "7s");
            jail.set_env("WHARF_LIMITS__MAX_CONNECTIONS", "9");
            jail.set_env("WHARF_AUTH", "token");
            #[derive(Serialize)]
            struct NoFlags {}
            let c = Config::load(None, NoFlags {}).map_err(|e| e.to_string())?;
            assert_eq!(c.tenant_idle_timeout, Duration::from_secs(7));
            assert_eq!(c.limits.max_connections, 9);
            assert_eq!(c.auth.mode, Some(AuthMode::Token));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_env_and_flags_layer_in_order() {
        // In a jail: the environment is the process's, and the other test sets variables.
        figment::Jail::expect_with(|_jail| {
            file_env_and_flags();
            Ok(())
        });
    }

    fn file_env_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wharf.toml");
        std::fs::write(
            &file,
            "tenant_idle_timeout = \"5s\"\nmax_public_key_bytes = 100\ndurability = \"normal\"\n",
        )
        .expect("write");
        #[derive(Serialize)]
        struct Flags {
            max_public_key_bytes: usize,
        }
        let c = Config::load(
            Some(&file),
            Flags {
                max_public_key_bytes: 7,
            },
        )
        .expect("load");
        assert_eq!(c.tenant_idle_timeout, Duration::from_secs(5));
        assert_eq!(c.durability, Durability::Normal);
        assert_eq!(c.max_public_key_bytes, 7, "flags win over the file");
        std::fs::write(&file, "[tls]\nreload_poll = \"0s\"\n").expect("write");
        #[derive(Serialize)]
        struct NoFlags {}
        let e = Config::load(Some(&file), NoFlags {}).expect_err("a zero period is refused");
        assert!(e.to_string().contains("tls.reload_poll"), "{e}");
        std::fs::write(&file, "no_such_setting = 1\n").expect("write");
        assert!(
            Config::load(Some(&file), NoFlags {})
                .expect_err("refused")
                .to_string()
                .contains("no_such_setting"),
            "unknown settings are refused"
        );
    }
}
