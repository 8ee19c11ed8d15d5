//! The export format both stores share (`wharf-export`, NDJSON, docs/operations.md): a
//! header line, one line per entry (binary fields in base64), an end line whose absence means
//! the export was cut short; and [`ImportCheck`], the checks every import makes line by line,
//! whichever store it goes into.

use std::io::Write;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::LogState;

/// An export on its way: chunks of NDJSON, ending with an error if it failed part way (the
/// stream then lacks its end line, so no import accepts it).
pub type ExportStream = tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>;

/// The export format's name and version (the first line of every export).
pub const EXPORT_FORMAT: &str = "wharf-export";
pub const EXPORT_VERSION: u32 = 1;

/// The export's first line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportHeader {
    pub format: String,
    pub version: u32,
    pub tenant: String,
    pub remote_id: Uuid,
    pub logs: Vec<LogState>,
}

/// One entry: a line per entry, in log order then sequence order. Binary fields in base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportEntry {
    pub log: String,
    pub seq: u64,
    pub entry_id: String,
    pub iv: String,
    pub ciphertext: String,
}

/// The export's last line: its absence means the export was cut short.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportEnd {
    pub end: bool,
    pub entries: u64,
}

/// One NDJSON line.
pub(crate) fn write_line(out: &mut dyn Write, value: &impl Serialize) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| ExportError::Io(e.into()))?;
    out.write_all(b"\n").map_err(ExportError::Io)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export failed: {0}")]
    Io(std::io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading the import failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    /// The tenant has data, and the import was not asked to replace it.
    #[error("{0}")]
    Exists(String),
}

/// What an import brought in.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Imported {
    pub remote_id: Uuid,
    pub logs: usize,
    pub entries: u64,
}

/// One entry of an import, checked and decoded.
#[derive(Debug)]
pub struct CheckedEntry {
    pub log: String,
    pub seq: i64,
    pub entry_id: Vec<u8>,
    pub iv: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Reads an export line by line and checks it, whichever store it goes into: its header,
/// dense sequences per log from where the log's history starts, the end line, and that every
/// log has the entries its header announces.
#[derive(Debug)]
pub struct ImportCheck {
    header: ExportHeader,
    /// Each log's sequence due next.
    due: std::collections::HashMap<String, u64>,
    line: u64,
    entries: u64,
    ended: bool,
}

impl ImportCheck {
    /// Checks the export's first line (`None`: the input is empty).
    pub fn start(first: Option<&str>) -> Result<Self, ImportError> {
        let invalid = |reason: String| ImportError::Invalid { line: 1, reason };
        let first = first.ok_or_else(|| invalid("empty input".into()))?;
        let header: ExportHeader = serde_json::from_str(first)
            .map_err(|e| invalid(format!("not an export header: {e}")))?;
        if header.format != EXPORT_FORMAT || header.version != EXPORT_VERSION {
            return Err(invalid(format!(
                "format {:?} version {}; this relay reads {EXPORT_FORMAT:?} version {EXPORT_VERSION}",
                header.format, header.version
            )));
        }
        let mut due = std::collections::HashMap::with_capacity(header.logs.len());
        for log in &header.logs {
            if i64::try_from(log.first_sequence.saturating_add(log.entries)).is_err() {
                return Err(invalid(format!(
                    "log {:?}: sequences too large",
                    log.public_key
                )));
            }
            if due
                .insert(log.public_key.clone(), log.first_sequence)
                .is_some()
            {
                return Err(invalid(format!(
                    "log {:?} is listed twice in the header",
                    log.public_key
                )));
            }
        }
        Ok(Self {
            header,
            due,
            line: 1,
            entries: 0,
            ended: false,
        })
    }

    pub fn header(&self) -> &ExportHeader {
        &self.header
    }

    /// An error about the line read last.
    pub fn invalid(&self, reason: String) -> ImportError {
        ImportError::Invalid {
            line: self.line,
            reason,
        }
    }

    /// Checks the next line: an entry, or `None` for a blank line and the end line.
    pub fn line(&mut self, text: &str) -> Result<Option<CheckedEntry>, ImportError> {
        self.line += 1;
        if text.trim().is_empty() {
            return Ok(None);
        }
        if self.ended {
            return Err(self.invalid("data after the end line".into()));
        }
        if let Ok(end) = serde_json::from_str::<ExportEnd>(text) {
            if !end.end || end.entries != self.entries {
                return Err(self.invalid(format!(
                    "the end line counts {} entries; {} were read",
                    end.entries, self.entries
                )));
            }
            self.ended = true;
            return Ok(None);
        }
        let e: ExportEntry = serde_json::from_str(text)
            .map_err(|err| self.invalid(format!("not an entry: {err}")))?;
        let Some(due) = self.due.get(&e.log).copied() else {
            return Err(self.invalid(format!("log {:?} is not in the header", e.log)));
        };
        if e.seq != due {
            return Err(self.invalid(format!(
                "log {:?}: sequence {} where {due} was due",
                e.log, e.seq
            )));
        }
        let blob = |field: &str, value: &str| {
            B64.decode(value)
                .map_err(|err| self.invalid(format!("{field} is not base64: {err}")))
        };
        let entry = CheckedEntry {
            seq: i64::try_from(e.seq).map_err(|_| self.invalid("sequence too large".into()))?,
            entry_id: blob("entry_id", &e.entry_id)?,
            iv: blob("iv", &e.iv)?,
            ciphertext: blob("ciphertext", &e.ciphertext)?,
            log: e.log,
        };
        self.due.insert(entry.log.clone(), due + 1);
        self.entries += 1;
        Ok(Some(entry))
    }

    /// After the last line: the export ended, and every log got what its header announced.
    pub fn finish(self) -> Result<Imported, ImportError> {
        if !self.ended {
            return Err(self.invalid("no end line: the export was cut short".into()));
        }
        for log in &self.header.logs {
            let due = self.due.get(&log.public_key).copied();
            let got = due.unwrap_or(log.first_sequence) - log.first_sequence;
            if got != log.entries {
                return Err(self.invalid(format!(
                    "log {:?}: the header announces {} entries; {got} were read",
                    log.public_key, log.entries
                )));
            }
        }
        Ok(Imported {
            remote_id: self.header.remote_id,
            logs: self.header.logs.len(),
            entries: self.entries,
        })
    }
}
