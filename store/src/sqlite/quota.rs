//! What a tenant stores, for quotas: loaded once, then kept up to date by commits, snapshots
//! and retention.

use super::Writer;
use crate::error::StoreError;
use crate::model::Totals;

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Writer {
    /// What the tenant stores (loaded once, then kept up to date by commits and retention).
    pub fn totals(&mut self) -> Result<Totals, StoreError> {
        if let Some(t) = self.totals {
            return Ok(t);
        }
        let (bytes, logs): (i64, i64) = self.conn.query_row(
            "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM logs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let snapshots: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(length(data)), 0) FROM snapshots",
            [],
            |r| r.get(0),
        )?;
        let t = Totals {
            bytes: to_u64(bytes) + to_u64(snapshots),
            logs: to_u64(logs),
        };
        self.totals = Some(t);
        Ok(t)
    }
}
