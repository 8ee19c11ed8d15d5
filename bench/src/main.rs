//! `wharf-bench`: Wharf and Effect's own servers (v3, and 4.x on `/v4`), side by side, over the
//! same wire protocols.
//!
//! Each server runs as a child process pinned to one core; this load generator pins itself to
//! the other. Every scenario gets a fresh server; rounds alternate the order of the servers;
//! the report gives medians and the spread.
//!
//! ```text
//! cargo build --release -p wharf-relay -p wharf-bench
//! (cd bench/effect && npm ci) && (cd bench/effect-v4 && npm ci)
//! target/release/wharf-bench                      # full run, ~15 min: writes target/bench/
//! target/release/wharf-bench --docs docs/benchmarks.md
//! target/release/wharf-bench --smoke              # seconds; what CI runs
//! ```

mod report;
mod scenarios;
mod servers;
mod sys;
mod v4;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::report::{Results, Run};
use crate::scenarios::Sizes;
use crate::servers::{Kind, Programs, Server};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-bench",
    about = "Wharf against Effect's own servers (v3 and v4), over the wire"
)]
struct Cli {
    /// Servers to measure: any of wharf, effect-memory, effect-sql (Effect v3), effect-v4-memory,
    /// effect-v4-sql (Effect 4.x). The `v4-` scenarios run on Wharf's /v4 endpoint and the v4
    /// servers, the others on Wharf's /t endpoint and the v3 servers.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wharf,effect-memory,effect-sql,effect-v4-memory,effect-v4-sql"
    )]
    servers: Vec<String>,
    /// Scenarios to run (default: all): serial, pipelined-1x8, concurrent-64, pipelined-100x8,
    /// tenants, fanout-lockstep, fanout-flat, catchup-small, catchup-large, idle,
    /// active-tenants, cold-open, hibernated-tenants, v4-serial, v4-pipelined-1x8, v4-fanout,
    /// v4-catchup.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Rounds (medians and spread are over these).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A short run with small sizes: checks that everything works, measures little.
    #[arg(long)]
    smoke: bool,
    /// Seconds each throughput scenario runs.
    #[arg(long)]
    seconds: Option<u64>,
    /// Where results.json, table.md and the charts go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Also write this Markdown report (charts next to it, in `bench/`).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// The relay binary [default: wharf-relay next to this program].
    #[arg(long)]
    relay: Option<PathBuf>,
    /// Effect's server script [default: bench/effect/server.mjs of this repository].
    #[arg(long)]
    effect_server: Option<PathBuf>,
    /// Effect v4's server script [default: bench/effect-v4/server.mjs of this repository].
    #[arg(long)]
    effect_v4_server: Option<PathBuf>,
    /// Where servers keep their data (the disk under test) [default: the system temp dir].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Do not pin the servers and this program to separate cores.
    #[arg(long)]
    no_pin: bool,
}

const ALL: &[&str] = &[
    "serial",
    "pipelined-1x8",
    "concurrent-64",
    "pipelined-100x8",
    "tenants",
    "fanout-lockstep",
    "fanout-flat",
    "catchup-small",
    "catchup-large",
    "idle",
    "active-tenants",
    "cold-open",
    "hibernated-tenants",
    "v4-serial",
    "v4-pipelined-1x8",
    "v4-fanout",
    "v4-catchup",
];

/// A Wharf tenant with no connections closes its database after this long.
const IDLE_TIMEOUT: &str = "1s";
const HIBERNATED_AFTER: Duration = Duration::from_millis(2_500);

fn sizes(smoke: bool, seconds: Option<u64>) -> Sizes {
    if smoke {
        Sizes {
            run_for: Duration::from_secs(seconds.unwrap_or(1)),
            entry_bytes: 256,
            concurrent_connections: 8,
            tenants: 40,
            tenant_writers: 8,
            lockstep_subscribers: 10,
            lockstep_rounds: 50,
            flat_subscribers: 20,
            catch_up: vec![2_000, 10_000],
            idle_connections: 200,
            active_tenants: 40,
            cold_tenants: 5,
            hibernated_tenants: 20,
            awake_tenants: 10,
        }
    } else {
        Sizes {
            run_for: Duration::from_secs(seconds.unwrap_or(5)),
            entry_bytes: 256,
            concurrent_connections: 64,
            tenants: 1_000,
            tenant_writers: 64,
            lockstep_subscribers: 100,
            lockstep_rounds: 1_000,
            flat_subscribers: 1_000,
            catch_up: vec![100_000, 1_000_000],
            idle_connections: 10_000,
            active_tenants: 1_000,
            cold_tenants: 50,
            hibernated_tenants: 1_000,
            awake_tenants: 100,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let kinds = cli
        .servers
        .iter()
        .map(|s| Kind::parse(s).with_context(|| format!("unknown server {s:?}")))
        .collect::<Result<Vec<_>>>()?;
    let scenarios: Vec<String> = if cli.scenarios.is_empty() {
        ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        for s in &cli.scenarios {
            if !ALL.contains(&s.as_str()) {
                bail!("unknown scenario {s:?}; known: {}", ALL.join(", "));
            }
        }
        cli.scenarios.clone()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !cli.no_pin && cores >= 2;
    if pin {
        sys::pin_self(1)?;
    }
    let exe = std::env::current_exe()?;
    let programs = Programs {
        relay: cli
            .relay
            .clone()
            .unwrap_or_else(|| exe.with_file_name("wharf-relay")),
        effect_server: cli
            .effect_server
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("effect/server.mjs")),
        effect_v4_server: cli.effect_v4_server.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("effect-v4/server.mjs")
        }),
        cpu: 0,
    };
    if !programs.relay.exists() {
        bail!(
            "{} is missing: cargo build --release -p wharf-relay",
            programs.relay.display()
        );
    }
    if kinds
        .iter()
        .any(|k| matches!(k, Kind::EffectV4Memory | Kind::EffectV4Sql))
        && !programs
            .effect_v4_server
            .with_file_name("node_modules")
            .exists()
    {
        bail!(
            "Effect v4's server needs its packages: (cd {} && npm ci)",
            programs
                .effect_v4_server
                .parent()
                .unwrap_or(&programs.effect_v4_server)
                .display()
        );
    }
    if kinds
        .iter()
        .any(|k| matches!(k, Kind::EffectMemory | Kind::EffectSql))
        && !programs
            .effect_server
            .with_file_name("node_modules")
            .exists()
    {
        bail!(
            "Effect's server needs its packages: (cd {} && npm ci)",
            programs
                .effect_server
                .parent()
                .unwrap_or(&programs.effect_server)
                .display()
        );
    }
    let data_root = cli.data.clone().unwrap_or_else(std::env::temp_dir);
    let z = sizes(cli.smoke, cli.seconds);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results = Results {
        machine: sys::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        pinning: if pin {
            "servers on CPU 0 (taskset), load generator on CPU 1".into()
        } else {
            "none".into()
        },
        rounds: cli.rounds,
        ..Results::default()
    };
    runtime.block_on(async {
        for round in 0..cli.rounds {
            let fsync = sys::fdatasync_rate(&data_root, Duration::from_secs(2))?;
            eprintln!("round {}: fdatasync {fsync:.0}/s", round + 1);
            results.fdatasync_per_s.push(fsync);
            let mut order = kinds.clone();
            order.rotate_left(round % kinds.len().max(1));
            for kind in order {
                let mut kib_per_connection = 0.0;
                for scenario in &scenarios {
                    // Each protocol's scenarios run on the servers that speak it.
                    let v4 = scenario.starts_with("v4-");
                    if (v4 && !kind.speaks_v4()) || (!v4 && !kind.speaks_v3()) {
                        continue;
                    }
                    let wharf_only = ["cold-open", "hibernated-tenants"];
                    if wharf_only.contains(&scenario.as_str()) && kind != Kind::Wharf {
                        if round == 0 {
                            results.not_applicable.push((
                                scenario.clone(),
                                kind,
                                "Effect's server has no tenants to hibernate; everything stays in one process".into(),
                            ));
                        }
                        continue;
                    }
                    let server = Server::start(kind, &programs, &data_root, IDLE_TIMEOUT).await?;
                    let outcome = run(&server, scenario, &z, kib_per_connection).await;
                    server.stop().await?;
                    let (figures, curve) = match outcome {
                        Ok(x) => x,
                        Err(e) => {
                            // Reported in the table; the other scenarios still run.
                            eprintln!("  {} / {scenario}: FAILED: {e:#}", kind.label());
                            results.failures.push((round, scenario.clone(), kind, format!("{e:#}")));
                            continue;
                        }
                    };
                    eprintln!("  {} / {scenario}: {figures:?}", kind.label());
                    if scenario == "idle" {
                        kib_per_connection = figures.get("kib_per_connection").copied().unwrap_or(0.0);
                    }
                    if let Some(curve) = curve {
                        results.catch_up_curves.insert(kind.label().to_owned(), curve);
                    }
                    results.runs.push(Run {
                        round,
                        scenario: scenario.clone(),
                        server: kind,
                        figures,
                    });
                }
            }
        }
        anyhow::Ok(())
    })?;
    report::write(&results, &cli.out)?;
    println!("{}", report::table(&results));
    println!("results, table and charts in {}", cli.out.display());
    if let Some(docs) = &cli.docs {
        write_docs(&results, &cli, docs)?;
        println!("wrote {}", docs.display());
    }
    if !results.failures.is_empty() {
        bail!(
            "{} scenario run(s) failed (listed above)",
            results.failures.len()
        );
    }
    Ok(())
}

async fn run(
    server: &Server,
    scenario: &str,
    z: &Sizes,
    kib_per_connection: f64,
) -> Result<(scenarios::Figures, Option<Vec<(f64, f64)>>)> {
    Ok(match scenario {
        "serial" => (scenarios::serial(server, z).await?, None),
        "pipelined-1x8" => (scenarios::pipelined(server, z, 1, 8).await?, None),
        "concurrent-64" => (scenarios::concurrent(server, z).await?, None),
        "pipelined-100x8" => (scenarios::pipelined(server, z, 100, 8).await?, None),
        "tenants" => (scenarios::many_tenants(server, z).await?, None),
        "fanout-lockstep" => (scenarios::fanout_lockstep(server, z).await?, None),
        "fanout-flat" => (scenarios::fanout_flat(server, z).await?, None),
        "catchup-small" => {
            let (f, curve) = scenarios::catch_up(server, z, z.catch_up[0]).await?;
            (f, Some(curve))
        }
        "catchup-large" => (scenarios::catch_up(server, z, z.catch_up[1]).await?.0, None),
        "idle" => (scenarios::idle(server, z).await?, None),
        "active-tenants" => (
            scenarios::active_tenants(server, z, kib_per_connection).await?,
            None,
        ),
        "cold-open" => (
            scenarios::cold_open(server, z, HIBERNATED_AFTER).await?,
            None,
        ),
        "hibernated-tenants" => (
            scenarios::hibernated_tenants(server, z, HIBERNATED_AFTER).await?,
            None,
        ),
        "v4-serial" => (v4::serial(server, z).await?, None),
        "v4-pipelined-1x8" => (v4::pipelined(server, z).await?, None),
        "v4-fanout" => (v4::fanout(server, z).await?, None),
        "v4-catchup" => (v4::catch_up(server, z, z.catch_up[0]).await?, None),
        other => bail!("unknown scenario {other}"),
    })
}

/// `docs/benchmarks.md`: the table, the charts, the machine, and how to run it again.
fn write_docs(r: &Results, cli: &Cli, path: &std::path::Path) -> Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let charts = dir.join("bench");
    std::fs::create_dir_all(&charts)?;
    for f in ["writes.svg", "latency.svg", "catchup.svg"] {
        let from = cli.out.join(f);
        if from.exists() {
            std::fs::copy(&from, charts.join(f))?;
        }
    }
    let z = sizes(cli.smoke, cli.seconds);
    let text = format!(
        "# Benchmarks\n\n\
         Wharf against Effect's own v3 servers, measured in one run on one machine by a load \
         generator that speaks the v3 wire protocol (`bench/`). Wharf acknowledges a write only \
         after `fsync` (`synchronous=FULL`); Effect's memory server keeps everything in memory \
         and loses it on restart; Effect's SQL server is `SqlEventLogServer` on SQLite \
         (`@effect/sql-sqlite-node`, `synchronous=FULL`).\n\n\
         - Machine: {machine}\n\
         - Pinning: {pinning}\n\
         - Rounds: {rounds} (medians; the small numbers are the lowest and highest round), a fresh \
           server for every scenario, server order rotated each round\n\
         - Sizes: 256-byte entries; {secs} s per throughput scenario; {conc} connections for the \
           concurrent scenario; {tenants} tenants and {tw} writers for the tenant scenario; \
           {lock} lockstep and {flat} flat-out subscribers; catch-up of {c0} and {c1} entries; \
           {idle} idle connections; {active} active tenants; {cold} hibernated tenants opened cold; \
           {hib} hibernated tenants beside {awake} active ones\n\
         - Command: `{command}`\n\n\
         {table}\n\
         ![Writes per second](bench/writes.svg)\n\n\
         ![Latency](bench/latency.svg)\n\n\
         ![Catch-up](bench/catchup.svg)\n\n\
         ## Run it again\n\n\
         ```sh\n\
         cargo build --release -p wharf-relay -p wharf-bench\n\
         (cd bench/effect && npm ci)      # Effect's v3 servers (better-sqlite3 builds from source if needed)\n\
         (cd bench/effect-v4 && npm ci)   # Effect 4.x's servers, and the Node 24 they run on\n\
         target/release/wharf-bench --docs docs/benchmarks.md     # ~15 minutes\n\
         target/release/wharf-bench --smoke --rounds 1             # seconds: checks it all works\n\
         ```\n\n\
         What each scenario does is documented in `bench/src/scenarios.rs` (the `v4-` ones in \
         `bench/src/v4.rs`). Figures move between \
         machines and runs: compare only within one run.\n",
        machine = r.machine,
        pinning = r.pinning,
        rounds = r.rounds,
        secs = z.run_for.as_secs(),
        conc = z.concurrent_connections,
        tenants = z.tenants,
        tw = z.tenant_writers,
        lock = z.lockstep_subscribers,
        flat = z.flat_subscribers,
        c0 = z.catch_up[0],
        c1 = z.catch_up[1],
        idle = z.idle_connections,
        active = z.active_tenants,
        cold = z.cold_tenants,
        hib = z.hibernated_tenants,
        awake = z.awake_tenants,
        command = r.command,
        table = report::table(r),
    );
    // A hand-written `## Notes` section (what the numbers mean) survives regeneration.
    let notes = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find("\n## Notes\n").map(|i| old[i..].to_owned()))
        .unwrap_or_default();
    std::fs::write(path, text + &notes)?;
    Ok(())
}
