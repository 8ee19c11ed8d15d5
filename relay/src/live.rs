//! What a tenant publishes after each durable commit, and the live tail of each log.
//!
//! The tenant actor turns every group commit into one [`Committed`] event, after `COMMIT`
//! returned and the Acks left, and hands it to each [`CommitConsumer`] in turn: the live tails
//! (which wake the logs' subscribers) first, then the others (metrics, `CommitMetrics`). A consumer runs on
//! the actor's task, so it must be quick and must not block; one that needs to do I/O hands
//! the event on to a task of its own.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use wharf_protocol::RemoteEntry;

/// One group commit, durable.
#[derive(Debug)]
pub(crate) struct Committed<'a> {
    /// Writes in the group that were stored (including those whose entries were all
    /// duplicates of stored ones).
    pub writes: usize,
    /// Entries stored by this commit (resent duplicates are not).
    pub entries: usize,
    /// Their ciphertext bytes.
    pub bytes: usize,
    /// How long the commit job took on its storage thread, `fsync` included.
    pub duration: Duration,
    /// The entries stored, one batch per log, in sequence order: for the logs some consumer
    /// wants entries of ([`CommitConsumer::wants_entries`]); copying them for nobody would
    /// cost the write path.
    pub logs: Vec<(&'a str, Arc<LiveBatch>)>,
}

/// Takes [`Committed`] events on the tenant actor's task.
pub(crate) trait CommitConsumer: Send {
    fn committed(&mut self, event: &Committed<'_>);

    /// Whether this consumer needs the entries of `public_key` in [`Committed::logs`].
    fn wants_entries(&self, _public_key: &str) -> bool {
        false
    }

    /// A group commit failed: nothing of it is stored, and each of its writes was refused.
    fn failed(&mut self) {}
}

/// The live tails of one tenant's subscribed logs, fed by [`Committed`] events.
#[derive(Debug)]
pub(crate) struct LiveTails {
    logs: HashMap<String, Arc<LiveLog>>,
    /// Each tail's budget (`live_tail_bytes`).
    max_bytes: usize,
}

impl LiveTails {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            logs: HashMap::new(),
            max_bytes,
        }
    }

    pub fn get(&self, public_key: &str) -> Option<&Arc<LiveLog>> {
        self.logs.get(public_key)
    }

    pub fn insert(&mut self, public_key: String, live: Arc<LiveLog>) {
        self.logs.insert(public_key, live);
    }

    /// The subscribed logs.
    pub fn keys(&self) -> Vec<String> {
        self.logs.keys().cloned().collect()
    }

    /// Appends entries another relay committed (read from the shared database), starting at
    /// the tail's next sequence; with `restart`, they replace the tail instead (they do not
    /// follow on from it: subscribers behind them read storage). Frees the tail if its last
    /// subscriber left.
    pub fn followed(&mut self, public_key: &str, entries: Vec<RemoteEntry>, restart: bool) {
        let Some(live) = self.logs.get(public_key) else {
            return;
        };
        if Arc::strong_count(live) == 1 {
            self.logs.remove(public_key);
            return;
        }
        let origins = vec![OTHER_RELAY; entries.len()];
        let batch = Arc::new(LiveBatch {
            entries,
            origins,
            frames: OnceLock::new(),
        });
        if restart {
            live.restart(batch);
        } else {
            live.push(batch, self.max_bytes);
        }
    }
}

impl CommitConsumer for LiveTails {
    fn wants_entries(&self, public_key: &str) -> bool {
        self.logs.contains_key(public_key)
    }

    fn committed(&mut self, event: &Committed<'_>) {
        for (public_key, batch) in &event.logs {
            if let Some(live) = self.logs.get(*public_key) {
                if Arc::strong_count(live) == 1 {
                    // Its last subscriber left: free the tail.
                    self.logs.remove(*public_key);
                } else if batch.first() == live.next() {
                    live.push(batch.clone(), self.max_bytes);
                }
                // Otherwise the tail already holds these entries: the actor followed the log
                // (a shared tenant) past them before publishing.
            }
        }
    }
}

/// Identifies one WebSocket connection, to keep a writer's own entries out of its live feed.
pub type ConnId = u64;

/// The origin of entries another relay committed (connection ids start at 1).
pub(crate) const OTHER_RELAY: ConnId = 0;

/// Entries of one log committed together, shared by every subscriber of that log.
#[derive(Debug)]
pub(crate) struct LiveBatch {
    /// Dense, ascending sequences.
    pub entries: Vec<RemoteEntry>,
    /// The connection that wrote each entry.
    pub origins: Vec<ConnId>,
    /// The encoded `Changes` frames, built by the first subscriber that can use them whole.
    pub frames: OnceLock<Arc<[Bytes]>>,
}

impl LiveBatch {
    pub fn first(&self) -> u64 {
        self.entries.first().map_or(0, |e| e.sequence)
    }

    /// One past the last sequence.
    pub fn end(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.sequence + 1)
    }
}

/// The recent tail of one log, shared by the actor (which appends after each commit) and
/// the log's subscribers (which read it). Bounded in bytes: a subscriber whose cursor falls
/// out of the tail reads storage instead, so a stalled reader costs nothing here.
#[derive(Debug)]
pub(crate) struct LiveLog {
    tail: std::sync::Mutex<Tail>,
    /// The log's next sequence; changes after every commit that added entries.
    next: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Tail {
    batches: std::collections::VecDeque<Arc<LiveBatch>>,
    bytes: usize,
}

/// What a subscriber finds in the tail from its cursor on.
#[derive(Debug)]
pub(crate) enum TailRead {
    /// Batches holding every entry from the cursor to the present (possibly none).
    Batches(Vec<Arc<LiveBatch>>),
    /// The tail no longer reaches back to the cursor: read storage up to this sequence.
    Behind { tail_start: u64 },
}

impl LiveLog {
    pub fn new(next: u64) -> Self {
        Self {
            tail: std::sync::Mutex::new(Tail::default()),
            next: watch::channel(next).0,
        }
    }

    fn push(&self, batch: Arc<LiveBatch>, max_bytes: usize) {
        let end = batch.end();
        let size: usize = batch
            .entries
            .iter()
            .map(RemoteEntry::encoded_len_bound)
            .sum();
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.batches.push_back(batch);
            tail.bytes += size;
            // Keep the newest batch whatever its size; drop the oldest beyond the budget.
            while tail.bytes > max_bytes && tail.batches.len() > 1 {
                if let Some(old) = tail.batches.pop_front() {
                    tail.bytes -= old
                        .entries
                        .iter()
                        .map(RemoteEntry::encoded_len_bound)
                        .sum::<usize>();
                }
            }
        }
        self.next.send_replace(end);
    }

    /// Replaces the whole tail with `batch`: a subscriber whose cursor is before it reads
    /// storage up to it ([`TailRead::Behind`]).
    fn restart(&self, batch: Arc<LiveBatch>) {
        let end = batch.end();
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.batches.clear();
            tail.bytes = batch
                .entries
                .iter()
                .map(RemoteEntry::encoded_len_bound)
                .sum();
            tail.batches.push_back(batch);
        }
        self.next.send_replace(end);
    }

    /// The log's next sequence as far as the tail knows.
    pub fn next(&self) -> u64 {
        *self.next.borrow()
    }

    /// Wakes up when the log's next sequence changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }

    pub fn read_from(&self, cursor: u64) -> TailRead {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        match tail.batches.front() {
            Some(first) if first.first() > cursor => TailRead::Behind {
                tail_start: first.first(),
            },
            _ => TailRead::Batches(
                tail.batches
                    .iter()
                    .filter(|b| b.end() > cursor)
                    .cloned()
                    .collect(),
            ),
        }
    }
}
