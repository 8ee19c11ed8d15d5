//! A throwaway PostgreSQL server for the scale-out suites, made by `scripts/postgres` (initdb
//! in a temporary directory, a free loopback port, a non-root user when the tests run as root)
//! and stopped when dropped. Nothing is mocked and nothing is skipped: if the server cannot
//! start, the test fails with the reason (`scripts/prereqs` installs Debian's `postgresql`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// One PostgreSQL cluster of its own.
#[derive(Debug)]
pub struct PgServer {
    /// Holds the cluster's directory (`pg/`); traversable by the user that runs it.
    dir: tempfile::TempDir,
    /// `postgres://user@host:port`, without a database.
    server: String,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// A cluster, started; fails with the reason if PostgreSQL is missing or does not start.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("wharf-pg-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let out = script("start", &dir, &[])?;
        // The script prints the URL of its database `wharf`.
        let url = String::from_utf8(out)?;
        let server = url
            .trim()
            .rsplit_once('/')
            .map(|(server, _)| server.to_owned())
            .context("scripts/postgres printed no URL")?;
        Ok(Self { dir, server })
    }

    /// Stops the server: `fast` (open transactions are rolled back, committed ones kept) or
    /// `immediate` (a crash).
    pub fn stop(&self, mode: &str) -> Result<()> {
        script("stop", &self.dir, &[mode]).map(drop)
    }

    /// Starts a stopped server again, on the same port.
    pub fn start_again(&self) -> Result<()> {
        script("resume", &self.dir, &[]).map(drop)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.server)
    }

    /// A new empty database; its URL.
    pub async fn database(&self) -> Result<String> {
        let name = format!("wharf_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let admin = sqlx::PgPool::connect(&self.url("wharf")).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(self.url(&name))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

/// Runs `scripts/postgres CMD DIR/pg ARGS…`; its stdout, or why it failed.
fn script(cmd: &str, dir: &tempfile::TempDir, args: &[&str]) -> Result<Vec<u8>> {
    let program = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres");
    let out = Command::new(&program)
        .arg(cmd)
        .arg(dir.path().join("pg"))
        .args(args)
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "scripts/postgres {cmd} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
