//! The background sync task: connect, subscribe every log from its cursor, upload the outbox,
//! apply what arrives, keep the connection alive, and reconnect with backoff when it drops.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngCore};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wharf_protocol::{
    ClientMsg, EncryptedEntry, Entry, Identity, JsNumber, ReadKey, RelayMsg, Suite, WriteEntries,
    WriteSnapshot,
};

use crate::connection::{ConnectOptions, Connection};
use crate::error::Error;
use crate::journal::{Journal, Received, RemoteId, StoredEntry, Undecryptable};

/// Where the client stands with its relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Opening a connection (`attempt` counts failures since the last healthy connection).
    Connecting { attempt: u32 },
    /// Connected and reading the backlog; `behind` entries remain (summed over logs).
    CatchingUp { behind: u64 },
    /// Connected, every log caught up and its backlog committed to the journal; new entries
    /// arrive as they are written.
    Live,
    /// Not connected; the next attempt is in `retry_in`.
    Offline { reason: String, retry_in: Duration },
    /// The relay refused this client or the journal failed: needs attention. `retry_in` is
    /// `None` when the client has stopped syncing.
    Error {
        message: String,
        retry_in: Option<Duration>,
    },
    /// The relay had deleted `log`'s history `from..to` (a retention policy) and no snapshot
    /// covered it: those entries will never arrive. Reported once, as it happens; every gap is
    /// also kept in the journal ([`crate::Client::truncations`]).
    Truncated { log: String, from: u64, to: u64 },
    /// [`Client::close`] was called.
    Closed,
}

/// A request for a snapshot of a log, served by the sync task while connected.
#[derive(Debug)]
pub(crate) struct SnapshotRequest {
    pub(crate) log: String,
    pub(crate) reply: oneshot::Sender<Result<u64, Error>>,
}

/// The key a client holds for a log.
#[derive(Clone, Debug)]
pub(crate) enum LogKey {
    /// Full identity: reads, appends and uploads.
    Writer(Identity),
    /// A read key (from a grant): reads only.
    Reader(ReadKey),
}

impl LogKey {
    pub(crate) fn read_key(&self) -> &ReadKey {
        match self {
            LogKey::Writer(id) => id.read_key(),
            LogKey::Reader(rk) => rk,
        }
    }
}

/// Tunables. The defaults suit an agent on a LAN or the internet.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub connect: ConnectOptions,
    /// Ping the relay this often...
    pub ping_interval: Duration,
    /// ...and reconnect when a Pong is this late.
    pub ping_timeout: Duration,
    /// Reconnect delays: full jitter over `min(backoff_max, backoff_base · 2^attempt)`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    pub healthy_after: Duration,
    /// Entries per `WriteEntries` (native suite; Effect-suite logs send one per write).
    pub max_batch_entries: usize,
    /// Writes awaiting their Ack at once.
    pub max_in_flight: usize,
    /// A log this client has never read starts from the relay's newest snapshot of it (its
    /// view is the same as from the full history; its entry stream starts with the
    /// snapshot's records instead of every entry ever written).
    pub open_from_snapshot: bool,
    /// Publish a snapshot of each writable log every this many entries (per connection).
    pub snapshot_every: Option<u64>,
}

impl SyncConfig {
    pub(crate) fn new(connect: ConnectOptions) -> Self {
        SyncConfig {
            connect,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            healthy_after: Duration::from_secs(5),
            max_batch_entries: 500,
            max_in_flight: 4,
            open_from_snapshot: true,
            snapshot_every: None,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) config: SyncConfig,
    pub(crate) journal: Journal,
    pub(crate) logs: Vec<(String, LogKey)>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) remote: watch::Sender<Option<RemoteId>>,
    pub(crate) snapshots: tokio::sync::Mutex<mpsc::Receiver<SnapshotRequest>>,
    /// Logs whose snapshot did not open: read from their entries from now on.
    pub(crate) no_snapshot: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Shared {
    pub(crate) fn set_status(&self, status: Status) {
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status;
                true
            }
        });
    }
}

/// Full-jitter exponential backoff: a uniform delay in `[0, min(max, base·2^attempt)]`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max);
    let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

pub(crate) async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut attempt: u32 = 0;
    loop {
        shared.set_status(Status::Connecting { attempt });
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = session(&shared, &cancel) => r,
        };
        let healthy = started.elapsed() >= shared.config.healthy_after;
        attempt = if healthy {
            1
        } else {
            attempt.saturating_add(1)
        };
        let error = match result {
            Ok(()) => break, // cancelled from inside
            Err(e) => e,
        };

        if let Error::JournalFailed(_) | Error::Closed = error {
            shared.set_status(Status::Error {
                message: error.to_string(),
                retry_in: None,
            });
            tracing::error!(error = %error, "sync stopped");
            return;
        }
        let delay = backoff(
            shared.config.backoff_base,
            shared.config.backoff_max,
            attempt,
        );
        tracing::warn!(error = %error, retry_in = ?delay, "relay connection lost");
        shared.set_status(if !error.is_transient() {
            Status::Error {
                message: error.to_string(),
                retry_in: Some(delay),
            }
        } else {
            Status::Offline {
                reason: error.to_string(),
                retry_in: delay,
            }
        });
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    shared.set_status(Status::Closed);
}

struct LogState {
    key: LogKey,
    /// Next relay sequence expected on this connection.
    cursor: u64,
    head: Option<u64>,
    caught_up: bool,
    /// Highest local_seq handed to the relay on this connection.
    sent_upto: i64,
    /// Where the last snapshot this connection published (or opened from) stands.
    snapshot_at: u64,
    /// One past the highest sequence an Ack gave this client's own entries.
    acked_end: u64,
    /// This subscription asked for a snapshot (rather than being sent one because the
    /// history it asked for is gone).
    asked_snapshot: bool,
    /// Sequences the relay gave this connection's own writes at or above `cursor`: they never
    /// come back in `Changes` (the writer gets the Ack instead).
    own_acked: std::collections::BTreeSet<u64>,
}

struct InFlight {
    id: u32,
    log: String,
    ids: Vec<Vec<u8>>,
    /// Contents and `own` flags, handed to the journal with the Ack.
    entries: Vec<(Entry, bool)>,
}

/// Entries per write and writes in flight for an identity's suite.
fn limits(cfg: &SyncConfig, identity: &Identity) -> (usize, usize) {
    match identity.suite() {
        Suite::XChaCha20Poly1305 => (cfg.max_batch_entries.max(1), cfg.max_in_flight.max(1)),
        // One entry per write: Effect's suite would reuse its iv across a batch.
        Suite::Aes256Gcm => (1, cfg.max_in_flight.max(1) * 16),
    }
}

/// Encrypts `page` under a fresh iv and queues one WriteEntries (the caller flushes).
async fn send_write(
    conn: &mut Connection,
    identity: &Identity,
    log: &str,
    page: &[&StoredEntry],
    next_id: &mut u32,
) -> Result<InFlight, Error> {
    let suite = identity.suite();
    let mut iv = vec![0u8; suite.iv_len()];
    rand::thread_rng().fill_bytes(&mut iv);
    let rk = identity.read_key();
    let mut entries = Vec::with_capacity(page.len());
    for e in page {
        let sealed = rk.seal(suite, &iv, &e.entry.id, &e.entry.encode())?;
        entries.push(EncryptedEntry {
            entry_id: Bytes::copy_from_slice(&e.entry.id),
            encrypted_entry: Bytes::from(sealed),
        });
    }
    let id = *next_id;
    *next_id = next_id.wrapping_add(1) % (1 << 31);
    conn.feed(&ClientMsg::WriteEntries(WriteEntries {
        public_key: log.to_owned(),
        id: JsNumber(f64::from(id)),
        iv: Bytes::from(iv),
        entries,
    }))
    .await?;
    Ok(InFlight {
        id,
        log: log.to_owned(),
        ids: page.iter().map(|e| e.entry.id.to_vec()).collect(),
        entries: page.iter().map(|e| (e.entry.clone(), e.own)).collect(),
    })
}

async fn session(shared: &Shared, cancel: &CancellationToken) -> Result<(), Error> {
    let cfg = &shared.config;
    let journal = &shared.journal;
    let mut conn = Connection::open(&cfg.connect).await?;
    let remote = conn.remote_id().to_vec();
    shared.remote.send_replace(Some(remote.clone()));
    tracing::info!(remote_id = %hex::encode(&remote), "connected");

    let mut snapshot_requests = shared.snapshots.lock().await;
    // Snapshots sent and not yet acknowledged: WriteSnapshot id → who asked (if anyone).
    let mut snapshots_in_flight: HashMap<u32, Option<oneshot::Sender<Result<u64, Error>>>> =
        HashMap::new();
    let mut logs: HashMap<String, LogState> = HashMap::new();
    for (name, key) in &shared.logs {
        let cursor = journal.cursor(&remote, name).await?;
        let asked_snapshot = cursor == 0
            && cfg.open_from_snapshot
            && conn.extension()
            && !shared
                .no_snapshot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(name);
        conn.feed(&ClientMsg::RequestChanges {
            public_key: name.clone(),
            start_sequence: cursor,
            snapshot: asked_snapshot,
        })
        .await?;
        logs.insert(
            name.clone(),
            LogState {
                key: key.clone(),
                cursor,
                head: None,
                caught_up: !conn.extension(),
                sent_upto: 0,
                snapshot_at: cursor,
                acked_end: cursor,
                asked_snapshot,
                own_acked: Default::default(),
            },
        );
    }
    conn.flush().await?;
    report_progress(shared, &logs);

    let mut progress = journal.progress();
    let mut appended_rx = journal.subscribe_appended();
    let mut db_mode = true; // read the outbox from the journal until it is drained
                            // Every own append up to here was sent or is known to be in flight.
    let mut handed_upto = 0i64;
    let mut seen_appended = -1i64;
    let mut fill = true; // something may be waiting for room in the pipeline
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut next_id: u32 = 0;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.ping_interval,
        cfg.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_id: u32 = 0;
    let mut awaiting_pong: Option<Instant> = None;

    loop {
        // Upload while there is room in the pipeline and something to send.
        let appended = progress.borrow_and_update().appended;
        if appended != seen_appended {
            seen_appended = appended;
            fill = true;
        }
        if fill {
            fill = false;
            let mut sent_any = false;
            // Fast path: batches the journal handed over as they committed.
            if !db_mode {
                loop {
                    let batch = match appended_rx.try_recv() {
                        Ok(batch) => batch,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Lagged(_)) => {
                            db_mode = true;
                            break;
                        }
                        Err(TryRecvError::Closed) => return Err(Error::Closed),
                    };
                    if !batch.handed_over {
                        db_mode = true;
                        break;
                    }
                    if let Some(last) = batch.entries.last() {
                        handed_upto = handed_upto.max(last.local_seq);
                    }
                    let Some(state) = logs.get_mut(&batch.log) else {
                        continue;
                    };
                    let LogKey::Writer(identity) = &state.key else {
                        continue;
                    };
                    let (per_write, window) = limits(cfg, identity);
                    let fresh: Vec<&StoredEntry> = batch
                        .entries
                        .iter()
                        .filter(|e| e.local_seq > state.sent_upto)
                        .collect();
                    let mut rest = fresh.as_slice();
                    while !rest.is_empty() && in_flight.len() < window {
                        let (page, tail) = rest.split_at(rest.len().min(per_write));
                        in_flight.push_back(
                            send_write(&mut conn, identity, &batch.log, page, &mut next_id).await?,
                        );
                        state.sent_upto = page[page.len() - 1].local_seq;
                        sent_any = true;
                        rest = tail;
                    }
                    if !rest.is_empty() {
                        db_mode = true; // the journal has the rest
                        break;
                    }
                }
            }
            // A watermark beyond what was handed over (a batch the channel dropped): the journal.
            if appended > handed_upto {
                db_mode = true;
            }
            if db_mode {
                let mut drained = true;
                'fill: for (name, state) in logs.iter_mut() {
                    let LogKey::Writer(identity) = &state.key else {
                        continue;
                    };
                    let (per_write, window) = limits(cfg, identity);
                    loop {
                        if in_flight.len() >= window {
                            drained = false;
                            break 'fill;
                        }
                        let page = journal
                            .outbox(&remote, name, state.sent_upto, per_write)
                            .await?;
                        let Some(last) = page.last() else { break };
                        state.sent_upto = last.local_seq;
                        let page: Vec<&StoredEntry> = page.iter().collect();
                        in_flight.push_back(
                            send_write(&mut conn, identity, name, &page, &mut next_id).await?,
                        );
                        sent_any = true;
                    }
                }
                // Everything committed so far is sent; later appends arrive on `appended_rx`
                // (subscribed before the first query, so nothing falls between).
                db_mode = !drained;
                if drained {
                    handed_upto = handed_upto.max(appended);
                }
            }
            if sent_any {
                conn.flush().await?;
            }
        }

        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                for name in logs.keys() {
                    let _ = conn.feed(&ClientMsg::StopChanges { public_key: name.clone() }).await;
                }
                let _ = conn.flush().await;
                conn.close().await;
                return Ok(());
            }
            msg = conn.recv() => {
                match msg? {
                    RelayMsg::Ack { id, sequence_numbers } => {
                        let pos = in_flight.iter().position(|w| f64::from(w.id) == id.0);
                        let Some(pos) = pos else {
                            tracing::debug!(id = id.0, "Ack for no write in flight; ignored");
                            continue;
                        };
                        let Some(write) = in_flight.remove(pos) else { continue };
                        if write.ids.len() != sequence_numbers.len() {
                            return Err(Error::Protocol(format!(
                                "Ack {} has {} sequence numbers for {} entries",
                                write.id,
                                sequence_numbers.len(),
                                write.ids.len()
                            )));
                        }
                        let top = sequence_numbers.iter().max().copied();
                        if let Some(state) = logs.get_mut(&write.log) {
                            let cursor = state.cursor;
                            state.own_acked.extend(sequence_numbers.iter().filter(|s| **s >= cursor));
                        }
                        let placed = write.ids.into_iter().zip(sequence_numbers).collect();
                        journal.acked(&remote, &write.log, placed, write.entries).await?;
                        fill = true; // room in the pipeline again
                        if let (Some(state), Some(top)) = (logs.get_mut(&write.log), top) {
                            state.acked_end = state.acked_end.max(top + 1);
                            if due_for_snapshot(cfg, state) {
                                state.snapshot_at = state.acked_end;
                                // The view includes this Ack once the journal has it.
                                journal.barrier().await?;
                                let id = next_id;
                                next_id = next_id.wrapping_add(1) % (1 << 31);
                                if let Err(e) = send_snapshot(&mut conn, journal, &remote, &write.log, state, id).await {
                                    tracing::warn!(log = %write.log, error = %e, "automatic snapshot skipped");
                                } else {
                                    snapshots_in_flight.insert(id, None);
                                }
                            }
                        }
                    }
                    RelayMsg::SnapshotAck { id, sequence } => {
                        let waiter = u32::try_from(id.0 as i64).ok().and_then(|id| snapshots_in_flight.remove(&id));
                        if let Some(Some(reply)) = waiter {
                            let _ = reply.send(Ok(sequence));
                        }
                        tracing::debug!(sequence, "snapshot stored");
                    }
                    RelayMsg::Snapshot { public_key, sequence, iv, data } => {
                        let Some(state) = logs.get_mut(&public_key) else { continue };
                        if sequence < state.cursor {
                            continue; // covers nothing new
                        }
                        match state.key.read_key().open_snapshot(sequence, &iv, &data) {
                            Ok(content) => {
                                tracing::info!(log = %public_key, sequence, records = content.entries.len(), "opening from a snapshot");
                                journal.snapshot(&remote, &public_key, content).await?;
                            }
                            Err(e) if state.asked_snapshot => {
                                // Asked for, and unusable: reconnect and read the history
                                // itself (the relay still sends a snapshot if it is gone).
                                tracing::warn!(log = %public_key, sequence, error = %e, "snapshot does not open; reading the entries instead");
                                shared
                                    .no_snapshot
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(public_key.clone());
                                return Err(Error::Snapshot(e));
                            }
                            Err(e) => {
                                // Sent because the history is gone, and unusable: the entries it
                                // covers are not coming, the same as a truncation.
                                tracing::warn!(log = %public_key, sequence, error = %e, "snapshot does not open; its history is missing here");
                                journal.truncated(&remote, &public_key, sequence + 1).await?;
                                shared.set_status(Status::Truncated { log: public_key.clone(), from: state.cursor, to: sequence + 1 });
                            }
                        }
                        state.cursor = sequence + 1;
                        state.snapshot_at = state.cursor;
                    }
                    RelayMsg::HistoryStarts { public_key, first_sequence } => {
                        let Some(state) = logs.get_mut(&public_key) else { continue };
                        if first_sequence > state.cursor {
                            tracing::warn!(log = %public_key, from = state.cursor, to = first_sequence, "the relay deleted history this client had not read");
                            journal.truncated(&remote, &public_key, first_sequence).await?;
                            shared.set_status(Status::Truncated { log: public_key.clone(), from: state.cursor, to: first_sequence });
                            state.cursor = first_sequence;
                        }
                    }
                    RelayMsg::Changes { public_key, entries } => {

                        let Some(state) = logs.get_mut(&public_key) else {
                            return Err(Error::Protocol(format!("Changes for {public_key:?}, which this client never asked for")));
                        };
                        let rk = state.key.read_key();
                        let mut received = Vec::with_capacity(entries.len());
                        let writing = in_flight.iter().any(|w| w.log == public_key);
                        for e in entries {
                            // This connection's own entries are acked, not sent back: step over
                            // them.
                            while state.own_acked.remove(&state.cursor) {
                                state.cursor += 1;
                            }
                            if e.sequence < state.cursor {
                                continue; // already applied
                            }
                            // A gap is only allowed where a write of ours is still waiting for
                            // its Ack (the journal applies in sequence order either way).
                            if e.sequence != state.cursor && !writing {
                                return Err(Error::Protocol(format!(
                                    "{public_key}: expected sequence {}, got {}",
                                    state.cursor, e.sequence
                                )));
                            }
                            let cursor = e.sequence + 1;
                            state.own_acked.retain(|s| *s >= cursor);
                            state.cursor = e.sequence + 1;
                            let content = rk.open(&e.iv, &e.entry_id, &e.encrypted_entry).map_err(|err| {
                                tracing::warn!(log = %public_key, sequence = e.sequence, error = %err, "entry does not decrypt; kept aside");
                                Undecryptable {
                                    iv: e.iv.to_vec(),
                                    ciphertext: e.encrypted_entry.to_vec(),
                                    error: err.to_string(),
                                }
                            });
                            received.push(Received { sequence: e.sequence, entry_id: e.entry_id.to_vec(), content });
                        }
                        if !received.is_empty() {
                            journal.received(&remote, &public_key, received).await?;
                        }
                        report_progress(shared, &logs);
                    }
                    RelayMsg::Head { public_key, next_sequence } => {
                        if let Some(state) = logs.get_mut(&public_key) {
                            state.head = Some(next_sequence);
                        }
                        report_progress(shared, &logs);
                    }
                    RelayMsg::CaughtUp { public_key, .. } => {
                        if let Some(state) = logs.get_mut(&public_key) {
                            state.caught_up = true;
                        }
                        if logs.values().all(|s| s.caught_up) {
                            // `Live` promises the backlog is in the journal (a view or a
                            // snapshot read right after sees it), not only received.
                            journal.barrier().await?;
                        }
                        report_progress(shared, &logs);
                    }
                    RelayMsg::Pong { id } => {
                        if f64::from(ping_id) != id.0 {
                            return Err(Error::Protocol(format!("Pong {} for Ping {ping_id}", id.0)));
                        }
                        awaiting_pong = None;
                    }
                    RelayMsg::Hello { .. } | RelayMsg::Chunked(_) | RelayMsg::Error { .. } => {}
                }
            }
            Some(request) = snapshot_requests.recv() => {
                let SnapshotRequest { log, reply } = request;
                let Some(state) = logs.get_mut(&log) else {
                    let _ = reply.send(Err(Error::UnknownLog(log)));
                    continue;
                };
                if !conn.extension() {
                    let _ = reply.send(Err(Error::Protocol("this relay does not speak wharf.v1, which snapshots need".into())));
                    continue;
                }
                // Everything received so far is in the journal before the view is read.
                journal.barrier().await?;
                let id = next_id;
                next_id = next_id.wrapping_add(1) % (1 << 31);
                match send_snapshot(&mut conn, journal, &remote, &log, state, id).await {
                    Ok(()) => {
                        state.snapshot_at = state.cursor;
                        snapshots_in_flight.insert(id, Some(reply));
                    }
                    Err(e @ (Error::Io(_) | Error::Crypto(_) | Error::Snapshot(_))) => {
                        let _ = reply.send(Err(e));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Disconnected(e.to_string())));
                        return Err(e);
                    }
                }
            }
            _ = ping.tick() => {
                if let Some(since) = awaiting_pong {
                    if since.elapsed() >= cfg.ping_timeout {
                        return Err(Error::Timeout(format!("no Pong in {:?}", cfg.ping_timeout)));
                    }
                } else {
                    ping_id = ping_id.wrapping_add(1) % (1 << 31);
                    conn.send(&ClientMsg::Ping { id: JsNumber(f64::from(ping_id)) }).await?;
                    awaiting_pong = Some(Instant::now());
                }
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err(Error::Closed);
                }
            }
        }
    }
}

fn due_for_snapshot(cfg: &SyncConfig, state: &LogState) -> bool {
    matches!(state.key, LogKey::Writer(_))
        && cfg.snapshot_every.is_some_and(|every| {
            every > 0 && state.cursor.max(state.acked_end) >= state.snapshot_at + every
        })
}

/// Seals the journal's view of `log` (as applied from `remote`) and sends it as a snapshot.
async fn send_snapshot(
    conn: &mut Connection,
    journal: &Journal,
    remote: &[u8],
    log: &str,
    state: &LogState,
    id: u32,
) -> Result<(), Error> {
    let content = journal
        .snapshot_content(remote, log)
        .await?
        .ok_or_else(|| {
            Error::Io(format!(
                "nothing of log {log:?} has been read from this relay yet"
            ))
        })?;
    let mut iv = [0u8; wharf_protocol::snapshot::SNAPSHOT_IV_LEN];
    rand::thread_rng().fill_bytes(&mut iv);
    let data = state.key.read_key().seal_snapshot(&iv, &content)?;
    conn.send(&ClientMsg::WriteSnapshot(WriteSnapshot {
        public_key: log.to_owned(),
        id: JsNumber(f64::from(id)),
        sequence: content.sequence,
        iv: Bytes::copy_from_slice(&iv),
        data: Bytes::from(data),
    }))
    .await
}

fn report_progress(shared: &Shared, logs: &HashMap<String, LogState>) {
    if logs.values().all(|s| s.caught_up) {
        shared.set_status(Status::Live);
        return;
    }
    let behind = logs
        .values()
        .filter(|s| !s.caught_up)
        .map(|s| s.head.map_or(0, |h| h.saturating_sub(s.cursor)))
        .sum();
    shared.set_status(Status::CatchingUp { behind });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..64 {
            let d = backoff(base, max, attempt);
            let ceiling = (base * 2u32.saturating_pow(attempt.min(20))).min(max);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        // Full jitter: over many draws at a high attempt, some land near zero and some near max.
        let draws: Vec<Duration> = (0..200).map(|_| backoff(base, max, 10)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(4)));
    }
}
