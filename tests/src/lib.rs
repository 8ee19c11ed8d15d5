//! Harness for the end-to-end suites: a real relay on `127.0.0.1:0` (in-process or as a child
//! process) and a raw protocol client over real WebSockets.

pub mod postgres;
pub mod proxy;
pub mod v4;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::{
    ClientMsg, EncryptedEntry, Inbound, JsNumber, ReassemblerLimits, RelayMsg, RemoteEntry,
    WriteEntries,
};
use wharf_relay::auth::token::{Action, Audience, Claims, RelayKey};
use wharf_relay::auth::unix_now;
use wharf_relay::config::AuthMode;
use wharf_relay::{Config, Relay};

/// How long any single wait in a test may take before the test fails (never a sync point).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A relay served in this process on `127.0.0.1:0`.
#[allow(missing_debug_implementations)]
pub struct TestRelay {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRelay {
    /// A relay with default settings and a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data: dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        let mut relay = Self::start_config(config).await;
        relay._dir = Some(dir);
        relay
    }

    /// A relay on an existing configuration (its data directory is the caller's).
    pub async fn start_config(config: Config) -> Self {
        Self::start_at(config, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// A relay on a given address: how a test restarts a relay where its clients expect it.
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = Arc::new(Relay::new(config.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let r = relay.clone();
        let task = tokio::spawn(async move {
            r.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Self {
            addr,
            relay,
            config,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    pub fn url(&self, tenant: &str) -> String {
        format!("ws://{}/t/{tenant}", self.addr)
    }

    /// A relay that requires tokens (no leeway, revocations re-read every 20 ms).
    pub async fn start_with_tokens(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(|c| {
            c.auth.mode = Some(AuthMode::Token);
            c.auth.leeway = Duration::ZERO;
            c.auth.revocation_poll = Duration::from_millis(20);
            tweak(c);
        })
        .await
    }

    /// A token signed with this relay's own key (the one `wharf-relay token issue` uses).
    pub fn mint(&self, claims: &Claims) -> String {
        RelayKey::load_or_create(&self.config.key_path())
            .expect("relay key")
            .mint(claims)
            .expect("mint")
    }

    /// `url(tenant)` with `?token=`.
    pub fn url_with_token(&self, tenant: &str, token: &str) -> String {
        format!("{}?token={token}", self.url(tenant))
    }

    pub async fn client(&self, tenant: &str) -> Client {
        Client::connect(&self.url(tenant)).await.expect("connect")
    }

    /// Graceful shutdown; returns once the relay has closed every database.
    pub async fn shutdown(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("relay task");
        }
        self._dir.take()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Claims of a token for `tenant` allowing `actions`, valid for an hour.
pub fn claims(tenant: &str, actions: &[Action]) -> Claims {
    let now = unix_now();
    Claims {
        iss: "wharf-relay".into(),
        sub: "test-agent".into(),
        aud: Audience::One("wharf".into()),
        tenant: tenant.into(),
        actions: actions.to_vec(),
        logs: None,
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    }
}

/// A raw protocol client: frames in, messages out, chunked messages reassembled.
#[allow(missing_debug_implementations)]
pub struct Client {
    pub ws: Ws,
    /// The subprotocol the relay selected.
    pub protocol: Option<String>,
    pub remote_id: Bytes,
    inbound: Inbound<RelayMsg>,
    next_write: u32,
    next_ping: u32,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl Client {
    /// Connects and waits for the relay's Hello.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with_protocol(url, None).await
    }

    pub async fn connect_with_protocol(url: &str, protocol: Option<&str>) -> Result<Self> {
        Self::connect_with_headers(url, protocol.map(|p| ("sec-websocket-protocol", p))).await
    }

    /// Connects with extra request headers (name, value).
    pub async fn connect_with_headers<'a>(
        url: &str,
        headers: impl IntoIterator<Item = (&'static str, &'a str)>,
    ) -> Result<Self> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(name, value.parse()?);
        }
        let (ws, response) =
            tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
                .await
                .context("connect timed out")??;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self::after_upgrade(ws, protocol).await
    }

    /// Expects the upgrade to be refused; returns the HTTP status and body.
    pub async fn refused<'a>(
        url: &str,
        headers: impl IntoIterator<Item = (&'static str, &'a str)>,
    ) -> Result<(u16, String)> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(name, value.parse()?);
        }
        match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .context("connect timed out")?
        {
            Ok(_) => bail!("the upgrade was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Ok(refusal(&response)),
            Err(e) => bail!("the upgrade failed without an HTTP response: {e}"),
        }
    }

    /// Connects from the local address `from` (any of 127.0.0.0/8 on Linux), so one test can
    /// be several client addresses. `Err((status, body))` when the upgrade is refused.
    pub async fn connect_from(
        url: &str,
        from: std::net::IpAddr,
    ) -> Result<Result<Self, (u16, String)>> {
        let request = url.into_client_request()?;
        let host = request.uri().host().context("url host")?.to_owned();
        let port = request.uri().port_u16().context("url port")?;
        let relay: SocketAddr = format!("{host}:{port}").parse()?;
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(relay).await?;
        let upgrade = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp));
        match tokio::time::timeout(PATIENCE, upgrade)
            .await
            .context("connect timed out")?
        {
            Ok((ws, _)) => Ok(Ok(Self::after_upgrade(ws, None).await?)),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Ok(Err(refusal(&response)))
            }
            Err(e) => bail!("the upgrade failed without an HTTP response: {e}"),
        }
    }

    async fn after_upgrade(ws: Ws, protocol: Option<String>) -> Result<Self> {
        let mut client = Client {
            ws,
            protocol,
            remote_id: Bytes::new(),
            inbound: Inbound::new(ReassemblerLimits::default()),
            next_write: 0,
            next_ping: 1,
        };
        match client.recv().await? {
            RelayMsg::Hello { remote_id } => client.remote_id = remote_id,
            other => bail!("expected Hello first, got {other:?}"),
        }
        Ok(client)
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> Result<()> {
        self.send_raw(Bytes::from(msg.encode())).await
    }

    pub async fn send_raw(&mut self, frame: Bytes) -> Result<()> {
        self.ws.send(Message::Binary(frame)).await?;
        Ok(())
    }

    /// A text frame, which the protocol does not allow.
    pub async fn send_raw_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// The next message, reassembling chunks. Fails on close or after [`PATIENCE`].
    pub async fn recv(&mut self) -> Result<RelayMsg> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("no message in time")?
                .ok_or_else(|| anyhow!("connection ended"))??;
            let bytes = match frame {
                Message::Binary(b) => b,
                Message::Close(c) => bail!("closed: {c:?}"),
                Message::Text(t) => bail!("the relay sent a text frame: {t}"),
                _ => continue,
            };
            if let Some(msg) = self.inbound.push(&bytes, 0)? {
                return Ok(msg);
            }
        }
    }

    /// Reads until the relay closes; returns the close frame.
    pub async fn closed(&mut self) -> Result<Closed> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("not closed in time")?;
            match frame {
                Some(Ok(Message::Close(c))) => {
                    return Ok(Closed {
                        code: c.as_ref().map(|c| u16::from(c.code)),
                        reason: c.map(|c| c.reason.to_string()).unwrap_or_default(),
                    })
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("connection failed without a close frame: {e}"),
                None => bail!("connection ended without a close frame"),
            }
        }
    }

    /// Writes entries and returns the WriteEntries id used.
    pub async fn write(
        &mut self,
        public_key: &str,
        entries: Vec<EncryptedEntry>,
    ) -> Result<JsNumber> {
        let id = JsNumber::from(self.next_write);
        self.next_write += 1;
        let msg = ClientMsg::WriteEntries(WriteEntries {
            public_key: public_key.to_owned(),
            id,
            iv: Bytes::from_static(&[7; 12]),
            entries,
        });
        for frame in wharf_protocol::frames(Bytes::from(msg.encode()), id) {
            self.send_raw(frame).await?;
        }
        Ok(id)
    }

    /// Writes and waits for the matching Ack, skipping other messages.
    pub async fn write_acked(
        &mut self,
        public_key: &str,
        entries: Vec<EncryptedEntry>,
    ) -> Result<Vec<u64>> {
        let id = self.write(public_key, entries).await?;
        loop {
            if let RelayMsg::Ack {
                id: got,
                sequence_numbers,
            } = self.recv().await?
            {
                if got == id {
                    return Ok(sequence_numbers);
                }
            }
        }
    }

    pub async fn ping(&mut self) -> Result<JsNumber> {
        let id = JsNumber::from(self.next_ping);
        self.next_ping += 1;
        self.send(&ClientMsg::Ping { id }).await?;
        Ok(id)
    }

    /// Pings and waits for the matching Pong, collecting whatever else arrives first.
    pub async fn ping_pong(&mut self) -> Result<Vec<RelayMsg>> {
        let id = self.ping().await?;
        let mut before = Vec::new();
        loop {
            match self.recv().await? {
                RelayMsg::Pong { id: got } if got == id => return Ok(before),
                other => before.push(other),
            }
        }
    }

    pub async fn subscribe(&mut self, public_key: &str, start_sequence: u64) -> Result<()> {
        self.send(&ClientMsg::RequestChanges {
            public_key: public_key.to_owned(),
            start_sequence,
            snapshot: false,
        })
        .await
    }

    /// Receives `Changes` for `public_key` until `count` entries have arrived.
    pub async fn collect(&mut self, public_key: &str, count: usize) -> Result<Vec<RemoteEntry>> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            if let RelayMsg::Changes {
                public_key: pk,
                entries,
            } = self.recv().await?
            {
                if pk != public_key {
                    bail!("Changes for {pk}, which this client never asked for");
                }
                out.extend(entries);
            }
        }
        if out.len() > count {
            bail!("expected {count} entries, got {}", out.len());
        }
        Ok(out)
    }
}

/// Reads a subscription from `start` until `CaughtUp`, returning every message before it.
pub async fn read_to_caught_up(
    c: &mut Client,
    log: &str,
    start: u64,
    snapshot: bool,
) -> Vec<RelayMsg> {
    c.send(&ClientMsg::RequestChanges {
        public_key: log.into(),
        start_sequence: start,
        snapshot,
    })
    .await
    .expect("subscribe");
    let mut got = Vec::new();
    loop {
        match c.recv().await.expect("recv") {
            RelayMsg::CaughtUp { .. } => return got,
            other => got.push(other),
        }
    }
}

/// The sequences of the entries of every `Changes` in `msgs`, in order.
pub fn sequences(msgs: &[RelayMsg]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| match m {
            RelayMsg::Changes { entries, .. } => Some(entries.iter().map(|e| e.sequence)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Where a `HistoryStarts` in `msgs` says the log's history starts.
pub fn history_starts(msgs: &[RelayMsg]) -> Option<u64> {
    msgs.iter().find_map(|m| match m {
        RelayMsg::HistoryStarts { first_sequence, .. } => Some(*first_sequence),
        _ => None,
    })
}

/// The status and body of a refused upgrade.
fn refusal(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> (u16, String) {
    let body = response
        .body()
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    (response.status().as_u16(), body)
}

/// Entry id → the sequence its Ack gave it, as writers record them.
pub type AckedIds = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Bytes, u64>>>;

/// Writes batches of 5 entries of 200 bytes (ids from `first_batch` on) to `public_key`, with
/// up to 8 writes in flight, recording every Ack in `acked`, until the connection fails: the
/// load of the crash and fault tests, whose checker then compares `acked` with what survived.
pub async fn write_until_failure(url: String, public_key: &str, first_batch: u32, acked: AckedIds) {
    let Ok(mut c) = Client::connect(&url).await else {
        return;
    };
    let mut in_flight: std::collections::HashMap<String, Vec<Bytes>> =
        std::collections::HashMap::new();
    for batch in 0u32.. {
        let es = entries(first_batch + batch, 5, 200);
        let ids = es.iter().map(|e| e.entry_id.clone()).collect();
        let Ok(id) = c.write(public_key, es).await else {
            return;
        };
        in_flight.insert(id.to_string(), ids);
        while in_flight.len() >= 8 {
            match c.recv().await {
                Ok(RelayMsg::Ack {
                    id,
                    sequence_numbers,
                }) => {
                    let ids = in_flight
                        .remove(&id.to_string())
                        .expect("an Ack for a write this writer sent");
                    let mut acked = acked.lock().expect("lock");
                    for (eid, seq) in ids.into_iter().zip(sequence_numbers) {
                        acked.insert(eid, seq);
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// Entries with distinct ids and recognisable content.
pub fn entries(prefix: u32, count: usize, size: usize) -> Vec<EncryptedEntry> {
    (0..count)
        .map(|i| EncryptedEntry {
            entry_id: entry_id(prefix, i as u32),
            encrypted_entry: Bytes::from(
                (0..size)
                    .map(|j| (j as u32 ^ i as u32 ^ prefix) as u8)
                    .collect::<Vec<u8>>(),
            ),
        })
        .collect()
}

/// A UUIDv7-shaped id unique per (prefix, index).
pub fn entry_id(prefix: u32, index: u32) -> Bytes {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&prefix.to_be_bytes());
    id[6] = 0x70;
    id[8] = 0x80;
    id[12..].copy_from_slice(&index.to_be_bytes());
    Bytes::copy_from_slice(&id)
}

/// Asserts sequences are exactly `from..from+n`.
pub fn assert_dense(entries: &[RemoteEntry], from: u64) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.sequence,
            from + i as u64,
            "sequence gap or duplicate at position {i}"
        );
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// The `wharf-relay` binary built next to the test executable (or `$RELAY_BIN`).
pub fn relay_binary() -> PathBuf {
    built_binary("wharf-relay", "RELAY_BIN", "wharf-relay")
}

/// The `wharf-faultfs` binary built next to the test executable (or `$FAULTFS_BIN`).
pub fn faultfs_binary() -> PathBuf {
    built_binary("wharf-faultfs", "FAULTFS_BIN", "wharf-faultfs")
}

/// The `wharf` CLI binary built next to the test executable (or `$WHARF_BIN`).
pub fn wharf_binary() -> PathBuf {
    built_binary("wharf", "WHARF_BIN", "wharf-client")
}

fn built_binary(name: &str, env: &str, package: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    // target/<profile>/deps/<test> → target/<profile>/<name>; a benchmark program of this
    // crate sits in target/<profile> itself.
    let beside = exe.parent().expect("target dir").join(&file);
    let bin = match exe.parent().and_then(Path::parent) {
        Some(dir) if !beside.exists() => dir.join(&file),
        _ => beside,
    };
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p {package}` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// How many entries log `public_key` of `tenant` holds in the relay's database under `data`,
/// read beside a running relay (read-only). A catch-up has no end marker on the wire, so a
/// test that must see a whole log after a crash counts it here, then collects that many.
/// The tenant must have been opened (a Hello received) so its schema exists.
pub fn stored_count(data: &Path, tenant: &str, public_key: &str) -> usize {
    let db = rusqlite::Connection::open_with_flags(
        data.join("tenants").join(format!("{tenant}.sqlite")),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the tenant database");
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM entries JOIN logs ON logs.id = entries.log_id \
             WHERE logs.public_key = ?1",
            [public_key],
            |row| row.get(0),
        )
        .expect("count entries");
    usize::try_from(n).expect("a count")
}

/// A relay running as a child process on `127.0.0.1:0`.
#[derive(Debug)]
pub struct ChildRelay {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl ChildRelay {
    pub async fn start(data: &Path, extra_env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn(data, &[], extra_env, None).await
    }

    /// Like [`ChildRelay::start`], with more `serve` flags.
    pub async fn start_with_args(
        data: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::spawn(data, args, extra_env, None).await
    }

    /// Like [`ChildRelay::start`], with everything the relay writes to stderr (its logs)
    /// collected into the returned buffer instead of passed through.
    pub async fn start_capturing(
        data: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<(Self, Arc<std::sync::Mutex<String>>)> {
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let relay = Self::spawn(data, &[], extra_env, Some(log.clone())).await?;
        Ok((relay, log))
    }

    async fn spawn(
        data: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
        capture: Option<Arc<std::sync::Mutex<String>>>,
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(relay_binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("WHARF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(if capture.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn wharf-relay")?;
        if let (Some(log), Some(stderr)) = (capture, child.stderr.take()) {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .context("relay did not start in time")??
            .context("relay exited before listening")?;
        // "wharf-relay listening on http://ADDR (…)", https:// with TLS.
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("no address in the relay's first line")?
            .parse()?;
        Ok(Self { child, addr })
    }

    pub fn url(&self, tenant: &str) -> String {
        format!("ws://{}/t/{tenant}", self.addr)
    }

    /// Resident memory of the relay process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

/// A private certificate authority for TLS tests: it signs `localhost` certificates that
/// clients trust only through its PEM file.
#[allow(missing_debug_implementations)]
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate (PEM), for `ca_file` and test clients.
    pub pem_path: PathBuf,
}

/// A certificate signed by a [`TestCa`], written as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The certificate in DER, to recognise it in a handshake.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Wharf test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem_path = dir.join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write CA");
        Self {
            cert,
            key,
            pem_path,
        }
    }

    /// A fresh `localhost` certificate and key, written to `dir/{name}.pem` and
    /// `dir/{name}.key` (each through a rename, as ACME clients replace them).
    pub fn leaf(&self, dir: &Path, name: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        let leaf = Leaf {
            cert_path: dir.join(format!("{name}.pem")),
            key_path: dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        replace_file(&leaf.key_path, key.serialize_pem().as_bytes());
        replace_file(&leaf.cert_path, cert.pem().as_bytes());
        leaf
    }

    /// A TLS client configuration that trusts this CA only and offers h2 and http/1.1.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.cert.der().to_vec(),
            ))
            .expect("CA root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Opens a TLS connection to `addr` as `localhost`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(tokio_rustls::TlsConnector::from(self.client_config())
            .connect(name, tcp)
            .await?)
    }

    /// The certificate (DER) a relay at `addr` presents in a new handshake.
    pub async fn served_certificate(&self, addr: SocketAddr) -> Result<Vec<u8>> {
        let tls = self.connect(addr).await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no peer certificate")?;
        Ok(leaf.to_vec())
    }
}

/// Waits, bounded by [`PATIENCE`], until `check` holds, checking every few milliseconds: for
/// what the relay does on its own clock (a file poll, a signal), which no message announces.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `path` whole through a temporary file and a rename.
pub fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Sends one HTTP/1.1 request on `io` and reads the response to its end (the request asks
/// the server to close).
/// An HTTP answer: status, headers (names lower-case), body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request to `addr` over plain HTTP/1.1 (hyper's client), with extra headers and a body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpAnswer> {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .context("answer in time")??;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .context("body in time")??
        .to_bytes()
        .to_vec();
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

/// `GET path` from `addr`, with extra headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<HttpAnswer> {
    http_request(addr, "GET", path, headers, Vec::new()).await
}

pub async fn http_get<S>(mut io: S, host: &str, path: &str) -> Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    io.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, io.read_to_end(&mut response))
        .await
        .context("response in time")??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Waits (bounded by [`PATIENCE`]) until the peer closes `io`, reading and discarding
/// whatever it sends; `Err` if it is still open then.
pub async fn closed_by_peer<S>(mut io: S) -> Result<()>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .context("the peer kept the connection open")
}
