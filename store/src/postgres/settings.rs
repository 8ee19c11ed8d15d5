//! A tenant's settings as an administrator stored them; a change rings every relay with the
//! tenant open.

use super::{Writer, SETTINGS_CHANNEL};
use crate::error::StoreError;

impl Writer {
    pub async fn settings(&mut self) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT settings FROM tenants WHERE id = $1")
                .bind(&*self.tenant)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Replaces the stored settings, and tells every relay (this one included) to reload them.
    pub async fn set_settings(&mut self, json: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE tenants SET settings = $2 WHERE id = $1")
            .bind(&*self.tenant)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SETTINGS_CHANNEL)
            .bind(&*self.tenant)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
