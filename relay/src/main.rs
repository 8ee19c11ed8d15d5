//! `wharf-relay`: the relay binary.

mod admin_cli;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wharf_relay::auth::revocation::{RevocationStore, Revoked};
use wharf_relay::auth::token::{Action, Audience, Claims, RelayKey};
use wharf_relay::auth::unix_now;
use wharf_relay::config::{AuthMode, LogFormat};
use wharf_relay::{Config, Relay, TenantId};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-relay",
    version,
    about = "Wharf: a relay for end-to-end-encrypted agent event logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, WHARF_* and flags) as TOML.
    Config(ServeArgs),
    /// Mint and revoke access tokens (works while the relay runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Take a consistent snapshot of every tenant (and the relay's key and revocation list)
    /// into an empty directory, while the relay serves; writes DIR/manifest.json last.
    Backup {
        /// The relay's data directory.
        #[arg(long)]
        data: PathBuf,
        /// Where the backup goes (empty or new).
        #[arg(long)]
        to: PathBuf,
        /// Print the manifest as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Check a backup against its manifest and bring it into an empty data directory (the
    /// relay must not be running on it).
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to fill (empty or new).
        #[arg(long)]
        data: PathBuf,
    },
    /// Administer a running relay over its admin API (tenants, deletion, revocation, export
    /// and import).
    Admin(admin_cli::AdminArgs),
    /// GET a URL of a running relay (`/healthz`, `/readyz`); exit 0 on a 2xx answer, 1
    /// otherwise. For container health checks, where no curl is at hand.
    Probe {
        /// For example http://127.0.0.1:8787/healthz (plain HTTP).
        url: url::Url,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Mint a token signed with the relay's key; prints the token alone on stdout.
    Issue(IssueArgs),
    /// Revoke a token by its jti, or with --tenant every token of a tenant issued until now.
    /// Open connections holding it are closed within about a second.
    Revoke(RevokeArgs),
    /// List revoked tokens and tenant-wide revocations.
    ListRevoked(StoreArgs),
}

/// Where the relay keeps its key and revocation list.
#[derive(clap::Args, Debug, Serialize)]
struct StoreArgs {
    /// The relay's TOML configuration file (for `data` and `[auth]`).
    #[arg(long, env = "WHARF_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The relay's data directory [default: ./data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    /// The relays' postgres:// URL, when they use the Postgres store: the revocation list is
    /// in that database (also `WHARF_STORE`, or `store` in the configuration file).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
}

#[derive(clap::Args, Debug)]
struct IssueArgs {
    /// The tenant it opens; `*` for an admin token over every tenant (admin API only).
    #[arg(long)]
    tenant: String,
    /// What it allows: any of read, write, admin.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_action)]
    actions: Vec<Action>,
    /// The logs (publicKeys) it may touch [default: every log of the tenant].
    #[arg(long, value_delimiter = ',')]
    logs: Option<Vec<String>>,
    /// How long it is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Who holds it (shown in the relay's logs).
    #[arg(long, default_value = "wharf-relay-cli")]
    sub: String,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args, Debug)]
struct RevokeArgs {
    /// The jti of the token to revoke.
    #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
    jti: Option<String>,
    /// Revoke every token of this tenant issued until now.
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

fn parse_action(s: &str) -> Result<Action, String> {
    Action::parse(s).ok_or_else(|| format!("unknown action {s:?}: use read, write or admin"))
}

#[derive(clap::Args, Debug, Serialize)]
struct ServeArgs {
    /// TOML configuration file; every setting can also be given as WHARF_<SETTING>.
    #[arg(long, env = "WHARF_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787]. Port 0 picks a free port.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    /// Where tenants live: a postgres:// URL shares one PostgreSQL database between any
    /// number of relays [default: one SQLite file per tenant under --data]. Env WHARF_STORE.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<String>,
    /// Serve /metrics on this address instead (plain HTTP, for a private network).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines for people (text) or log shippers (json) [default: text].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "AuthFlags::is_empty")]
    auth: AuthFlags,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsFlags::is_empty")]
    tls: TlsFlags,
}

#[derive(clap::Args, Debug, Serialize)]
struct TlsFlags {
    /// PEM certificate chain, leaf first: serve wss:// and https:// (with --tls-key). Reloaded
    /// on SIGHUP and when the file changes. Setting `tls.cert`.
    #[arg(long = "tls-cert", requires = "key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert. Setting `tls.key`.
    #[arg(long = "tls-key", requires = "cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<PathBuf>,
}

impl TlsFlags {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none()
    }
}

#[derive(clap::Args, Debug, Serialize)]
struct AuthFlags {
    /// token: every connection needs a token; none: no access control [default: none on a
    /// loopback address, token on any other]. Setting `auth.mode`, env WHARF_AUTH.
    #[arg(long = "auth", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<AuthMode>,
    /// Allow --auth none on a non-loopback address (something in front checks access).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure_no_auth: bool,
}

impl AuthFlags {
    fn is_empty(&self) -> bool {
        self.mode.is_none() && !self.insecure_no_auth
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = load(&args)?;
            let filter =
                EnvFilter::try_from_env("WHARF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match config.log_format {
                LogFormat::Text => logs.init(),
                // Each line carries the current span (tenant, conn, sub) and the span list.
                LogFormat::Json => logs.json().with_current_span(true).init(),
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(run(config))
        }
        Command::Config(args) => {
            let config = load(&args)?;
            print!("{}", toml_string(&config)?);
            Ok(())
        }
        Command::Token(command) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(token(command)),
        Command::Backup { data, to, json } => {
            let started = std::time::Instant::now();
            let bar = progress_bar();
            let manifest = wharf_store::backup::backup(&data, &to, |p| {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(p.path.to_owned());
            })?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            } else {
                println!("{}", summary(&manifest, started.elapsed(), &to));
            }
            Ok(())
        }
        Command::Restore { from, data } => {
            let started = std::time::Instant::now();
            let bar = progress_bar();
            let manifest = wharf_store::backup::restore(&from, &data, |p| {
                bar.set_length(p.total as u64);
                bar.set_position(p.done as u64);
                bar.set_message(p.path.to_owned());
            })?;
            bar.finish_and_clear();
            println!("restored: {}", summary(&manifest, started.elapsed(), &data));
            Ok(())
        }
        Command::Admin(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(admin_cli::run(args)),
        Command::Probe { url, timeout } => {
            let status = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(async { tokio::time::timeout(timeout, probe(&url)).await })
                .map_err(|_| anyhow::anyhow!("{url}: no answer within {timeout:?}"))??;
            println!("{url}: {status}");
            anyhow::ensure!((200..300).contains(&status), "{url} answered {status}");
            Ok(())
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// "3 tenants, 12 logs, 40,000 entries, 5.1 MB in 0.4 s → DIR".
fn summary(
    m: &wharf_store::backup::Manifest,
    took: std::time::Duration,
    at: &std::path::Path,
) -> String {
    let logs: usize = m.tenants.iter().map(|t| t.logs.len()).sum();
    let entries: u64 = m
        .tenants
        .iter()
        .flat_map(|t| &t.logs)
        .map(|l| l.entries)
        .sum();
    let bytes: u64 = m
        .tenants
        .iter()
        .map(|t| t.file.bytes)
        .chain(m.files.iter().map(|f| f.bytes))
        .sum();
    format!(
        "{} tenants, {logs} logs, {entries} entries, {:.1} MB in {:.2} s -> {}",
        m.tenants.len(),
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        at.display()
    )
}

/// One HTTP/1.1 GET over plain TCP; the status code of the answer.
async fn probe(url: &url::Url) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    anyhow::ensure!(url.scheme() == "http", "probe speaks plain http:// only");
    let host = url.host_str().context("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let mut tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        &url[url::Position::BeforePath..]
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    // The status line is all that matters: "HTTP/1.1 200 OK".
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = tcp.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the connection closed before an answer");
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {:?}", line.lines().next()))
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            let config = Config::load(args.store.config.as_deref(), &args.store)?;
            // `*` is every tenant, for the admin API only.
            let tenant = if args.tenant == wharf_relay::auth::ALL_TENANTS {
                anyhow::ensure!(
                    args.actions == [Action::Admin],
                    "--tenant '*' is for admin tokens only: use --actions admin"
                );
                args.tenant.clone()
            } else {
                TenantId::parse(&args.tenant)
                    .with_context(|| {
                        format!(
                            "invalid tenant {:?}: use [a-z0-9][a-z0-9_-]{{0,62}}, or '*' for an \
                             admin token over every tenant",
                            args.tenant
                        )
                    })?
                    .as_str()
                    .to_owned()
            };
            anyhow::ensure!(!args.sub.is_empty(), "--sub must not be empty");
            let key = RelayKey::load_or_create(&config.key_path())?;
            let now = unix_now();
            let claims = Claims {
                iss: config.auth.issuer.clone(),
                sub: args.sub,
                aud: Audience::One(config.auth.audience.clone()),
                tenant,
                actions: args.actions,
                logs: args.logs,
                exp: now.saturating_add(args.ttl.as_secs()),
                iat: now,
                jti: uuid::Uuid::new_v4().to_string(),
            };
            let token = key.mint(&claims)?;
            let actions: Vec<String> = claims.actions.iter().map(ToString::to_string).collect();
            eprintln!(
                "token for tenant {} ({}), jti {}, expires {}",
                claims.tenant,
                actions.join(","),
                claims.jti,
                admin_cli::rfc3339(claims.exp)
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let config = Config::load(args.store.config.as_deref(), &args.store)?;
            let store = RevocationStore::open(&config.store_config(), None).await?;
            let now = unix_now();
            let result = match (&args.jti, &args.tenant) {
                (Some(jti), _) => store.revoke(jti, now).await.map(|new| {
                    if new {
                        eprintln!("revoked {jti}");
                    } else {
                        eprintln!("{jti} was already revoked");
                    }
                }),
                (None, Some(tenant)) => {
                    let tenant = TenantId::parse(tenant)
                        .with_context(|| format!("invalid tenant {tenant:?}"))?;
                    // Tokens carry whole seconds: one issued in this second is revoked too.
                    store
                        .revoke_tenant(tenant.as_str(), now + 1)
                        .await
                        .map(|()| {
                            eprintln!(
                                "revoked every token of {} issued until now",
                                tenant.as_str()
                            )
                        })
                }
                (None, None) => anyhow::bail!("give the jti of a token, or --tenant"),
            };
            store.close().await;
            Ok(result?)
        }
        TokenCommand::ListRevoked(args) => {
            let config = Config::load(args.config.as_deref(), &args)?;
            let store = RevocationStore::open(&config.store_config(), None).await?;
            let list = store.list().await;
            store.close().await;
            for item in list? {
                match item {
                    Revoked::Token { jti, revoked_at } => {
                        println!("token  {jti}  revoked {}", admin_cli::rfc3339(revoked_at));
                    }
                    Revoked::Tenant { tenant, not_before } => {
                        println!(
                            "tenant {tenant}  tokens issued before {}",
                            admin_cli::rfc3339(not_before)
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    Ok(Config::load(args.config.as_deref(), args)?)
}

/// The effective configuration as TOML, webhook secrets redacted (it is printed).
fn toml_string(config: &Config) -> anyhow::Result<String> {
    let mut shown = config.clone();
    shown.store = shown.store.as_deref().map(wharf_relay::redact_store_url);
    for settings in shown.tenants.values_mut() {
        for hook in settings.webhooks.iter_mut().flatten() {
            hook.secret = "whsec_(redacted)".into();
        }
    }
    Ok(toml::to_string_pretty(&shown)?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics = match config.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} for metrics"))?,
        ),
        None => None,
    };
    // Refuse an exposed relay without access control, or a certificate that does not load,
    // before announcing anything.
    wharf_relay::auth::effective_mode(&config, addr)?;
    let tls = wharf_relay::tls::check(&config.tls)?;
    // Handlers first: a SIGTERM that follows the line below must stop the relay gracefully.
    let shutdown = shutdown_signal()?;
    // SIGHUP reloads the TLS certificate. Its default action ends a process: take it over now,
    // before the line below, so a service manager's "reload" never ends the relay.
    take_sighup(tls)?;
    // Scripts and tests read this line to find the port when listening on port 0.
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("wharf-relay listening on {http}://{addr} (WebSocket: {ws}://{addr}/t/<tenant>)");
    if let Some(metrics) = &metrics {
        println!(
            "wharf-relay metrics on http://{}/metrics",
            metrics.local_addr()?
        );
    }
    Relay::new(config)
        .serve_with(listener, metrics, shutdown)
        .await?;
    Ok(())
}

/// Installs a SIGHUP handler. With TLS, the relay's certificate watcher answers the signal
/// (tokio keeps a handler installed for the life of the process once one is registered);
/// without, it is logged and otherwise ignored.
fn take_sighup(tls: bool) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        if !tls {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: no TLS certificate to reload; nothing to do");
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
    Ok(())
}

/// Installs the SIGINT/SIGTERM handlers now and returns the future that waits for either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received");
    })
}
