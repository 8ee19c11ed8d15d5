//! `wharf`: keys, pushing and tailing encrypted logs from a shell.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use wharf_client::connection::ConnectOptions;
use wharf_client::{
    Client, Connection, EffectIdentity, Grant, Identity, NewEvent, ReadKey, Status,
};
use wharf_protocol::crypto::parse_public_key;
use wharf_protocol::v4::V4Identity;
use wharf_protocol::{payload, ClientMsg, Entry, RelayMsg};

#[derive(Parser, Debug)]
#[command(
    name = "wharf",
    version,
    about = "Keys, push and tail for Wharf's end-to-end-encrypted event logs"
)]
struct Cli {
    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a new identity (a log and the keys to it).
    Keygen {
        /// An Effect v3 identity (AES-256-GCM, readable by Effect clients) instead of a native one.
        #[arg(long, conflicts_with = "effect_v4")]
        effect: bool,
        /// An Effect v4 identity (`EventLog.encodeIdentityString`: a UUID and a root secret), for
        /// `push --v4` and `tail --v4`; a v4 app's own identity string works the same.
        #[arg(long)]
        effect_v4: bool,
        /// Write it to this file (mode 0600) instead of stdout.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Show or import an identity.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Append events and upload them (one from flags, or NDJSON on stdin).
    Push(PushArgs),
    /// Print a log's entries, decrypted, as they are on the relay.
    Tail(TailArgs),
    /// The journal's counts and the relay's view of each log.
    Status(LogArgs),
    /// Sync the log, then publish an encrypted snapshot of its state (the last writer per
    /// event and primary key), so new readers start from it and the relay may drop the
    /// history it covers.
    Snapshot(SnapshotArgs),
    /// Seal this identity's read key to a viewer's x25519 public key.
    Grant {
        #[command(flatten)]
        identity: IdentityArgs,
        /// The recipient's x25519 public key (base64url, as the viewer shows it, or hex). It
        /// may start with `-`.
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Also print a viewer link carrying the grant in its #fragment, e.g.
        /// http://127.0.0.1:8787/viewer.
        #[arg(long)]
        viewer: Option<String>,
        /// The tenant the link opens (with --viewer).
        #[arg(long, env = "WHARF_TENANT")]
        tenant: Option<String>,
        /// Grant an Effect v4 log (the identity is a v4 identity string). Effect v4 reads need
        /// the identity's signature, so the grant carries its root secret: whoever opens it
        /// could also write (the viewer never does).
        #[command(flatten)]
        v4: V4Args,
    },
}

#[derive(Subcommand, Debug)]
enum IdentityCmd {
    /// The log name, suite and grant public key of an identity.
    Show {
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Turn an Effect identity (its encodeString form, or publicKey + key) into one Wharf loads.
    Import {
        /// Effect's `Identity.encodeString` output.
        #[arg(long, conflicts_with_all = ["public_key", "key"], allow_hyphen_values = true)]
        effect_string: Option<String>,
        /// Effect's `publicKey` (the log name).
        #[arg(long, requires = "key", allow_hyphen_values = true)]
        public_key: Option<String>,
        /// The 32-byte key (Effect's `privateKey`), hex or base64.
        #[arg(long, requires = "public_key", allow_hyphen_values = true)]
        key: Option<String>,
        #[arg(short, long)]
        out: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct IdentityArgs {
    /// File holding the identity (`wharf keygen -o`). Or set WHARF_IDENTITY to the string.
    #[arg(long, short = 'i', env = "WHARF_IDENTITY_FILE")]
    identity: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct RelayArgs {
    /// Relay address: ws://host:port or wss://host.
    #[arg(long, env = "WHARF_RELAY", default_value = "ws://127.0.0.1:8787")]
    relay: String,
    #[arg(long, env = "WHARF_TENANT", default_value = "default")]
    tenant: String,
    /// Bearer token for the relay.
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Send the token as ?token= rather than a header.
    #[arg(long)]
    token_in_url: bool,
    /// Extra CA certificates (PEM) to trust for wss://.
    #[arg(long, env = "WHARF_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct JournalArgs {
    /// The local journal (default: one per tenant and log in the user's data directory).
    #[arg(long, env = "WHARF_JOURNAL")]
    journal: Option<PathBuf>,
}

/// A log synced through a local journal: where, whose, and which journal.
#[derive(Args, Debug)]
struct LogArgs {
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    journal: JournalArgs,
}

/// Effect v4 logs: the identity is a v4 identity string, the log is (its publicKey, the store).
#[derive(Args, Debug, Clone)]
struct V4Args {
    /// Read or write an Effect v4 log (`/v4/t/{tenant}`) with a v4 identity
    /// (`wharf keygen --effect-v4`, or the app's `EventLog.encodeIdentityString`).
    #[arg(long)]
    v4: bool,
    /// The v4 store id (Effect's `CurrentStoreId`).
    #[arg(long, default_value = "default", requires = "v4")]
    store: String,
}

#[derive(Args, Debug)]
struct PushArgs {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    v4: V4Args,
    /// Event name (without it, NDJSON lines {"event", "primaryKey", "payload"} are read from stdin).
    #[arg(long)]
    event: Option<String>,
    /// Primary key of the event.
    #[arg(long = "key", requires = "event", allow_hyphen_values = true)]
    primary_key: Option<String>,
    /// Payload as JSON.
    #[arg(long, requires = "event", default_value = "{}")]
    payload: String,
    /// Give up waiting for the relay's acks after this long (entries stay in the journal).
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    timeout: Duration,
    /// Only append to the journal; do not wait for the upload.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args, Debug)]
struct SnapshotArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct TailArgs {
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    identity: IdentityArgs,
    /// First sequence to print.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep following new entries.
    #[arg(short, long)]
    follow: bool,
    /// Read the log a grant gives (opened with this identity's x25519 key) instead of the
    /// identity's own log.
    #[arg(long)]
    grant: Option<String>,
    #[command(flatten)]
    v4: V4Args,
    /// v4: payload field names to show by name (a v4 payload carries only their hashes; common
    /// names like id, text or title are tried anyway).
    #[arg(long, value_delimiter = ',', requires = "v4")]
    fields: Vec<String>,
    /// v4 without --follow: stop once nothing has arrived for this long (a v4 relay does not
    /// say where a backlog ends).
    #[arg(long, default_value = "2s", value_parser = humantime_duration, requires = "v4")]
    idle: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// `println!` that returns an error instead of panicking when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // `wharf tail | head`: the reader left; that is how such a pipeline ends, not an error.
        Err(e) if stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let _ = writeln!(std::io::stdout(), "{}", json!({"error": format!("{e:#}")}));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let out = Output { json: cli.json };
    match cli.command {
        Command::Keygen {
            effect_v4: true,
            out: file,
            force,
            ..
        } => {
            let identity = V4Identity::generate(&mut rand::rngs::OsRng);
            emit_v4_identity(&out, &identity, file.as_deref(), force)?;
        }
        Command::Keygen {
            effect,
            out: file,
            force,
            ..
        } => {
            let identity = if effect {
                Identity::Effect(EffectIdentity::generate(&mut rand::rngs::OsRng))
            } else {
                Identity::generate(&mut rand::rngs::OsRng)
            };
            emit_identity(&out, &identity, file.as_deref(), force)?;
        }
        Command::Identity(IdentityCmd::Show { identity }) => {
            let identity = load_identity(&identity)?;
            out.identity(&identity, None)?;
        }
        Command::Identity(IdentityCmd::Import {
            effect_string,
            public_key,
            key,
            out: file,
            force,
        }) => {
            let identity = match (effect_string, public_key, key) {
                (Some(s), _, _) => Identity::Effect(EffectIdentity::parse(&s)?),
                (None, Some(pk), Some(key)) => {
                    Identity::Effect(EffectIdentity::new(pk, parse_key(&key)?))
                }
                _ => bail!("give --effect-string, or --public-key with --key"),
            };
            emit_identity(&out, &identity, file.as_deref(), force)?;
        }
        Command::Push(args) => return push(&out, args).await,
        Command::Tail(args) => return tail(&out, args).await,
        Command::Status(log) => return status(&out, &log).await,
        Command::Snapshot(args) => return snapshot(&out, args).await,
        Command::Grant {
            identity,
            to,
            viewer,
            tenant,
            v4,
        } => {
            let recipient = parse_public_key(&to)?;
            let key = if v4.v4 {
                let id = load_v4_identity(&identity)?;
                ReadKey::new(
                    wharf_protocol::v4::stored::log_key(&id.public_key, &v4.store),
                    wharf_protocol::crypto::EntryKey::from_bytes(*id.secret()),
                )
            } else {
                load_identity(&identity)?.read_key().clone()
            };
            let grant = Grant::seal(&key, &recipient, &mut rand::rngs::OsRng)?.to_string();
            let link = viewer.map(|v| {
                let mut fragment = url::form_urlencoded::Serializer::new(String::new());
                if let Some(t) = &tenant {
                    fragment.append_pair("tenant", t);
                }
                fragment.append_pair("grant", &grant);
                format!("{}#{}", v.trim_end_matches('#'), fragment.finish())
            });
            if out.json {
                outln!(
                    "{}",
                    json!({"log": key.log(), "grant": grant, "viewer": link})
                );
            } else {
                outln!("{grant}");
                if let Some(link) = link {
                    eprintln!("viewer link: {link}");
                }
                eprintln!("grants read access to log {} to {to}", key.log());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Output {
    json: bool,
}

impl Output {
    fn identity(&self, identity: &Identity, written_to: Option<&Path>) -> Result<()> {
        let x25519 = identity.grant_keys().map(|k| k.public_key_string());
        if self.json {
            outln!(
                "{}",
                json!({
                    "log": identity.log(),
                    "suite": identity.suite().name(),
                    "x25519": x25519,
                    "file": written_to.map(|p| p.display().to_string()),
                })
            );
        } else {
            let w = &mut std::io::stderr();
            let _ = writeln!(w, "log:    {}", identity.log());
            let _ = writeln!(w, "suite:  {}", identity.suite().name());
            match x25519 {
                Some(k) => {
                    let _ = writeln!(w, "x25519: {k}");
                }
                None => {
                    let _ = writeln!(w, "x25519: none (Effect identities cannot receive grants)");
                }
            }
            if let Some(p) = written_to {
                let _ = writeln!(w, "saved:  {}", p.display());
            }
        }
        Ok(())
    }
}

fn parse_key(s: &str) -> Result<[u8; 32]> {
    wharf_protocol::crypto::parse_key_bytes(s).map_err(|why| anyhow!("--key: {why}"))
}

fn emit_identity(
    out: &Output,
    identity: &Identity,
    file: Option<&Path>,
    force: bool,
) -> Result<()> {
    match file {
        Some(path) => {
            write_secret(path, &format!("{identity}\n"), force)?;
            out.identity(identity, Some(path))?;
        }
        None => {
            if out.json {
                let x25519 = identity.grant_keys().map(|k| k.public_key_string());
                outln!(
                    "{}",
                    json!({"identity": identity.to_string(), "log": identity.log(), "suite": identity.suite().name(), "x25519": x25519})
                );
            } else {
                outln!("{identity}");
                out.identity(identity, None)?;
            }
        }
    }
    Ok(())
}

fn write_secret(path: &Path, contents: &str, force: bool) -> Result<()> {
    use std::fs::OpenOptions;
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists (use --force to overwrite)", path.display())
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    // The identity holds the only copy of its keys: its name must survive a power cut too.
    wharf_durable::sync_name(path)
        .with_context(|| format!("cannot sync the directory of {}", path.display()))?;
    Ok(())
}

/// The identity's text: the file `--identity` names, or `WHARF_IDENTITY`. `keygen` is the
/// command that makes one, for the error.
fn identity_text(args: &IdentityArgs, keygen: &str) -> Result<String> {
    match (&args.identity, std::env::var("WHARF_IDENTITY")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read identity file {}", path.display())),
        (None, Ok(s)) if !s.trim().is_empty() => Ok(s),
        _ => bail!(
            "no identity: pass --identity FILE, or set WHARF_IDENTITY (make one with `{keygen}`)"
        ),
    }
}

fn load_identity(args: &IdentityArgs) -> Result<Identity> {
    Identity::parse(&identity_text(args, "wharf keygen")?).context("loading the identity")
}

fn connect_options(relay: &RelayArgs) -> ConnectOptions {
    let mut o = ConnectOptions::new(&relay.relay, &relay.tenant);
    o.token = relay.token.clone();
    if relay.token_in_url {
        o.token_placement = wharf_client::TokenPlacement::Query;
    }
    o.ca_file = relay.ca_file.clone();
    o
}

fn journal_path(args: &LogArgs, identity: &Identity) -> Result<PathBuf> {
    let relay = &args.relay;
    if let Some(p) = &args.journal.journal {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| anyhow!("no HOME or XDG_DATA_HOME; pass --journal"))?;
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    Ok(base.join("wharf").join(format!(
        "{}-{}.db",
        safe(&relay.tenant),
        safe(identity.log())
    )))
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

async fn snapshot(out: &Output, args: SnapshotArgs) -> Result<ExitCode> {
    let identity = load_identity(&args.log.identity)?;
    let log = identity.log().to_owned();
    let journal = journal_path(&args.log, &identity)?;
    let connect = connect_options(&args.log.relay);
    let client = Client::builder(&args.log.relay.relay, &args.log.relay.tenant)
        .identity(identity)
        .journal(&journal)
        .configure(|c| c.connect = connect)
        .open()
        .await
        .with_context(|| format!("opening journal {}", journal.display()))?;
    let done = tokio::time::timeout(args.timeout, async {
        // Read the log to its head, and upload what this journal still owes, first.
        let mut status = client.status();
        loop {
            match &*status.borrow_and_update() {
                Status::Live => break,
                Status::Error { message, .. } => return Err(anyhow!("{message}")),
                _ => {}
            }
            status
                .changed()
                .await
                .map_err(|_| anyhow!("the client stopped"))?;
        }
        client.flush().await?;
        let sequence = client.snapshot(&log).await?;
        let records = client
            .journal()
            .snapshot_content(&client.remote_id().unwrap_or_default(), &log)
            .await?
            .map_or(0, |c| c.entries.len());
        Ok::<_, anyhow::Error>((sequence, records))
    })
    .await;
    client.close().await?;
    let (sequence, records) =
        done.map_err(|_| anyhow!("no snapshot within {:?}", args.timeout))??;
    if out.json {
        outln!(
            "{}",
            json!({"log": log, "sequence": sequence, "records": records})
        );
    } else {
        outln!("snapshot of {log} stored: covers sequences 0..={sequence}, {records} records");
    }
    Ok(ExitCode::SUCCESS)
}

async fn push(out: &Output, args: PushArgs) -> Result<ExitCode> {
    if args.v4.v4 {
        return push_v4(out, args).await;
    }
    let identity = load_identity(&args.log.identity)?;
    let log = identity.log().to_owned();
    let journal = journal_path(&args.log, &identity)?;
    let mut builder = Client::builder(&args.log.relay.relay, &args.log.relay.tenant)
        .identity(identity)
        .journal(&journal);
    let connect = connect_options(&args.log.relay);
    builder = builder.configure(|c| c.connect = connect);
    let client = builder
        .open()
        .await
        .with_context(|| format!("opening journal {}", journal.display()))?;

    let mut appended = 0u64;
    if let Some(event) = &args.event {
        let payload: Value =
            serde_json::from_str(&args.payload).context("--payload is not JSON")?;
        let ev = NewEvent {
            event: event.clone(),
            primary_key: args.primary_key.clone().unwrap_or_default(),
            payload: payload::from_json(&payload)?,
        };
        client.append_many(&log, vec![ev]).await?;
        appended = 1;
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("reading NDJSON events from stdin (Ctrl-D to end); or use --event");
        }
        let bar = progress_bar(0, "appending");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(usize, String)>>(4096);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for (n, line) in stdin.lock().lines().enumerate() {
                let msg = line.map(|l| (n + 1, l)).map_err(anyhow::Error::from);
                if tx.blocking_send(msg).is_err() {
                    break;
                }
            }
        });
        let mut batch = Vec::with_capacity(1000);
        loop {
            let next = rx.recv().await;
            let done = next.is_none();
            if let Some(line) = next {
                let (n, line) = line.context("reading stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                batch.push(parse_event(&line).with_context(|| format!("stdin line {n}"))?);
            }
            if batch.len() >= 1000
                || (done && !batch.is_empty())
                || (rx.is_empty() && !batch.is_empty())
            {
                let n = batch.len() as u64;
                client.append_many(&log, std::mem::take(&mut batch)).await?;
                appended += n;
                bar.inc_length(n);
                bar.inc(n);
            }
            if done {
                break;
            }
        }
        bar.finish_and_clear();
    }

    let pending = client.pending().await?;
    let mut acked = args.no_wait;
    if !args.no_wait {
        let bar = progress_bar(pending, "uploading");
        let mut status = client.status();
        let waited = tokio::time::timeout(args.timeout, async {
            let flush = client.flush();
            tokio::pin!(flush);
            loop {
                tokio::select! {
                    r = &mut flush => return r.map_err(anyhow::Error::from),
                    // A refusal (bad token, forbidden) does not pass by waiting: say so now.
                    Ok(()) = status.changed() => {
                        if let Status::Error { message, .. } = &*status.borrow_and_update() {
                            return Err(anyhow!(
                                "{message}; the entries are safe in {} and go out on the next push",
                                journal.display()
                            ));
                        }
                    }
                    // Counting what is left costs a query: only for a bar someone sees.
                    _ = tokio::time::sleep(Duration::from_millis(200)), if !bar.is_hidden() => {
                        if let Ok(left) = client.pending().await {
                            bar.set_position(pending.saturating_sub(left));
                        }
                    }
                }
            }
        })
        .await;
        bar.finish_and_clear();
        match waited {
            Ok(r) => {
                r?;
                acked = true;
            }
            Err(_) => {
                let status = client.status().borrow().clone();
                let left = client.pending().await.unwrap_or(pending);
                client.close().await?;
                if out.json {
                    outln!(
                        "{}",
                        json!({"log": log, "appended": appended, "acked": false, "pending": left, "status": format!("{status:?}")})
                    );
                }
                bail!(
                    "{left} entries not acknowledged after {:?} ({}); they are safe in {} and go out on the next push",
                    args.timeout,
                    describe(&status),
                    journal.display()
                );
            }
        }
    }
    client.close().await?;
    if out.json {
        outln!(
            "{}",
            json!({"log": log, "appended": appended, "acked": acked})
        );
    } else if args.no_wait {
        eprintln!("appended {appended}; not waiting for the upload (the next push sends it)");
    } else {
        eprintln!(
            "appended {appended}; every entry is acknowledged by {}",
            args.log.relay.relay
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_event(line: &str) -> Result<NewEvent> {
    let (event, primary_key, payload) = parse_event_json(line)?;
    Ok(NewEvent {
        event,
        primary_key,
        payload: payload::from_json(&payload)?,
    })
}

/// An NDJSON event line: `{"event", "primaryKey"?, "payload"?}`.
fn parse_event_json(line: &str) -> Result<(String, String, Value)> {
    let v: Value = serde_json::from_str(line).context("not JSON")?;
    let event = v
        .get("event")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("missing string field \"event\""))?;
    let primary_key = match v.get("primaryKey") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s,
        Some(_) => bail!("\"primaryKey\" must be a string"),
    };
    let payload = v
        .get("payload")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    Ok((event.to_owned(), primary_key.to_owned(), payload))
}

fn describe(status: &Status) -> String {
    match status {
        Status::Connecting { attempt } => format!("connecting, attempt {}", attempt + 1),
        Status::CatchingUp { behind } => format!("catching up, {behind} behind"),
        Status::Live => "live".into(),
        Status::Offline { reason, retry_in } => {
            format!("offline: {reason}; retrying in {retry_in:?}")
        }
        Status::Error { message, .. } => format!("error: {message}"),
        Status::Truncated { log, from, to } => {
            format!("log {log}: the relay had deleted sequences {from}..{to} (retention)")
        }
        Status::Closed => "closed".into(),
    }
}

fn entry_json(log: &str, sequence: u64, entry: &Entry) -> Value {
    let payload =
        payload::to_json(&entry.payload).unwrap_or_else(|e| json!({"$error": e.to_string()}));
    json!({
        "log": log,
        "sequence": sequence,
        "id": uuid::Uuid::from_bytes(entry.id).to_string(),
        "time": format_time(entry.timestamp_ms()),
        "event": entry.event,
        "primaryKey": entry.primary_key,
        "payload": payload,
    })
}

fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

async fn tail(out: &Output, args: TailArgs) -> Result<ExitCode> {
    if args.v4.v4 {
        return tail_v4(out, args).await;
    }
    let identity = load_identity(&args.identity)?;
    let key: ReadKey = match &args.grant {
        Some(g) => {
            let keys = identity.grant_keys().ok_or_else(|| {
                anyhow!("an Effect identity has no x25519 key to open grants with")
            })?;
            keys.open(&Grant::parse(g)?).context("opening the grant")?
        }
        None => identity.read_key().clone(),
    };
    let opts = connect_options(&args.relay);
    let mut next = args.from;
    let mut attempt = 0u32;
    let stdout = std::io::stdout();
    loop {
        let result = tail_once(out, &opts, &key, &mut next, args.follow, &stdout).await;
        match result {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) => reconnect_or_fail(args.follow, &mut attempt, e).await?,
        }
    }
}

/// `tail --follow` after a connection failed: waits (backoff) and returns, so the caller
/// reconnects, when the failure is transient; otherwise returns it.
async fn reconnect_or_fail(follow: bool, attempt: &mut u32, e: anyhow::Error) -> Result<()> {
    if !(follow && is_transient(&e)) {
        return Err(e);
    }
    *attempt += 1;
    let delay = wharf_client::backoff(Duration::from_millis(100), Duration::from_secs(5), *attempt);
    eprintln!("connection lost ({e:#}); reconnecting in {delay:?}");
    tokio::time::sleep(delay).await;
    Ok(())
}

fn is_transient(e: &anyhow::Error) -> bool {
    e.downcast_ref::<wharf_client::Error>()
        .is_some_and(wharf_client::Error::is_transient)
}

async fn tail_once(
    out: &Output,
    opts: &ConnectOptions,
    key: &ReadKey,
    next: &mut u64,
    follow: bool,
    stdout: &std::io::Stdout,
) -> Result<()> {
    let mut conn = Connection::open(opts).await?;
    if !follow && !conn.extension() {
        bail!("this relay does not say when a backlog ends (no wharf.v1); use --follow");
    }
    conn.send(&ClientMsg::RequestChanges {
        public_key: key.log().to_owned(),
        start_sequence: *next,
        snapshot: false,
    })
    .await?;
    let bar = progress_bar(0, "catching up");
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    ping.tick().await;
    let mut ping_id = 0u32;
    loop {
        let msg = tokio::select! {
            m = conn.recv() => m?,
            _ = ping.tick() => {
                ping_id += 1;
                conn.send(&ClientMsg::Ping { id: wharf_protocol::JsNumber(f64::from(ping_id)) }).await?;
                continue;
            }
        };
        match msg {
            RelayMsg::Head { next_sequence, .. } => {
                bar.set_length(next_sequence.saturating_sub(*next));
            }
            RelayMsg::Changes { entries, .. } => {
                let mut lock = stdout.lock();
                for e in entries {
                    if e.sequence < *next {
                        continue;
                    }
                    *next = e.sequence + 1;
                    bar.inc(1);
                    let line = match key.open(&e.iv, &e.entry_id, &e.encrypted_entry) {
                        Ok(entry) => {
                            if out.json {
                                entry_json(key.log(), e.sequence, &entry).to_string()
                            } else {
                                let p = payload::to_json(&entry.payload)
                                    .map(|v| v.to_string())
                                    .unwrap_or_else(|err| format!("<{err}>"));
                                format!(
                                    "#{:<6} {}  {}  {}  {}",
                                    e.sequence,
                                    format_time(entry.timestamp_ms()),
                                    entry.event,
                                    entry.primary_key,
                                    p
                                )
                            }
                        }
                        Err(err) => {
                            if out.json {
                                json!({"log": key.log(), "sequence": e.sequence, "locked": true, "error": err.to_string(), "size": e.encrypted_entry.len()}).to_string()
                            } else {
                                format!(
                                    "#{:<6} <locked: {err}> ({} bytes)",
                                    e.sequence,
                                    e.encrypted_entry.len()
                                )
                            }
                        }
                    };
                    bar.suspend(|| writeln!(lock, "{line}"))?;
                }
                lock.flush()?;
            }
            RelayMsg::CaughtUp { .. } => {
                bar.finish_and_clear();
                if !follow {
                    conn.close().await;
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

async fn status(out: &Output, args: &LogArgs) -> Result<ExitCode> {
    let relay = &args.relay;
    let identity = load_identity(&args.identity)?;
    let log = identity.log().to_owned();
    let path = journal_path(args, &identity)?;
    let local = if path.exists() {
        let j = wharf_client::Journal::open(&path).await?;
        let stats = j.stats(&log).await?;
        let remotes = j.remotes().await?;
        Some((j, stats, remotes))
    } else {
        None
    };
    let started = Instant::now();
    let opts = connect_options(relay);
    let remote = async {
        let mut conn = Connection::open(&opts).await?;
        let rtt = conn.round_trip(1).await?;
        conn.send(&ClientMsg::RequestChanges {
            public_key: log.clone(),
            start_sequence: u64::from(u32::MAX),
            snapshot: false,
        })
        .await?;
        let mut head = None;
        if conn.extension() {
            while head.is_none() {
                match conn.recv().await? {
                    RelayMsg::Head { next_sequence, .. }
                    | RelayMsg::CaughtUp { next_sequence, .. } => head = Some(next_sequence),
                    _ => {}
                }
            }
        }
        let remote_id = uuid::Uuid::from_slice(conn.remote_id())
            .map(|u| u.to_string())
            .unwrap_or_default();
        conn.close().await;
        Ok::<_, wharf_client::Error>((remote_id, rtt, head))
    };
    let remote = tokio::time::timeout(Duration::from_secs(10), remote)
        .await
        .unwrap_or_else(|_| Err(wharf_client::Error::Timeout("status".into())));
    let (pending, cursor) = match (&local, &remote) {
        (Some((j, _, _)), Ok((rid, _, _))) => {
            let rid = uuid::Uuid::parse_str(rid)
                .map(|u| u.as_bytes().to_vec())
                .unwrap_or_default();
            (
                Some(j.outbox_len(&rid, &log).await?),
                Some(j.cursor(&rid, &log).await?),
            )
        }
        _ => (None, None),
    };
    if out.json {
        outln!(
            "{}",
            json!({
                "log": log,
                "suite": identity.suite().name(),
                "journal": path.display().to_string(),
                "local": local.as_ref().map(|(_, s, _)| s),
                "relay": relay.relay,
                "tenant": relay.tenant,
                "reachable": remote.is_ok(),
                "error": remote.as_ref().err().map(|e| e.to_string()),
                "remoteId": remote.as_ref().ok().map(|r| &r.0),
                "rttMs": remote.as_ref().ok().map(|r| r.1.as_secs_f64() * 1000.0),
                "relayNextSequence": remote.as_ref().ok().and_then(|r| r.2),
                "pending": pending,
                "cursor": cursor,
            })
        );
    } else {
        outln!("log       {log} ({})", identity.suite().name());
        match &local {
            Some((_, s, _)) => outln!(
                "journal   {}: {} entries ({} own), {} delivered{}",
                path.display(),
                s.entries,
                s.own,
                s.applied,
                if s.undecryptable > 0 {
                    format!(", {} undecryptable", s.undecryptable)
                } else {
                    String::new()
                }
            ),
            None => outln!("journal   {} (none yet)", path.display()),
        }
        match &remote {
            Ok((rid, rtt, head)) => {
                outln!(
                    "relay     {} tenant {} remoteId {rid}, round trip {:.2} ms",
                    relay.relay,
                    relay.tenant,
                    rtt.as_secs_f64() * 1000.0
                );
                if let Some(h) = head {
                    outln!("on relay  {h} entries");
                }
                if let (Some(p), Some(c)) = (pending, cursor) {
                    outln!(
                        "sync      {p} to upload, {} to download",
                        head.map_or(0, |h| h.saturating_sub(c))
                    );
                }
            }
            Err(e) => outln!(
                "relay     {} unreachable after {:?}: {e}",
                relay.relay,
                started.elapsed()
            ),
        }
    }
    Ok(if remote.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn load_v4_identity(args: &IdentityArgs) -> Result<V4Identity> {
    V4Identity::parse(&identity_text(args, "wharf keygen --effect-v4")?)
        .context("loading the v4 identity")
}

fn emit_v4_identity(
    out: &Output,
    identity: &V4Identity,
    file: Option<&Path>,
    force: bool,
) -> Result<()> {
    let text = identity.encode_string();
    if let Some(path) = file {
        write_secret(path, &format!("{text}\n"), force)?;
    }
    if out.json {
        outln!(
            "{}",
            json!({"identity": file.is_none().then_some(&text), "publicKey": identity.public_key, "suite": "effect-v4", "file": file.map(|p| p.display().to_string())})
        );
    } else {
        if file.is_none() {
            outln!("{text}");
        }
        let w = &mut std::io::stderr();
        let _ = writeln!(w, "publicKey: {}", identity.public_key);
        let _ = writeln!(w, "suite:     effect-v4 (push --v4, tail --v4)");
        if let Some(p) = file {
            let _ = writeln!(w, "saved:     {}", p.display());
        }
    }
    Ok(())
}

/// Connects to the tenant's v4 endpoint and authenticates `identity` (signs the challenge).
async fn open_v4(relay: &RelayArgs, identity: &V4Identity) -> Result<wharf_client::V4Connection> {
    let mut conn = wharf_client::V4Connection::open(&connect_options(relay)).await?;
    match conn.authenticate(identity).await? {
        wharf_protocol::v4::Exit::Success(()) => Ok(conn),
        wharf_protocol::v4::Exit::Failure(e) => bail!(
            "the relay refused the identity {}: {}: {}",
            identity.public_key,
            e.code.as_str(),
            e.message
        ),
        other => bail!("Authenticate failed: {other:?}"),
    }
}

async fn push_v4(out: &Output, args: PushArgs) -> Result<ExitCode> {
    let identity = load_v4_identity(&args.log.identity)?;
    let mut lines: Vec<(String, String, Value)> = Vec::new();
    if let Some(event) = &args.event {
        let payload: Value =
            serde_json::from_str(&args.payload).context("--payload is not JSON")?;
        lines.push((
            event.clone(),
            args.primary_key.clone().unwrap_or_default(),
            payload,
        ));
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("reading NDJSON events from stdin (Ctrl-D to end); or use --event");
        }
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("reading stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            lines.push(parse_event_json(&line).with_context(|| format!("stdin line {}", n + 1))?);
        }
    }
    let events = lines
        .into_iter()
        .map(|(event, primary_key, payload)| {
            let payload = wharf_protocol::v4::payload::encode(&payload)
                .with_context(|| format!("event {event:?}: its payload"))?;
            Ok(wharf_client::v4::V4Event {
                event,
                primary_key,
                payload: payload.into(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let store = &args.v4.store;
    let batches =
        wharf_client::v4::encrypt_events(&identity, store, &events, &mut rand::rngs::OsRng)?;
    let mut acked = Vec::new();
    let mut conn = None;
    if !batches.is_empty() {
        let c = tokio::time::timeout(args.timeout, open_v4(&args.log.relay, &identity))
            .await
            .map_err(|_| anyhow!("connecting took longer than {:?}", args.timeout))??;
        let conn = conn.insert(c);
        // One request per 100 batches keeps each well under a frame.
        for chunk in batches.chunks(100) {
            let exit =
                tokio::time::timeout(args.timeout, conn.write(&identity, store, chunk.to_vec()))
                    .await
                    .map_err(|_| anyhow!("no acknowledgement within {:?}", args.timeout))??;
            match exit {
                wharf_protocol::v4::Exit::Success(acks) => acked.extend(acks),
                wharf_protocol::v4::Exit::Failure(e) => {
                    bail!(
                        "the relay refused the write: {}: {}",
                        e.code.as_str(),
                        e.message
                    )
                }
                other => bail!("the write failed: {other:?}"),
            }
        }
    }
    if let Some(conn) = conn {
        conn.close().await;
    }
    let sequences: Vec<u64> = acked.iter().map(|a| a.sequence).collect();
    if out.json {
        outln!(
            "{}",
            json!({"publicKey": identity.public_key, "store": store, "appended": events.len(), "acked": true, "sequences": sequences})
        );
    } else {
        eprintln!(
            "wrote {} events to {}/{store}; acknowledged at {}",
            events.len(),
            identity.public_key,
            match (sequences.first(), sequences.last()) {
                (Some(a), Some(b)) if a == b => format!("sequence {a}"),
                (Some(a), Some(b)) => format!("sequences {a}..={b}"),
                _ => "nothing (no events)".into(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn tail_v4(out: &Output, args: TailArgs) -> Result<ExitCode> {
    let identity = load_v4_identity(&args.identity)?;
    let mut next = args.from;
    let mut attempt = 0u32;
    loop {
        let result = tail_v4_once(out, &args, &identity, &mut next).await;
        match result {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) => reconnect_or_fail(args.follow, &mut attempt, e).await?,
        }
    }
}

/// One connection of `tail --v4`: prints the log from `next` on, until it is quiet for
/// `--idle` (or, with `--follow`, until the connection fails).
async fn tail_v4_once(
    out: &Output,
    args: &TailArgs,
    identity: &V4Identity,
    next: &mut u64,
) -> Result<()> {
    let store = &args.v4.store;
    let names: Vec<&str> = args.fields.iter().map(String::as_str).collect();
    let mut conn = open_v4(&args.relay, identity).await?;
    let stream = conn.changes(&identity.public_key, store, *next).await?;
    loop {
        let batches = if args.follow {
            conn.batches(&stream).await?
        } else {
            match tokio::time::timeout(args.idle, conn.batches(&stream)).await {
                Ok(b) => b?,
                Err(_) => {
                    conn.close().await;
                    return Ok(());
                }
            }
        };
        let mut lock = std::io::stdout().lock();
        for batch in &batches {
            let entries = match wharf_client::v4::decrypt_batch(identity, store, batch) {
                Ok(e) => e,
                Err(err) => {
                    writeln!(
                        lock,
                        "{}",
                        json!({"sequence": batch.sequence, "locked": true, "error": err.to_string()})
                    )?;
                    continue;
                }
            };
            for (sequence, entry) in entries {
                if sequence < *next {
                    continue;
                }
                *next = sequence + 1;
                let payload = wharf_protocol::v4::payload::decode(&entry.payload, &names)
                    .unwrap_or_else(|e| json!({"$error": e.to_string()}));
                if out.json {
                    writeln!(
                        lock,
                        "{}",
                        json!({
                            "publicKey": identity.public_key,
                            "store": store,
                            "sequence": sequence,
                            "id": uuid::Uuid::from_bytes(entry.id).to_string(),
                            "event": entry.event,
                            "primaryKey": entry.primary_key,
                            "payload": payload,
                        })
                    )?;
                } else {
                    writeln!(
                        lock,
                        "#{sequence:<6} {}  {}  {payload}",
                        entry.event, entry.primary_key
                    )?;
                }
            }
        }
    }
}
