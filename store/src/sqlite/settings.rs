//! A tenant's settings as an administrator stored them (JSON in `meta`).

use rusqlite::OptionalExtension;

use super::Writer;
use crate::error::StoreError;

impl Writer {
    /// The tenant's settings as an administrator stored them (JSON), if any.
    pub fn settings(&self) -> Result<Option<String>, StoreError> {
        let raw: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'settings'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(raw.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn set_settings(&mut self, json: Option<&str>) -> Result<(), StoreError> {
        match json {
            Some(json) => self.conn.execute(
                "INSERT INTO meta (key, value) VALUES ('settings', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [json.as_bytes()],
            )?,
            None => self
                .conn
                .execute("DELETE FROM meta WHERE key = 'settings'", [])?,
        };
        Ok(())
    }
}
