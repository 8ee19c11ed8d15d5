//! Per-tenant policies: retention, quotas and webhooks. Each comes from three layers, the
//! later overriding the earlier field by field: the relay's `[retention]`, `[quota]` (and
//! `[webhooks]` defaults), a `[tenants.<id>]` table in the config file, and the settings an
//! administrator stored in the tenant's own database through the admin API. A limit of `0`
//! turns an inherited limit off.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use wharf_store::{CommitRules, RetentionLimits};

use crate::webhook::endpoint::{origin_of, Endpoint};
pub use crate::webhook::settings::{Webhook, WebhooksConfig};

/// A retention policy (`[retention]`). Unset fields keep nothing from being deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many entries per log (the newest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Keep at most this many ciphertext bytes per log (the newest entries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Delete entries committed longer ago than this (`"30d"`, `"12h"`).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Delete every entry the log's newest snapshot covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_snapshot: Option<bool>,
}

impl Retention {
    fn over(&self, base: &Retention) -> Retention {
        Retention {
            max_entries: self.max_entries.or(base.max_entries),
            max_bytes: self.max_bytes.or(base.max_bytes),
            max_age: self.max_age.or(base.max_age),
            after_snapshot: self.after_snapshot.or(base.after_snapshot),
        }
    }

    pub fn limits(&self) -> RetentionLimits {
        RetentionLimits {
            max_entries: self.max_entries.filter(|n| *n > 0),
            max_bytes: self.max_bytes.filter(|n| *n > 0),
            max_age_ms: self
                .max_age
                .filter(|d| !d.is_zero())
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            after_snapshot: self.after_snapshot.unwrap_or(false),
        }
    }
}

/// A tenant's quota (`[quota]`), checked before a write is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    /// Ciphertext and snapshot bytes the tenant may store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Logs the tenant may hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_logs: Option<u64>,
}

impl Quota {
    fn over(&self, base: &Quota) -> Quota {
        Quota {
            max_bytes: self.max_bytes.or(base.max_bytes),
            max_logs: self.max_logs.or(base.max_logs),
        }
    }
}

/// What can be set per tenant (`[tenants.<id>]` in the config file, or through the admin API).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    pub retention: Retention,
    pub quota: Quota,
    /// Replaces the inherited list when set (an empty list turns webhooks off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<Webhook>>,
}

impl TenantSettings {
    pub fn over(&self, base: &TenantSettings) -> TenantSettings {
        TenantSettings {
            retention: self.retention.over(&base.retention),
            quota: self.quota.over(&base.quota),
            webhooks: self.webhooks.clone().or_else(|| base.webhooks.clone()),
        }
    }

    /// Checks what a tenant's settings may hold: webhook URLs (each once) and secrets.
    pub fn validate(&self, webhooks: &WebhooksConfig) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for hook in self.webhooks.iter().flatten() {
            Endpoint::parse(hook, webhooks)?;
            if !seen.insert(hook.url.as_str()) {
                return Err(format!(
                    "webhook {:?} is listed twice",
                    origin_of(&hook.url)
                ));
            }
        }
        Ok(())
    }
}

/// A tenant's settings with every layer applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub retention: RetentionLimits,
    pub quota: Quota,
    pub webhooks: Vec<Webhook>,
}

impl Effective {
    pub fn resolve(
        global: &TenantSettings,
        configured: Option<&TenantSettings>,
        stored: Option<&TenantSettings>,
    ) -> Effective {
        let mut s = global.clone();
        if let Some(c) = configured {
            s = c.over(&s);
        }
        if let Some(d) = stored {
            // The admin API's layer may tighten the config file's quota, never loosen or lift
            // it: an admin token scoped to a tenant must not be a way around its limits.
            let quota = Quota {
                max_bytes: tighten(s.quota.max_bytes, d.quota.max_bytes),
                max_logs: tighten(s.quota.max_logs, d.quota.max_logs),
            };
            s = d.over(&s);
            s.quota = quota;
        }
        Effective {
            retention: s.retention.limits(),
            quota: Quota {
                max_bytes: s.quota.max_bytes.filter(|n| *n > 0),
                max_logs: s.quota.max_logs.filter(|n| *n > 0),
            },
            webhooks: s.webhooks.unwrap_or_default(),
        }
    }

    pub fn commit_rules(&self, strict_iv: bool, now_ms: i64) -> CommitRules {
        CommitRules {
            strict_iv,
            max_bytes: self.quota.max_bytes,
            max_logs: self.quota.max_logs,
            // Each endpoint is notified once, however the layers listed it.
            webhooks: self
                .webhooks
                .iter()
                .map(|w| w.url.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            now_ms,
        }
    }
}

/// `stored` over `inherited`, but never above it (`0` and `None` mean no limit).
fn tighten(inherited: Option<u64>, stored: Option<u64>) -> Option<u64> {
    let inherited = inherited.filter(|n| *n > 0);
    match (inherited, stored.filter(|n| *n > 0)) {
        (Some(i), Some(s)) => Some(i.min(s)),
        (None, s) => s,
        (i, None) => i,
    }
}

/// Per-tenant tables of the config file.
pub type TenantTables = BTreeMap<String, TenantSettings>;

/// Milliseconds since the Unix epoch.
pub use wharf_store::config::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_field_by_field_and_zero_turns_a_limit_off() {
        let global = TenantSettings {
            retention: Retention {
                max_entries: Some(100),
                max_age: Some(Duration::from_secs(60)),
                ..Default::default()
            },
            quota: Quota {
                max_bytes: Some(1000),
                max_logs: None,
            },
            webhooks: None,
        };
        let configured = TenantSettings {
            retention: Retention {
                max_entries: Some(0),
                after_snapshot: Some(true),
                ..Default::default()
            },
            ..Default::default()
        };
        let stored = TenantSettings {
            quota: Quota {
                max_bytes: None,
                max_logs: Some(3),
            },
            ..Default::default()
        };
        let e = Effective::resolve(&global, Some(&configured), Some(&stored));
        assert_eq!(
            e.retention,
            RetentionLimits {
                max_entries: None,
                max_bytes: None,
                max_age_ms: Some(60_000),
                after_snapshot: true,
            }
        );
        assert_eq!(e.quota.max_bytes, Some(1000));
        assert_eq!(e.quota.max_logs, Some(3));
        // The admin API's layer cannot lift or raise the config file's quota.
        let lift = TenantSettings {
            quota: Quota {
                max_bytes: Some(0),
                max_logs: None,
            },
            ..Default::default()
        };
        let raise = TenantSettings {
            quota: Quota {
                max_bytes: Some(5000),
                max_logs: None,
            },
            ..Default::default()
        };
        let lower = TenantSettings {
            quota: Quota {
                max_bytes: Some(10),
                max_logs: None,
            },
            ..Default::default()
        };
        for (stored, want) in [(lift, 1000), (raise, 1000), (lower, 10)] {
            let e = Effective::resolve(&global, None, Some(&stored));
            assert_eq!(e.quota.max_bytes, Some(want));
        }
        assert!(e.webhooks.is_empty());
    }
}
