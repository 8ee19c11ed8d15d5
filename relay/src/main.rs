//! `wharf-relay`: the relay binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wharf_relay::{serve, Config};

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
    }
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
    // Handlers first: a SIGTERM that follows the line below must stop the relay gracefully.
    let shutdown = shutdown_signal()?;
    // Scripts and tests read this line to find the port when listening on port 0.
    println!("wharf-relay listening on http://{addr} (WebSocket: ws://{addr}/t/<tenant>)");
    serve(listener, config, shutdown).await?;
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
