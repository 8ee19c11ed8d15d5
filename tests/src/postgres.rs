//! A throwaway PostgreSQL server for the scale-out suites: `initdb` in a temporary directory,
//! a free loopback port, run as a non-root user (`postgres`, Debian's, or `WHARF_PG_USER`) when
//! the tests run as root, stopped when dropped. Nothing is mocked and nothing is skipped: if
//! the server cannot start, the test fails with the reason (`scripts/prereqs` installs
//! Debian's `postgresql`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// One PostgreSQL cluster of its own.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Who runs the server (when the tests run as root).
    user: Option<String>,
    pub port: u16,
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The superuser the cluster is created with (trust authentication, loopback only).
const SUPERUSER: &str = "wharf";

impl PgServer {
    /// initdb and start a cluster; fails with the reason if PostgreSQL is not installed or does
    /// not start.
    pub fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let user = if is_root() {
            Some(std::env::var("WHARF_PG_USER").unwrap_or_else(|_| "postgres".to_owned()))
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("wharf-pg-").tempdir()?;
        if let Some(user) = &user {
            let status = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .context("chown")?;
            if !status.success() {
                bail!(
                    "cannot give {} to user {user:?} (does it exist? scripts/prereqs)",
                    dir.path().display()
                );
            }
        }
        let mut server = Self {
            dir,
            bin,
            user,
            port: 0,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        // A port that was free a moment ago; another process may take it first, so retry.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 \
             -c shared_buffers=64MB",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &self.dir.path().join("server.log").to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
    }

    /// Stops the server (`fast`: open transactions are rolled back, committed ones kept;
    /// `immediate`: a crash).
    pub fn stop(&self, mode: &str) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        )
    }

    /// Starts a stopped server again, on the same port.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database; its URL.
    pub async fn database(&self) -> Result<String> {
        let name = format!("wharf_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
        let admin = sqlx::PgPool::connect(&self.url("postgres")).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(self.url(&name))
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `WHARF_PG_BIN`, or the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("WHARF_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "PostgreSQL is not installed ({} is missing): run scripts/prereqs, or set \
                 WHARF_PG_BIN to the directory holding initdb and pg_ctl",
                root.display()
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin: run scripts/prereqs")
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
