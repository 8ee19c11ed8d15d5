//! Two agents share a memory through a relay: a researcher records facts and tool results, a
//! planner follows them live and reads the converged last-writer-wins view.
//!
//! `cargo run -p wharf-client --example shared_memory` starts a relay in-process; set
//! `WHARF_RELAY=ws://host:port` to use a running one instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_client::{Client, Identity, Status};

#[derive(Serialize, Deserialize, Debug)]
struct Fact {
    statement: String,
    confidence: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct ToolResult {
    tool: String,
    output: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay_url = match std::env::var("WHARF_RELAY") {
        Ok(url) => url,
        Err(_) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let relay = wharf_relay::Relay::new(wharf_relay::Config {
                data: dir.path().join("relay"),
                ..Default::default()
            });
            tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
            format!("ws://{addr}")
        }
    };

    // One identity = one shared, encrypted log. Both agents hold it; each has its own journal.
    let memory = Identity::generate(&mut rand::rngs::OsRng);
    let open = |name: &str| {
        Client::builder(&relay_url, "demo")
            .identity(memory.clone())
            .journal(dir.path().join(format!("{name}.db")))
            .open()
    };
    let researcher = open("researcher").await?;
    let planner = open("planner").await?;

    // The planner follows the log live, in the order every replica applies it.
    let mut feed = planner.entries();
    let following = tokio::spawn(async move {
        for _ in 0..4 {
            let e = feed.next().await?;
            println!(
                "planner saw #{} {} {}",
                e.sequence, e.entry.event, e.entry.primary_key
            );
        }
        anyhow::Ok(())
    });

    researcher
        .append(
            "FactLearned",
            "capital-of-france",
            &Fact {
                statement: "Paris is the capital of France".into(),
                confidence: 0.7,
            },
        )
        .await?;
    researcher
        .append(
            "ToolResult",
            "search:population-paris",
            &ToolResult {
                tool: "search".into(),
                output: "2.1 million (2023)".into(),
            },
        )
        .await?;
    // The planner corrects a fact; last writer wins on (event, primaryKey).
    planner
        .append(
            "FactLearned",
            "capital-of-france",
            &Fact {
                statement: "Paris is the capital of France".into(),
                confidence: 0.99,
            },
        )
        .await?;
    researcher
        .append(
            "FactLearned",
            "river-of-paris",
            &Fact {
                statement: "The Seine flows through Paris".into(),
                confidence: 0.95,
            },
        )
        .await?;

    // `flush` means "my entries are on the relay"; the other agent's arrive through the stream.
    // Both agents have the whole memory once each has applied all four entries.
    for agent in [&researcher, &planner] {
        tokio::time::timeout(Duration::from_secs(10), agent.flush()).await??;
        let mut applied = agent.entries();
        for _ in 0..4 {
            tokio::time::timeout(Duration::from_secs(10), applied.next()).await??;
        }
    }
    tokio::time::timeout(Duration::from_secs(10), following).await???;
    assert_eq!(*planner.status().borrow(), Status::Live);

    let (a, b) = (researcher.view().await?, planner.view().await?);
    assert_eq!(
        a.to_json_map(),
        b.to_json_map(),
        "both agents hold the same memory"
    );
    println!(
        "\nshared memory ({} records, identical on both agents):",
        b.len()
    );
    for ((event, key), record) in b.iter() {
        let payload = wharf_protocol::payload::to_json(&record.entry.payload)?;
        println!("  {event:<12} {key:<26} {payload}");
    }
    researcher.close().await?;
    planner.close().await?;
    Ok(())
}
