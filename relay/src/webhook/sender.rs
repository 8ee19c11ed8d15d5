//! The webhook sender of one open tenant: a task that posts what the tenant's outbox holds when
//! it is due, and tells the tenant's actor (the database's only writer) how each delivery went,
//! on a channel of its own ([`Delivery`]). It reads the outbox through the tenant's [`Store`];
//! it never writes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, warn, Instrument};
use wharf_store::config::now_ms;
use wharf_store::{OutboxRow, Store, TenantId};

use super::endpoint::{tls_config, Endpoint};
use super::settings::Webhook;
use super::sign::{message_id, Notification};
use crate::metrics::Metrics;

/// What a sender is started with.
#[derive(Debug)]
pub struct SenderSettings {
    pub tenant: TenantId,
    /// The tenant's reading side: the outbox is read through it.
    pub store: Store,
    /// The endpoints as configured (a reload that keeps them keeps the sender).
    pub hooks: Vec<Webhook>,
    /// The same endpoints, checked.
    pub endpoints: Vec<Endpoint>,
    /// How long one delivery may take.
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// One delivery tried: the actor updates the outbox (delivered, retried later, or given up),
/// then answers on `done`, so the sender never reads a row it already tried.
#[derive(Debug)]
pub struct Delivery {
    pub row: OutboxRow,
    pub ok: bool,
    pub done: oneshot::Sender<()>,
}

/// A running sender, as the actor holds it.
#[derive(Debug)]
pub struct Sender {
    task: tokio::task::JoinHandle<()>,
    hooks: Vec<Webhook>,
    wake: Arc<Notify>,
    /// Commits that enqueued notifications, and the count the sender last saw fully
    /// delivered: equal means the outbox is empty.
    enqueued: Arc<AtomicU64>,
    drained: Arc<AtomicU64>,
}

impl Sender {
    /// Starts a sender; the receiver is where its deliveries are reported (when the actor
    /// drops it, the sender ends).
    pub fn spawn(settings: SenderSettings) -> (Sender, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(1);
        let wake = Arc::new(Notify::new());
        // Whatever a previous run left in the outbox counts as enqueued.
        let enqueued = Arc::new(AtomicU64::new(1));
        let drained = Arc::new(AtomicU64::new(0));
        let hooks = settings.hooks.clone();
        let task = tokio::spawn(
            Loop {
                settings,
                report: tx,
                wake: wake.clone(),
                enqueued: enqueued.clone(),
                drained: drained.clone(),
            }
            .run()
            .in_current_span(),
        );
        (
            Sender {
                task,
                hooks,
                wake,
                enqueued,
                drained,
            },
            rx,
        )
    }

    /// The endpoints it was started for, as configured.
    pub fn hooks(&self) -> &[Webhook] {
        &self.hooks
    }

    /// A commit enqueued notifications: look at the outbox.
    pub fn committed(&self) {
        self.enqueued.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether the outbox is known to be empty (an idle tenant with notifications left stays
    /// open to deliver them).
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed) == self.enqueued.load(Ordering::Relaxed)
    }

    /// Stops the sender, giving back (on a shared store) the notifications it claimed and had
    /// not reported on, so another relay (or the next sender) delivers them without waiting
    /// for the claim to run out.
    pub async fn stop(self, store: &Store) {
        self.task.abort();
        let _ = self.task.await;
        if let Err(e) = store.release_claims().await {
            warn!(error = %e, "cannot give back webhook claims; they run out on their own");
        }
    }
}

struct Loop {
    settings: SenderSettings,
    report: mpsc::Sender<Delivery>,
    wake: Arc<Notify>,
    enqueued: Arc<AtomicU64>,
    drained: Arc<AtomicU64>,
}

impl Loop {
    async fn run(self) {
        let tls = tls_config();
        let s = &self.settings;
        loop {
            let seen = self.enqueued.load(Ordering::Relaxed);
            let now = now_ms();
            let (rows, next_due) = match s.store.outbox_due(now, s.timeout).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cannot read the webhook outbox");
                    (Vec::new(), Some(now + 1000))
                }
            };
            if rows.is_empty() && next_due.is_none() {
                self.drained.store(seen, Ordering::Relaxed);
            }
            // What was just tried moved (delivered, or due later): look at the outbox again.
            let tried = !rows.is_empty();
            for row in rows {
                let ok = self.deliver(&row, &tls).await;
                let (done, answered) = oneshot::channel();
                if self.report.send(Delivery { row, ok, done }).await.is_err() {
                    return;
                }
                let _ = answered.await;
            }
            let wait = next_due
                .map(|due| Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)))
                .unwrap_or(Duration::from_secs(3600));
            if tried || self.enqueued.load(Ordering::Relaxed) != seen {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt at `row`; false also for an endpoint removed since (the actor then drops
    /// the row for good).
    async fn deliver(&self, row: &OutboxRow, tls: &Arc<rustls::ClientConfig>) -> bool {
        let s = &self.settings;
        let Some(endpoint) = s.endpoints.iter().find(|e| e.configured() == row.endpoint) else {
            return false;
        };
        let body = serde_json::to_vec(&Notification {
            tenant: s.tenant.as_str(),
            public_key: &row.public_key,
            from_sequence: row.from_seq,
            to_sequence: row.to_seq,
            count: row.count,
        })
        .unwrap_or_default();
        let id = message_id(s.tenant.as_str(), row);
        let started = std::time::Instant::now();
        let r = endpoint
            .post(&id, now_ms() / 1000, Bytes::from(body), s.timeout, tls)
            .await;
        s.metrics
            .webhook_latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            debug!(endpoint = %endpoint.origin(), error = %e, attempt = row.attempts + 1, "webhook delivery failed");
        }
        r.is_ok()
    }
}
