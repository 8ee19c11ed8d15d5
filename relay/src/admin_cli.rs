//! `wharf-relay admin`: the admin API from the command line, a table for people and `--json`
//! for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The relay, e.g. http://127.0.0.1:8787 (plain HTTP: a loopback or private address, or
    /// the relay's metrics_listen, which serves the admin API too).
    #[arg(long, env = "WHARF_ADMIN_URL", default_value = "http://127.0.0.1:8787")]
    url: url::Url,
    /// An admin token (`wharf-relay token issue --tenant '*' --actions admin`); not needed on
    /// a relay without access control.
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// List tenants: state, size, logs, entries, connections, last write.
    Tenants,
    /// Show one tenant and its logs.
    Tenant { tenant: String },
    /// Delete a tenant (refused while it has connections, unless --force closes them).
    DeleteTenant {
        tenant: String,
        #[arg(long)]
        force: bool,
    },
    /// Delete one log of a tenant (same rule for connections).
    DeleteLog {
        tenant: String,
        public_key: String,
        #[arg(long)]
        force: bool,
    },
    /// Revoke a token by its jti, or every token of a tenant issued until now.
    Revoke {
        #[arg(long, required_unless_present = "tenant", conflicts_with = "tenant")]
        jti: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Export a tenant's encrypted entries (NDJSON, docs/operations.md) to a file.
    Export {
        tenant: String,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Import an export into a tenant (refused over existing data unless --replace).
    Import {
        tenant: String,
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        #[arg(long)]
        replace: bool,
    },
}

/// The answer to one request.
struct Answer {
    status: u16,
    body: hyper::body::Incoming,
}

impl Answer {
    async fn bytes(self) -> anyhow::Result<Bytes> {
        Ok(self.body.collect().await?.to_bytes())
    }

    /// The body as JSON, or the relay's error as an error.
    async fn json(self) -> anyhow::Result<serde_json::Value> {
        let status = self.status;
        let bytes = self.bytes().await?;
        if !(200..300).contains(&status) {
            bail!(
                "the relay answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            );
        }
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).context("the relay's answer is not JSON")
    }
}

async fn request<B>(args: &AdminArgs, method: &str, path: &str, body: B) -> anyhow::Result<Answer>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    anyhow::ensure!(
        args.url.scheme() == "http",
        "the admin client speaks plain http://; use the relay's loopback or metrics_listen address"
    );
    let host = args.url.host_str().context("the URL has no host")?;
    let port = args.url.port_or_known_default().unwrap_or(80);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .with_context(|| format!("{host}:{port}: no answer"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let base = args.url.path().trim_end_matches('/');
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("host", format!("{host}:{port}"));
    if let Some(token) = &args.token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response = sender.send_request(req.body(body)?).await?;
    Ok(Answer {
        status: response.status().as_u16(),
        body: response.into_body(),
    })
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match &args.command {
        AdminCommand::Tenants => {
            let v = request(&args, "GET", "/admin/v1/tenants", empty())
                .await?
                .json()
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["tenants"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    vec![
                        text(&t["tenant"]),
                        text(&t["state"]),
                        size(t["size_bytes"].as_u64().unwrap_or(0)),
                        text(&t["logs"]),
                        text(&t["entries"]),
                        text(&t["connections"]),
                        when(t["last_write_unix_ms"].as_u64()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TENANT",
                    "STATE",
                    "SIZE",
                    "LOGS",
                    "ENTRIES",
                    "CONNECTIONS",
                    "LAST WRITE",
                ],
                &rows,
            );
        }
        AdminCommand::Tenant { tenant } => {
            let v = request(
                &args,
                "GET",
                &format!("/admin/v1/tenants/{}", seg(tenant)),
                empty(),
            )
            .await?
            .json()
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "tenant {}: {}, {}, {} entries in {} logs, {} connections, remoteId {}, last write {}",
                text(&v["tenant"]),
                text(&v["state"]),
                size(v["size_bytes"].as_u64().unwrap_or(0)),
                text(&v["entries"]),
                text(&v["logs"]),
                text(&v["connections"]),
                text(&v["remote_id"]),
                when(v["last_write_unix_ms"].as_u64())
            );
            let rows: Vec<Vec<String>> = v["log_states"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|l| {
                    vec![
                        text(&l["public_key"]),
                        text(&l["entries"]),
                        text(&l["next_sequence"]),
                    ]
                })
                .collect();
            print_table(&["LOG", "ENTRIES", "NEXT SEQUENCE"], &rows);
        }
        AdminCommand::DeleteTenant { tenant, force } => {
            let path = format!("/admin/v1/tenants/{}?force={force}", seg(tenant));
            request(&args, "DELETE", &path, empty())
                .await?
                .json()
                .await?;
            done(
                &args,
                serde_json::json!({ "deleted": tenant }),
                &format!("deleted tenant {tenant}"),
            );
        }
        AdminCommand::DeleteLog {
            tenant,
            public_key,
            force,
        } => {
            let path = format!(
                "/admin/v1/tenants/{}/logs/{}?force={force}",
                seg(tenant),
                seg(public_key)
            );
            request(&args, "DELETE", &path, empty())
                .await?
                .json()
                .await?;
            done(
                &args,
                serde_json::json!({ "deleted": { "tenant": tenant, "log": public_key } }),
                &format!("deleted log {public_key} of tenant {tenant}"),
            );
        }
        AdminCommand::Revoke { jti, tenant } => {
            let body = serde_json::to_vec(&match (jti, tenant) {
                (Some(jti), _) => serde_json::json!({ "jti": jti }),
                (None, Some(tenant)) => serde_json::json!({ "tenant": tenant }),
                (None, None) => bail!("give --jti or --tenant"),
            })?;
            let v = request(
                &args,
                "POST",
                "/admin/v1/revocations",
                Full::new(Bytes::from(body)),
            )
            .await?
            .json()
            .await?;
            done(&args, v.clone(), &format!("revoked: {v}"));
        }
        AdminCommand::Export { tenant, output } => export(&args, tenant, output).await?,
        AdminCommand::Import {
            tenant,
            input,
            replace,
        } => import(&args, tenant, input, *replace).await?,
    }
    Ok(())
}

fn done(args: &AdminArgs, json: serde_json::Value, human: &str) {
    if args.json {
        println!("{json}");
    } else {
        println!("{human}");
    }
}

async fn export(args: &AdminArgs, tenant: &str, output: &PathBuf) -> anyhow::Result<()> {
    let answer = request(
        args,
        "GET",
        &format!("/admin/v1/tenants/{}/export", seg(tenant)),
        empty(),
    )
    .await?;
    if answer.status != 200 {
        let status = answer.status;
        let body = answer.bytes().await?;
        bail!(
            "the relay answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let partial = output.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting {msg}: {bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(tenant.to_owned());
    let mut body = answer.body;
    let mut total = 0u64;
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the export was cut short")?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await?;
            total += data.len() as u64;
            bar.set_position(total);
            tail.extend_from_slice(&data);
            if tail.len() > 4096 {
                tail.drain(..tail.len() - 4096);
            }
        }
    }
    file.sync_all().await?;
    drop(file);
    bar.finish_and_clear();
    // The last line says how many entries there are; without it the export is incomplete.
    let last = String::from_utf8_lossy(&tail);
    let end: serde_json::Value = last
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["end"] == true)
        .context("the export has no end line: it was cut short; nothing written")?;
    let (from, to) = (partial.clone(), output.clone());
    tokio::task::spawn_blocking(move || wharf_durable::rename(&from, &to)).await??;
    done(
        args,
        serde_json::json!({ "tenant": tenant, "entries": end["entries"], "bytes": total, "file": output }),
        &format!(
            "exported {} entries of {tenant} ({}) to {}",
            end["entries"],
            size(total),
            output.display()
        ),
    );
    Ok(())
}

async fn import(
    args: &AdminArgs,
    tenant: &str,
    input: &PathBuf,
    replace: bool,
) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("cannot open {}", input.display()))?;
    let length = file.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(length);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} importing {msg}: {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(tenant.to_owned());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let progress = bar.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    progress.inc(n as u64);
                    if tx
                        .send(Ok(Frame::data(Bytes::copy_from_slice(&buf[..n]))))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let path = format!("/admin/v1/tenants/{}/import?replace={replace}", seg(tenant));
    let v = request(args, "POST", &path, StreamBody::new(stream))
        .await?
        .json()
        .await?;
    bar.finish_and_clear();
    done(
        args,
        v.clone(),
        &format!(
            "imported {} entries in {} logs into {tenant} (remoteId {})",
            v["entries"],
            v["logs"],
            text(&v["remote_id"])
        ),
    );
    Ok(())
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time as RFC 3339 (UTC), or "-".
fn when(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| rfc3339(ms / 1000))
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let out: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(crate) fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
