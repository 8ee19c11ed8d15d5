//! What webhooks are configured with: the `[webhooks]` section, and one endpoint.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One webhook endpoint: where to POST, and the Standard Webhooks signing secret
/// (`whsec_` followed by base64).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The `[webhooks]` section: how notifications are delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow endpoints that resolve to link-local addresses (169.254.0.0/16, fe80::/10), where
    /// cloud metadata services live. Off: such URLs are refused (server-side request forgery).
    pub allow_link_local: bool,
    /// One delivery attempt gives up after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per notification before it is dropped (and counted).
    pub max_attempts: u32,
    /// Retry delays: `backoff_base · 2^attempt`, at most `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_link_local: false,
            timeout: Duration::from_secs(10),
            max_attempts: 12,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
        }
    }
}

impl WebhooksConfig {
    /// How long to wait after `attempts` failures.
    pub fn backoff(&self, attempts: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX))
            .min(self.backoff_max)
    }
}
