//! The Rust SDK and the `wharf` CLI against a real relay on 127.0.0.1:0.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use wharf_client::{Client, Delivered, Grant, Identity, NewEvent, Status};
use wharf_protocol::{EncryptedEntry, RemoteEntry};
use wharf_relay::auth::token::Action;
use wharf_relay::Config;
use wharf_tests::{wharf_binary, TestRelay, PATIENCE};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Fact {
    text: String,
    n: u32,
}

fn identity() -> Identity {
    Identity::generate(&mut rand::rngs::OsRng)
}

async fn open(addr: SocketAddr, tenant: &str, id: &Identity, journal: &Path) -> Client {
    Client::builder(format!("ws://{addr}"), tenant)
        .identity(id.clone())
        .journal(journal)
        .configure(|c| {
            c.backoff_base = Duration::from_millis(20);
            c.backoff_max = Duration::from_millis(500);
        })
        .open()
        .await
        .expect("open client")
}

/// Settings for a relay whose data outlives it (restarted or wiped by the test).
fn relay_config(dir: &Path) -> Config {
    Config {
        data: dir.join("relay"),
        ..Config::default()
    }
}

async fn take(client: &Client, n: usize) -> Vec<Delivered> {
    let mut stream = client.entries();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} entries delivered in time", out.len()));
        out.push(next.expect("stream"));
    }
    out
}

async fn flush(client: &Client) {
    tokio::time::timeout(PATIENCE, client.flush())
        .await
        .expect("flush in time")
        .expect("flush");
}

async fn wait_status(client: &Client, what: &str, pred: impl Fn(&Status) -> bool) {
    let mut status = client.status();
    tokio::time::timeout(PATIENCE, status.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "status never became {what}: {:?}",
                *client.status().borrow()
            )
        })
        .expect("status");
}

async fn facts(client: &Client, prefix: &str, count: u32) {
    let events = (0..count)
        .map(|n| {
            NewEvent::new(
                "FactLearned",
                format!("{prefix}-{n}"),
                &Fact {
                    text: format!("{prefix} {n}"),
                    n,
                },
            )
            .expect("event")
        })
        .collect();
    client
        .append_many(client.default_log(), events)
        .await
        .expect("append");
}

/// Every entry of `log` the relay holds, read with a raw protocol client.
async fn on_relay(relay_url: &str, log: &str, count: usize) -> Vec<RemoteEntry> {
    let mut raw = wharf_tests::Client::connect(relay_url)
        .await
        .expect("connect");
    raw.subscribe(log, 0).await.expect("subscribe");
    let got = raw.collect(log, count).await.expect("collect");
    // Nothing beyond `count`: a Ping's Pong comes back with nothing queued before it.
    assert!(
        raw.ping_pong().await.expect("pong").is_empty(),
        "more than {count} entries on the relay"
    );
    got
}

fn assert_exactly_once(entries: &[RemoteEntry]) {
    wharf_tests::assert_dense(entries, 0);
    let ids: HashSet<&Bytes> = entries.iter().map(|e| &e.entry_id).collect();
    assert_eq!(ids.len(), entries.len(), "an entry is on the relay twice");
}

#[tokio::test]
async fn two_clients_converge_in_one_order() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    let a = open(relay.addr, "acme", &id, &dir.path().join("a.db")).await;
    let b = open(relay.addr, "acme", &id, &dir.path().join("b.db")).await;
    let (ra, rb) = tokio::join!(
        async {
            for i in 0..10 {
                facts(&a, &format!("a{i}"), 5).await;
            }
        },
        async {
            for i in 0..10 {
                facts(&b, &format!("b{i}"), 5).await;
            }
        }
    );
    let _ = (ra, rb);
    // Both write the same key last-writer-wins: later entry id wins everywhere.
    a.append(
        "Memory",
        "shared",
        &Fact {
            text: "from a".into(),
            n: 1,
        },
    )
    .await
    .expect("append");
    b.append(
        "Memory",
        "shared",
        &Fact {
            text: "from b".into(),
            n: 2,
        },
    )
    .await
    .expect("append");
    flush(&a).await;
    flush(&b).await;
    let da = take(&a, 102).await;
    let db = take(&b, 102).await;
    let order = |d: &[Delivered]| {
        d.iter()
            .map(|e| (e.sequence, e.entry.id))
            .collect::<Vec<_>>()
    };
    assert_eq!(order(&da), order(&db), "one order on both replicas");
    assert_eq!(
        da.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        (0..102).collect::<Vec<_>>()
    );
    assert_eq!(da.iter().filter(|d| d.own).count(), 51);
    assert_eq!(db.iter().filter(|d| d.own).count(), 51);
    let (va, vb) = (a.view().await.expect("view"), b.view().await.expect("view"));
    let records = |v: &wharf_client::View| {
        v.iter()
            .map(|(k, r)| {
                (
                    k.0.to_owned(),
                    k.1.to_owned(),
                    r.log.clone(),
                    r.entry.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(records(&va), records(&vb), "the same view on both replicas");
    assert_eq!(va.len(), 101);
    let winner = va
        .get("Memory", "shared")
        .expect("record")
        .payload_as::<Fact>()
        .expect("fact");
    assert_eq!(winner.text, "from b", "the later entry id wins");
    assert_eq!(va.to_json_map(), vb.to_json_map());
}

#[tokio::test]
async fn several_logs_on_one_connection_with_a_grant() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (x, y) = (identity(), identity());
    let a = open(relay.addr, "acme", &x, &dir.path().join("a.db")).await;
    // B writes log Y and reads log X through a grant sealed to Y's x25519 key.
    let to = y.grant_keys().expect("native").public_key();
    let grant = Grant::seal(x.read_key(), &to, &mut rand::rngs::OsRng)
        .expect("seal")
        .to_string();
    let read_x = y
        .grant_keys()
        .expect("native")
        .open(&Grant::parse(&grant).expect("parse"))
        .expect("open");
    let b = Client::builder(format!("ws://{}", relay.addr), "acme")
        .identity(y.clone())
        .read_key(read_x)
        .journal(dir.path().join("b.db"))
        .open()
        .await
        .expect("open");
    facts(&a, "x", 10).await;
    facts(&b, "y", 5).await;
    flush(&a).await;
    flush(&b).await;
    let got = take(&b, 15).await;
    let per_log = |log: &str| got.iter().filter(|d| d.log == log).count();
    assert_eq!(per_log(x.log()), 10);
    assert_eq!(per_log(y.log()), 5);
    assert!(matches!(
        b.append_many(x.log(), vec![NewEvent::new("E", "k", &1).expect("event")])
            .await,
        Err(wharf_client::Error::ReadOnly(_))
    ));
    assert_eq!(
        a.view().await.expect("view").len(),
        10,
        "A holds only its own log"
    );
    assert_eq!(b.view().await.expect("view").len(), 15);
}

#[tokio::test]
async fn appends_while_the_relay_is_down_are_delivered_once_it_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An address with nothing listening yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let id = identity();
    let a = open(addr, "acme", &id, &dir.path().join("a.db")).await;
    wait_status(&a, "offline", |s| matches!(s, Status::Offline { .. })).await;
    // Appending does not wait for the relay.
    for i in 0..20 {
        a.append(
            "FactLearned",
            &format!("k{i}"),
            &Fact {
                text: "offline".into(),
                n: i,
            },
        )
        .await
        .expect("append offline");
    }
    assert_eq!(a.pending().await.expect("pending"), 20);
    let config = relay_config(dir.path());
    let relay = TestRelay::start_at(config, addr).await;
    flush(&a).await;
    wait_status(&a, "live", |s| *s == Status::Live).await;
    let b = open(relay.addr, "acme", &id, &dir.path().join("b.db")).await;
    let got = take(&b, 20).await;
    let ns: Vec<u32> = got
        .iter()
        .map(|d| d.payload_as::<Fact>().expect("fact").n)
        .collect();
    assert_eq!(ns, (0..20).collect::<Vec<_>>(), "in append order");
    assert_exactly_once(&on_relay(&relay.url("acme"), id.log(), 20).await);
}

#[tokio::test]
async fn a_relay_restarted_mid_stream_is_rejoined_without_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay_config(dir.path());
    let relay = TestRelay::start_config(config.clone()).await;
    let addr = relay.addr;
    let id = identity();
    let writer = open(addr, "acme", &id, &dir.path().join("w.db")).await;
    let reader = open(addr, "acme", &id, &dir.path().join("r.db")).await;
    const TOTAL: usize = 1500;
    let w = writer.clone();
    let writing = tokio::spawn(async move {
        for i in 0..(TOTAL / 10) as u32 {
            facts(&w, &format!("w{i}"), 10).await;
            tokio::task::yield_now().await;
        }
    });
    let mut stream = reader.entries();
    let mut got = Vec::new();
    while got.len() < 300 {
        got.push(
            tokio::time::timeout(PATIENCE, stream.next())
                .await
                .expect("in time")
                .expect("entry"),
        );
    }
    let mut statuses = reader.status();
    relay.shutdown().await;
    let relay = TestRelay::start_at(config, addr).await;
    // The reader noticed: it left Live, then came back by itself.
    tokio::time::timeout(PATIENCE, statuses.wait_for(|s| *s != Status::Live))
        .await
        .expect("left live")
        .expect("status");
    writing.await.expect("writer");
    flush(&writer).await;
    while got.len() < TOTAL {
        got.push(
            tokio::time::timeout(PATIENCE, stream.next())
                .await
                .expect("in time")
                .expect("entry"),
        );
    }
    wait_status(&reader, "live", |s| *s == Status::Live).await;
    assert_eq!(
        got.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        (0..TOTAL as u64).collect::<Vec<_>>()
    );
    let ids: HashSet<[u8; 16]> = got.iter().map(|d| d.entry.id).collect();
    assert_eq!(ids.len(), TOTAL);
    assert_exactly_once(&on_relay(&relay.url("acme"), id.log(), TOTAL).await);
}

#[tokio::test]
async fn a_wiped_relay_is_refilled_by_its_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = relay_config(dir.path());
    let relay = TestRelay::start_config(config.clone()).await;
    let addr = relay.addr;
    let id = identity();
    let a = open(addr, "acme", &id, &dir.path().join("a.db")).await;
    let b = open(addr, "acme", &id, &dir.path().join("b.db")).await;
    facts(&a, "a", 30).await;
    facts(&b, "b", 30).await;
    flush(&a).await;
    flush(&b).await;
    take(&a, 60).await;
    let old_remote = a.remote_id().expect("connected");

    relay.shutdown().await;
    std::fs::remove_dir_all(&config.data).expect("wipe");
    let relay = TestRelay::start_at(config, addr).await;
    for c in [&a, &b] {
        let mut status = c.status();
        tokio::time::timeout(PATIENCE, async {
            while c.remote_id().as_ref() == Some(&old_remote)
                || *status.borrow_and_update() != Status::Live
            {
                status.changed().await.expect("status");
            }
        })
        .await
        .expect("reconnected to the new relay");
        flush(c).await;
    }
    assert_ne!(a.remote_id(), Some(old_remote));
    // Both clients uploaded everything they knew; the relay kept each entry once.
    let stored = on_relay(&relay.url("acme"), id.log(), 60).await;
    assert_exactly_once(&stored);
    // And every entry on it still opens with the identity.
    for e in &stored {
        id.read_key()
            .open(&e.iv, &e.entry_id, &e.encrypted_entry)
            .expect("opens");
    }
}

#[tokio::test]
async fn entries_that_do_not_decrypt_are_kept_aside_and_the_log_goes_on() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    // Someone who knows the log name (it is a bearer name) writes garbage into it.
    let mut raw = relay.client("acme").await;
    let junk = EncryptedEntry {
        entry_id: Bytes::from(vec![7u8; 16]),
        encrypted_entry: Bytes::from_static(b"not a ciphertext at all"),
    };
    raw.write_acked(id.log(), vec![junk]).await.expect("ack");
    let a = open(relay.addr, "acme", &id, &dir.path().join("a.db")).await;
    facts(&a, "after", 3).await;
    flush(&a).await;
    let got = take(&a, 3).await;
    assert_eq!(
        got.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let stats = a.journal().stats(id.log()).await.expect("stats");
    assert_eq!(stats.undecryptable, 1);
    assert_eq!(*a.status().borrow(), Status::Live);
}

async fn run_wharf(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(wharf_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wharf");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).await.expect("write stdin");
    }
    drop(input);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("wharf finished in time")
        .expect("wharf output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_client_killed_mid_upload_ends_with_every_entry_on_the_relay_once() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id_file = dir.path().join("agent.id");
    let journal = dir.path().join("agent.db");
    let id = identity();
    std::fs::write(&id_file, id.to_string()).expect("identity file");
    let base = format!("ws://{}", relay.addr);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "push",
            "--json",
            "-i",
            id_file.to_str().expect("utf8"),
            "--journal",
            journal.to_str().expect("utf8"),
            "--relay",
            &base,
            "--tenant",
            "acme",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut ndjson = String::new();
    for i in 0..30_000 {
        ndjson.push_str(&format!(
            "{{\"event\":\"Tick\",\"primaryKey\":\"k{}\",\"payload\":{{\"n\":{i}}}}}\n",
            i % 100
        ));
    }
    let mut child = tokio::process::Command::new(wharf_binary())
        .args(args(&[]))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let feeding = tokio::spawn(async move {
        let _ = input.write_all(ndjson.as_bytes()).await;
    });
    // Kill it as soon as its first upload reaches the relay.
    let mut watcher = relay.client("acme").await;
    watcher.subscribe(id.log(), 0).await.expect("subscribe");
    let first = loop {
        match watcher.recv().await {
            Ok(wharf_protocol::RelayMsg::Changes { entries, .. }) => break Ok(entries.len()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let _ = feeding.await;
    assert!(first.expect("an upload started") > 0);

    // Restarted with nothing new: it uploads what the journal still owes.
    let (code, out, err) = run_wharf(
        &args(&[]).iter().map(String::as_str).collect::<Vec<_>>(),
        Some(b""),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(report["acked"], true);
    let journal = wharf_client::Journal::open(&journal)
        .await
        .expect("journal");
    let stats = journal.stats(id.log()).await.expect("stats");
    assert!(stats.own > 0);
    let stored = on_relay(&relay.url("acme"), id.log(), stats.own as usize).await;
    assert_exactly_once(&stored);
    let mut mine = HashSet::new();
    let mut after = 0;
    loop {
        let page = journal
            .entries(id.log(), after, 5000)
            .await
            .expect("entries");
        let Some(last) = page.last() else { break };
        after = last.local_seq;
        mine.extend(page.into_iter().map(|e| e.entry.id.to_vec()));
    }
    let theirs: HashSet<Vec<u8>> = stored.iter().map(|e| e.entry_id.to_vec()).collect();
    assert_eq!(
        mine, theirs,
        "the relay holds exactly the journal's entries"
    );
}

#[tokio::test]
async fn cli_round_trip_and_clear_errors() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let base = format!("ws://{}", relay.addr);
    let common = |cmd: &str, id: &str| -> Vec<String> {
        vec![
            cmd.into(),
            "--json".into(),
            "-i".into(),
            d(id),
            "--relay".into(),
            base.clone(),
            "--tenant".into(),
            "cli".into(),
        ]
    };
    let run = |args: Vec<String>, stdin: Option<&'static [u8]>| async move {
        run_wharf(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin).await
    };

    let (code, out, err) = run(
        vec!["keygen".into(), "--json".into(), "-o".into(), d("owner.id")],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let owner: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let (code, _, err) = run(vec!["keygen".into(), "-o".into(), d("owner.id")], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");

    let mut push = common("push", "owner.id");
    push.extend(["--journal".into(), d("owner.db")]);
    let (code, out, err) = run(push.clone(), Some(b"{\"event\":\"Note\",\"primaryKey\":\"n1\",\"payload\":{\"text\":\"hello\"}}\n\n{\"event\":\"Note\",\"primaryKey\":\"n2\",\"payload\":[1,2]}\n")).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim()).expect("json")["appended"],
        2
    );

    let (code, out, err) = run(common("tail", "owner.id"), None).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["payload"]["text"], "hello");
    assert_eq!(rows[1]["sequence"], 1);

    // A snapshot of the log's state, published from the journal.
    let mut snapshot = common("snapshot", "owner.id");
    snapshot.extend(["--journal".into(), d("owner.db")]);
    let (code, out, err) = run(snapshot, None).await;
    assert_eq!(code, 0, "{err}");
    let stored: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (stored["sequence"].as_u64(), stored["records"].as_u64()),
        (Some(1), Some(2)),
        "{out}"
    );
    let mut reader =
        wharf_tests::Client::connect_with_protocol(&relay.url("cli"), Some("wharf.v1"))
            .await
            .expect("connect");
    reader
        .send(&wharf_protocol::ClientMsg::RequestChanges {
            public_key: owner["log"].as_str().expect("log").to_owned(),
            start_sequence: 0,
            snapshot: true,
        })
        .await
        .expect("subscribe");
    loop {
        match reader.recv().await.expect("recv") {
            wharf_protocol::RelayMsg::Snapshot { sequence, .. } => {
                assert_eq!(sequence, 1);
                break;
            }
            wharf_protocol::RelayMsg::CaughtUp { .. } => panic!("no snapshot on the relay"),
            _ => {}
        }
    }

    // `wharf tail | head`: the reader is gone before the first line; tail exits quietly.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let tail = common("tail", "owner.id");
    let out = tokio::process::Command::new(wharf_binary())
        .args(&tail[..1])
        .args(&tail[2..])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out)
        .await
        .expect("tail finished in time")
        .expect("tail output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(
        !err.contains("Broken pipe") && !err.contains("error"),
        "{err}"
    );

    // A viewer key pair receives a grant and reads the log.
    let (_, out, _) = run(
        vec![
            "keygen".into(),
            "--json".into(),
            "-o".into(),
            d("viewer.id"),
        ],
        None,
    )
    .await;
    let viewer: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let mut grant = vec![
        "grant".into(),
        "--json".into(),
        "-i".into(),
        d("owner.id"),
        "--to".into(),
    ];
    grant.push(viewer["x25519"].as_str().expect("x25519").into());
    let (code, out, err) = run(grant, None).await;
    assert_eq!(code, 0, "{err}");
    let g: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(g["log"], owner["log"]);
    // A base64url key may start with `-` (one in 64): it is a value, not a flag.
    let dashed = std::iter::repeat_with(|| {
        wharf_protocol::crypto::GrantKeyPair::generate(&mut rand::rngs::OsRng).public_key_string()
    })
    .find(|k| k.starts_with('-'))
    .expect("a key starting with -");
    let (code, _, err) = run(
        vec![
            "grant".into(),
            "-i".into(),
            d("owner.id"),
            "--to".into(),
            dashed,
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let mut tail = common("tail", "viewer.id");
    tail.extend([
        "--from".into(),
        "1".into(),
        "--grant".into(),
        g["grant"].as_str().expect("grant").into(),
    ]);
    let (code, out, err) = run(tail, None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1);

    let (code, out, _) = run(
        common("status", "owner.id")
            .into_iter()
            .chain(["--journal".into(), d("owner.db")])
            .collect(),
        None,
    )
    .await;
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        (s["relayNextSequence"].as_u64(), s["pending"].as_u64()),
        (Some(2), Some(0))
    );

    let (code, _, err) = run(
        push.clone(),
        Some(b"{\"event\":\"Note\",\"payload\":{}}\n{\"event\":\"Note\",\"primaryKey\":7}\n"),
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("stdin line 2") && err.contains("primaryKey"),
        "{err}"
    );

    // Clear failures, non-zero exits.
    std::fs::write(dir.path().join("bad.id"), "nonsense").expect("write");
    let (code, _, err) = run(common("tail", "bad.id"), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("identity"), "{err}");
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let mut offline = vec![
        "push".into(),
        "-i".into(),
        d("owner.id"),
        "--journal".into(),
        d("owner.db"),
        "--relay".into(),
    ];
    offline.extend([
        format!("ws://{unreachable}"),
        "--tenant".into(),
        "cli".into(),
        "--event".into(),
        "Note".into(),
        "--key".into(),
        "n3".into(),
        "--timeout".into(),
        "1s".into(),
    ]);
    let (code, _, err) = run(offline, None).await;
    assert_eq!(code, 1);
    assert!(err.contains("safe in"), "{err}");
}

/// The relay serves TLS itself with a certificate from a private CA and requires tokens: the
/// SDK trusts it only through `ca_file`, and two clients converge over `wss://`.
#[tokio::test]
async fn wss_to_a_tls_relay_with_a_test_ca_and_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = wharf_tests::TestCa::new(dir.path());
    let leaf = ca.leaf(dir.path(), "relay");
    let relay = TestRelay::start_with_tokens(|c| {
        c.tls.cert = Some(leaf.cert_path.clone());
        c.tls.key = Some(leaf.key_path.clone());
    })
    .await;
    let token = relay.mint(&wharf_tests::claims("tls", &[Action::Read, Action::Write]));
    let url = format!("wss://localhost:{}", relay.addr.port());
    let id = identity();
    let open_trusting = |journal: &str| {
        Client::builder(&url, "tls")
            .identity(id.clone())
            .journal(dir.path().join(journal))
            .ca_file(&ca.pem_path)
            .token(&token)
            .open()
    };
    let a = open_trusting("a.db").await.expect("open a");
    let b = open_trusting("b.db").await.expect("open b");
    facts(&a, "tls", 5).await;
    flush(&a).await;
    assert_eq!(take(&a, 5).await.len(), 5);
    let on_b = take(&b, 5).await;
    assert_eq!(on_b.len(), 5, "the second client reads them over wss");

    // Without the CA the certificate is refused, and the status says so.
    let untrusting = Client::builder(&url, "tls")
        .identity(id)
        .journal(dir.path().join("c.db"))
        .token(&token)
        .open()
        .await
        .expect("open");
    let mut status = untrusting.status();
    let refused = tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| matches!(s, Status::Offline { .. })),
    )
    .await
    .expect("status in time")
    .expect("status")
    .clone();
    let Status::Offline { reason, .. } = refused else {
        unreachable!()
    };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
}

#[tokio::test]
async fn large_and_small_appends_interleaved_all_arrive_once() {
    // Small appends travel the in-memory handoff, large ones the journal; mixed in the same
    // commits, none may be skipped or sent twice.
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = identity();
    let a = open(relay.addr, "acme", &id, &dir.path().join("a.db")).await;
    let b = open(relay.addr, "acme", &id, &dir.path().join("b.db")).await;
    let (big, small) = (a.clone(), a.clone());
    let log = id.log().to_owned();
    let log2 = log.clone();
    let bulk = tokio::spawn(async move {
        for i in 0..10 {
            let events = (0..300)
                .map(|n| NewEvent::new("Bulk", format!("{i}-{n}"), &n).expect("event"))
                .collect();
            big.append_many(&log, events).await.expect("append");
        }
    });
    let single = tokio::spawn(async move {
        for n in 0..300 {
            small
                .append_many(
                    &log2,
                    vec![NewEvent::new("One", format!("{n}"), &n).expect("event")],
                )
                .await
                .expect("append");
        }
    });
    bulk.await.expect("bulk");
    single.await.expect("single");
    flush(&a).await;
    let got = take(&b, 3300).await;
    assert_eq!(
        got.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        (0..3300).collect::<Vec<_>>()
    );
    assert_exactly_once(&on_relay(&relay.url("acme"), id.log(), 3300).await);
    let mine = take(&a, 3300).await;
    assert_eq!(
        mine.iter().map(|d| d.entry.id).collect::<Vec<_>>(),
        got.iter().map(|d| d.entry.id).collect::<Vec<_>>(),
        "the writer streams its own entries in the same order"
    );
}
