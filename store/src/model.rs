//! The types the storage boundary speaks in: what a commit takes and gives back, what
//! retention and snapshots do, webhook outbox rows, and how the admin API sees a tenant.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::EncryptedEntry;

/// What a tenant stores: ciphertext and snapshot bytes, and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: u64,
    pub logs: u64,
}

/// One `WriteEntries` handed to a group commit.
#[derive(Debug)]
pub struct WriteReq {
    pub public_key: String,
    pub iv: Bytes,
    pub entries: Vec<EncryptedEntry>,
    /// The entries are one Effect v4 batch, stored whole or not at all: when the log holds
    /// every entry id, nothing is stored and each gets its original sequence; otherwise every
    /// entry gets a new one (an id the log already holds is stored under [`repeat_id`], as
    /// Effect's own server stores a partly known batch again).
    pub batch: bool,
}

/// The entry id a batch's entry is stored under when the log already holds its own id: unique
/// per log and sequence (`wharf-repeat` and the sequence), and 20 bytes long, so never a v4
/// client's id (those are 16 bytes, and v3 clients cannot write v4 logs).
pub fn repeat_id(sequence: u64) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..12].copy_from_slice(b"wharf-repeat");
    id[12..].copy_from_slice(&sequence.to_be_bytes());
    id
}

/// What a group commit did with one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed: one sequence per submitted entry (a duplicate gets its original one), which
    /// entries were new (indexes into the write), and whether its 12-byte iv was already
    /// stored in the log before this write.
    Written {
        sequences: Vec<u64>,
        new: Vec<usize>,
        iv_reused: bool,
    },
    /// Not committed: its 12-byte iv is already stored in the log and `strict_iv` refuses that.
    IvRefused,
    /// Not committed, checked before anything was stored: it would take the tenant over a
    /// quota.
    OverQuota(String),
}

/// What a group commit checks besides the data itself.
#[derive(Debug, Clone, Default)]
pub struct CommitRules {
    /// Refuse a write whose 12-byte iv the log already holds.
    pub strict_iv: bool,
    /// Quota: ciphertext and snapshot bytes the tenant may store.
    pub max_bytes: Option<u64>,
    /// Quota: logs the tenant may hold.
    pub max_logs: Option<u64>,
    /// Webhook endpoints (their URLs) notified of new entries, through the outbox.
    pub webhooks: Vec<String>,
    /// Commit time (Unix ms), stored with each entry for age-based retention.
    pub now_ms: i64,
}

impl CommitRules {
    pub(crate) fn quota_applies(&self) -> bool {
        self.max_bytes.is_some() || self.max_logs.is_some()
    }

    /// Why a write of `size` bytes (to a new log when `new_log`) is over quota, if it is.
    pub(crate) fn over_quota(&self, totals: &Totals, new_log: bool, size: u64) -> Option<String> {
        if let Some(max) = self.max_logs {
            if new_log && totals.logs >= max {
                return Some(format!(
                    "quota exceeded: the tenant holds {} logs, its limit",
                    totals.logs
                ));
            }
        }
        if let Some(max) = self.max_bytes {
            if size > 0 && totals.bytes.saturating_add(size) > max {
                return Some(format!(
                    "quota exceeded: the tenant stores {} bytes; {size} more would pass its limit of {max}",
                    totals.bytes
                ));
            }
        }
        None
    }
}

/// A retention policy as the store applies it (`None`: no such limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Entries committed longer ago than this (ms) are deleted.
    pub max_age_ms: Option<i64>,
    /// Delete everything the newest snapshot covers.
    pub after_snapshot: bool,
}

impl RetentionLimits {
    pub fn is_off(&self) -> bool {
        *self == RetentionLimits::default()
    }
}

/// What one retention step did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetainReport {
    pub entries_deleted: u64,
    pub bytes_deleted: u64,
    /// Logs whose history now starts later, with where it starts.
    pub truncated: Vec<(String, u64)>,
    /// The step stopped at its budget: run another.
    pub more: bool,
}

/// One retention step's budget of entries, and what the step did: the bookkeeping both
/// stores' loops over a tenant's logs share.
#[derive(Debug)]
pub(crate) struct RetainBudget {
    left: u64,
    report: RetainReport,
}

impl RetainBudget {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            left: budget.max(1),
            report: RetainReport::default(),
        }
    }

    /// How far this step may delete in a log whose history starts at `first` (exclusive);
    /// `None` when the budget is spent (another step does the rest).
    pub(crate) fn window(&mut self, first: u64) -> Option<u64> {
        if self.left == 0 {
            self.report.more = true;
            return None;
        }
        Some(first.saturating_add(self.left))
    }

    /// `public_key`'s history now starts at `end` instead of `first` (the policy wanted
    /// `target`): `deleted` entries and `freed` ciphertext bytes went.
    pub(crate) fn trimmed(
        &mut self,
        public_key: String,
        (first, end, target): (u64, u64, u64),
        deleted: u64,
        freed: u64,
    ) {
        self.report.entries_deleted += deleted;
        self.report.bytes_deleted += freed;
        self.report.truncated.push((public_key, end));
        self.left = self.left.saturating_sub(deleted.max(end - first));
        if end < target {
            self.report.more = true;
        }
    }

    pub(crate) fn report(&self) -> &RetainReport {
        &self.report
    }

    /// The step's report; a spent budget means more may be due.
    pub(crate) fn finish(mut self) -> RetainReport {
        if self.left == 0 {
            self.report.more = true;
        }
        self.report
    }
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefusal {
    #[error("snapshot refused: it covers sequence {sequence}, but log {log:?} has only reached {next} entries")]
    NotReached {
        log: String,
        sequence: u64,
        next: u64,
    },
    #[error("snapshot refused: {0}")]
    Quota(String),
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub sequence: u64,
    pub iv: Bytes,
    pub data: Bytes,
}

/// A pending webhook notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub endpoint: String,
    pub log_id: i64,
    pub public_key: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub count: u64,
    pub attempts: u32,
    pub due_at: i64,
}

/// What storing a snapshot of `size` bytes covering `sequence` adds to what a log stores, when
/// the log holds the snapshots `kept` (sequence, bytes) and keeps the newest `keep`: the new
/// one, less the one it replaces and those it pushes out (so a tenant at its quota can still
/// move its snapshot on). Both stores check quotas with it.
pub(crate) fn snapshot_growth(
    mut kept: Vec<(u64, u64)>,
    sequence: u64,
    size: u64,
    keep: usize,
) -> u64 {
    let before: u64 = kept.iter().map(|(_, n)| n).sum();
    kept.retain(|(seq, _)| *seq != sequence);
    kept.push((sequence, size));
    kept.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    kept.truncate(keep.max(1));
    let after: u64 = kept.iter().map(|(_, n)| n).sum();
    after.saturating_sub(before)
}

/// One log of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogState {
    pub public_key: String,
    pub entries: u64,
    pub next_sequence: u64,
    /// Where the log's history starts (retention deleted everything below).
    #[serde(default)]
    pub first_sequence: u64,
}

/// One tenant as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSummary {
    pub tenant: String,
    /// What the tenant occupies: its database file and WAL (SQLite), or the ciphertext and
    /// snapshot bytes it holds (Postgres).
    pub size_bytes: u64,
    pub logs: usize,
    pub entries: u64,
    /// Its last write (the files' modification time, or its newest entry's commit time),
    /// milliseconds since the epoch.
    pub last_write_unix_ms: Option<u64>,
}

/// One tenant, described in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantDetail {
    pub summary: TenantSummary,
    pub remote_id: Uuid,
    /// Its logs, by public key.
    pub logs: Vec<LogState>,
}
