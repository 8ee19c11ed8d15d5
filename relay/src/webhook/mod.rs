//! Webhook notifications: best-effort, after commit, never on the write path.
//!
//! A commit records what each endpoint must hear about in the tenant's `webhook_outbox` (in the
//! same transaction as the entries, so a restart loses nothing; one row per endpoint and log,
//! coalesced). A sender task per open tenant ([`sender`]) posts due rows as JSON
//! `{tenant, publicKey, fromSequence, toSequence, count}`, signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), and tells
//! the tenant actor how it went; the actor (the database's only writer) removes the row,
//! schedules a retry with backoff, or gives up after `max_attempts`.
//!
//! Server-side request forgery: an endpoint's host is resolved at every delivery, and the
//! request goes to the vetted address itself (no second lookup), so a name that resolves to a
//! link-local address (where cloud metadata services answer) is refused unless
//! `webhooks.allow_link_local` says otherwise.
//!
//! - [`settings`]: the `[webhooks]` section and one endpoint as configured.
//! - [`endpoint`]: an endpoint checked, the guard, one delivery attempt.
//! - [`sign`]: the signature, the message id, the body.
//! - [`sender`]: the task that delivers a tenant's outbox and reports to its actor.
//!
//! Architecture invariant: nothing here imports the tenant actor or the policy layers; the
//! actor hands the sender what it needs and hears back on the sender's own channel.

pub mod endpoint;
pub mod sender;
pub mod settings;
pub mod sign;
