//! `wharf-relay`: the relay binary.

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
use wharf_relay::config::AuthMode;
use wharf_relay::{serve, Config, TenantId};

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
}

#[derive(clap::Args, Debug)]
struct IssueArgs {
    /// The tenant it opens.
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
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_env("WHARF_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
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
    }
}

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue(args) => {
            let config = Config::load(args.store.config.as_deref(), &args.store)?;
            let tenant = TenantId::parse(&args.tenant).with_context(|| {
                format!(
                    "invalid tenant {:?}: use [a-z0-9][a-z0-9_-]{{0,62}}",
                    args.tenant
                )
            })?;
            anyhow::ensure!(!args.sub.is_empty(), "--sub must not be empty");
            let key = RelayKey::load_or_create(&config.key_path())?;
            let now = unix_now();
            let claims = Claims {
                iss: config.auth.issuer.clone(),
                sub: args.sub,
                aud: Audience::One(config.auth.audience.clone()),
                tenant: tenant.as_str().to_owned(),
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
                rfc3339(claims.exp)
            );
            println!("{token}");
            Ok(())
        }
        TokenCommand::Revoke(args) => {
            let config = Config::load(args.store.config.as_deref(), &args.store)?;
            let store = RevocationStore::open(&config.revocations_path()).await?;
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
            let store = RevocationStore::open(&config.revocations_path()).await?;
            let list = store.list().await;
            store.close().await;
            for item in list? {
                match item {
                    Revoked::Token { jti, revoked_at } => {
                        println!("token  {jti}  revoked {}", rfc3339(revoked_at));
                    }
                    Revoked::Tenant { tenant, not_before } => {
                        println!(
                            "tenant {tenant}  tokens issued before {}",
                            rfc3339(not_before)
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn load(args: &ServeArgs) -> anyhow::Result<Config> {
    Ok(Config::load(args.config.as_deref(), args)?)
}

fn toml_string(config: &Config) -> anyhow::Result<String> {
    Ok(toml::to_string_pretty(config)?)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
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
    serve(listener, config, shutdown).await?;
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
