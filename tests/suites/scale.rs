//! Scale-out: several relay processes on one real PostgreSQL server (started per test from
//! Debian's package by the harness; a test fails, never skips, if it cannot start). Clients
//! reach random relays; the checks are the invariants of one relay: one dense order per log,
//! dedup by entry id, live delivery, Acks that mean durable, the same remoteId.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wharf_tests::postgres::PgServer;
use wharf_tests::{
    assert_dense, entries, eventually, write_until_failure, AckedIds, ChildRelay, Client, TestRelay,
};

const QUIET: &[(&str, &str)] = &[
    ("WHARF_POSTGRES__MAX_CONNECTIONS", "4"),
    ("WHARF_POSTGRES__ACQUIRE_TIMEOUT", "2s"),
];

/// A relay process on `store`, with a data directory of its own (its key, its revocations).
struct Node {
    relay: ChildRelay,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(store: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = ChildRelay::start_with_args(dir.path(), &["--store", store], QUIET)
            .await
            .expect("start a relay on Postgres");
        Self { relay, _dir: dir }
    }

    fn url(&self, tenant: &str) -> String {
        self.relay.url(tenant)
    }

    fn pid(&self) -> u32 {
        self.relay.child.id().expect("running")
    }

    async fn kill(&mut self) {
        self.relay.child.start_kill().expect("SIGKILL");
        self.relay.child.wait().await.expect("wait");
    }
}

async fn nodes(store: &str, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(store).await);
    }
    nodes
}

async fn start_postgres() -> (PgServer, String) {
    let pg = PgServer::start().expect("a PostgreSQL server (scripts/prereqs installs it)");
    let url = pg.database().await.expect("create a database");
    (pg, url)
}

/// The whole log as Postgres holds it: (sequence, entry id), in order; and its next sequence.
async fn stored(url: &str, tenant: &str, public_key: &str) -> (Vec<(u64, Bytes)>, u64) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT e.seq, e.entry_id FROM entries e JOIN logs l ON l.id = e.log_id \
         WHERE l.tenant = $1 AND l.public_key = $2 ORDER BY e.seq",
    )
    .bind(tenant)
    .bind(public_key)
    .fetch_all(&pool)
    .await
    .expect("read entries");
    let next: i64 =
        sqlx::query_scalar("SELECT next_seq FROM logs WHERE tenant = $1 AND public_key = $2")
            .bind(tenant)
            .bind(public_key)
            .fetch_one(&pool)
            .await
            .expect("read the log");
    pool.close().await;
    (
        rows.into_iter()
            .map(|(s, id)| (s as u64, Bytes::from(id)))
            .collect(),
        next as u64,
    )
}

/// Every acked entry is stored exactly once at the sequence its Ack gave it, and the stored
/// sequences are dense from 0 up to the log's next sequence.
fn check_acked(log: &[(u64, Bytes)], next: u64, acked: &HashMap<Bytes, u64>) {
    for (i, (seq, _)) in log.iter().enumerate() {
        assert_eq!(*seq, i as u64, "sequences are dense");
    }
    assert_eq!(next, log.len() as u64, "next_seq follows the last entry");
    let at: HashMap<&Bytes, u64> = log.iter().map(|(s, id)| (id, *s)).collect();
    assert_eq!(at.len(), log.len(), "an entry id is stored once");
    for (id, seq) in acked {
        assert_eq!(
            at.get(id),
            Some(seq),
            "an acked entry is where its Ack said"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_give_every_client_one_order() {
    let (_pg, url) = start_postgres().await;
    let nodes = nodes(&url, 3).await;

    // Every relay announces the tenant's one remoteId.
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(
            Client::connect(&n.url("acme"))
                .await
                .expect("hello")
                .remote_id,
        );
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one remoteId: {ids:?}"
    );

    // A subscriber on every relay, before any write.
    let mut subscribers = Vec::new();
    for n in &nodes {
        let mut c = Client::connect(&n.url("acme")).await.expect("connect");
        c.subscribe("shared", 0).await.expect("subscribe");
        c.ping_pong().await.expect("subscribed");
        subscribers.push(c);
    }

    // Six writers, each sending every write through a relay picked at random.
    const WRITERS: u32 = 6;
    const WRITES: u32 = 20;
    let urls: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.url("acme")).collect());
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let urls = urls.clone();
        tasks.push(tokio::spawn(async move {
            let mut conns = Vec::new();
            for u in urls.iter() {
                conns.push(Client::connect(u).await.expect("connect"));
            }
            let mut acked = HashMap::new();
            for i in 0..WRITES {
                let batch = entries(w * 1_000 + i, 5, 100);
                let ids: Vec<Bytes> = batch.iter().map(|e| e.entry_id.clone()).collect();
                let node = rand::random::<usize>() % conns.len();
                let seqs = conns[node]
                    .write_acked("shared", batch)
                    .await
                    .expect("acked");
                acked.extend(ids.into_iter().zip(seqs));
            }
            acked
        }));
    }
    let mut acked = HashMap::new();
    for t in tasks {
        acked.extend(t.await.expect("writer"));
    }
    let total = (WRITERS * WRITES * 5) as usize;
    assert_eq!(acked.len(), total);

    // A write resent through another relay is a duplicate: its original sequences, nothing new.
    let again = entries(0, 5, 100);
    let original: Vec<u64> = again.iter().map(|e| acked[&e.entry_id]).collect();
    for n in &nodes {
        let mut c = Client::connect(&n.url("acme")).await.expect("connect");
        let seqs = c
            .write_acked("shared", entries(0, 5, 100))
            .await
            .expect("ack");
        assert_eq!(seqs, original, "dedup across relays");
    }

    // Every subscriber saw every entry live, in the one order Postgres holds.
    let (log, next) = stored(&url, "acme", "shared").await;
    check_acked(&log, next, &acked);
    assert_eq!(log.len(), total);
    for (i, s) in subscribers.iter_mut().enumerate() {
        let got = s.collect("shared", total).await.expect("live entries");
        assert_dense(&got, 0);
        let order: Vec<(u64, Bytes)> = got.into_iter().map(|e| (e.sequence, e.entry_id)).collect();
        assert_eq!(order, log, "relay {i}'s subscriber saw the stored order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_loses_no_acked_entry_and_leaves_no_gap() {
    let (_pg, url) = start_postgres().await;
    let mut nodes = nodes(&url, 3).await;
    let acked: AckedIds = Arc::default();
    let mut writers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        writers.push(tokio::spawn(write_until_failure(
            n.url("acme"),
            "log",
            i as u32 * 1_000_000,
            acked.clone(),
        )));
    }
    eventually("writes through three relays are acked", || async {
        acked.lock().expect("lock").len() >= 300
    })
    .await;
    // SIGKILL one relay in the middle of its commits; the others go on.
    nodes[0].kill().await;
    let at_kill = acked.lock().expect("lock").len();
    eventually("the other relays keep committing", || async {
        acked.lock().expect("lock").len() >= at_kill + 300
    })
    .await;
    for n in &mut nodes[1..] {
        n.kill().await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    // A COMMIT a killed relay had sent may still be finishing: wait until Postgres has seen
    // every relay's connections go.
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    eventually("the killed relays' backends are gone", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'wharf-relay%'",
        )
        .fetch_one(&admin)
        .await
        .expect("pg_stat_activity");
        left == 0
    })
    .await;
    let acked = acked.lock().expect("lock").clone();
    let (log, next) = stored(&url, "acme", "log").await;
    check_acked(&log, next, &acked);
    eprintln!(
        "SIGKILL: {} entries acked, {} stored (the rest were committed but never acked)",
        acked.len(),
        log.len()
    );

    // A relay started afterwards continues the same log where it stands.
    let node = Node::start(&url).await;
    let mut c = Client::connect(&node.url("acme")).await.expect("connect");
    let seqs = c
        .write_acked("log", entries(9_000_000, 2, 10))
        .await
        .expect("ack");
    assert_eq!(seqs, vec![next, next + 1]);
}

/// The pid of the backend serving `relay`'s LISTEN connection, if it has one.
async fn listener_pid(admin: &sqlx::PgPool, relay: u32) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
         ORDER BY backend_start DESC LIMIT 1",
    )
    .bind(format!("wharf-relay-listen/{relay}"))
    .fetch_optional(admin)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_everything_when_the_listen_connection_is_killed() {
    let (_pg, url) = start_postgres().await;
    let nodes = nodes(&url, 2).await;
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    let mut reader = Client::connect(&nodes[0].url("acme"))
        .await
        .expect("connect");
    reader.subscribe("log", 0).await.expect("subscribe");
    reader.ping_pong().await.expect("subscribed");
    let mut writer = Client::connect(&nodes[1].url("acme"))
        .await
        .expect("connect");
    let mut expected = 0;
    for round in 0..3u32 {
        if round > 0 {
            // Kill the reading relay's LISTEN connection: doorbells rung now are lost to it.
            let relay = nodes[0].pid();
            eventually("the relay listens", || async {
                listener_pid(&admin, relay).await.is_some()
            })
            .await;
            let pid = listener_pid(&admin, relay).await;
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .expect("terminate");
            assert!(killed, "pg_terminate_backend");
        }
        for i in 0..10 {
            writer
                .write_acked("log", entries(round * 100 + i, 5, 50))
                .await
                .expect("ack");
        }
        expected += 50;
        let got = reader.collect("log", 50).await.expect("every entry, live");
        assert_dense(&got, expected - 50);
    }
    // And it listens again, and says so.
    eventually("the LISTEN connection comes back", || async {
        listener_pid(&admin, nodes[0].pid()).await.is_some()
    })
    .await;
    let metrics = wharf_tests::get(nodes[0].relay.addr, "/metrics", &[])
        .await
        .expect("metrics")
        .text();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(value("wharf_listen_reconnects_total ") >= 2, "{metrics}");
    assert!(value("wharf_doorbells_total ") >= 1, "{metrics}");

    // A tenant deleted while no notification can say so (here: with SQL, which rings
    // nothing) is noticed when the relay resyncs after its LISTEN connection comes back: the
    // stored identity is gone, so its sessions close rather than serve a tenant that is not.
    let mut victim = Client::connect(&nodes[0].url("gone"))
        .await
        .expect("connect");
    victim
        .write_acked("log", entries(9, 1, 10))
        .await
        .expect("ack");
    sqlx::query("DELETE FROM tenants WHERE id = 'gone'")
        .execute(&admin)
        .await
        .expect("delete with SQL");
    let pid = listener_pid(&admin, nodes[0].pid()).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .expect("terminate");
    assert!(killed, "pg_terminate_backend");
    let closed = victim.closed().await.expect("closed at the resync");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_cleanly_while_postgres_restarts_and_nothing_acked_is_lost() {
    let (pg, url) = start_postgres().await;
    let nodes = nodes(&url, 2).await;
    let acked: AckedIds = Arc::default();
    let writer = tokio::spawn(write_until_failure(
        nodes[0].url("acme"),
        "log",
        0,
        acked.clone(),
    ));
    eventually("writes are acked", || async {
        acked.lock().expect("lock").len() >= 200
    })
    .await;
    // `fast`: every connection is cut, transactions in flight roll back. The server stays
    // down until started again.
    pg.stop("fast").expect("stop postgres");
    // The writer's connection fails (a commit error closes it, 1011); nothing hangs.
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer's connection ends")
        .expect("writer");
    // So does a write sent while the database is down: refused with the reason, not hung.
    let mut c = Client::connect(&nodes[0].url("acme"))
        .await
        .expect("connect");
    c.write("log", entries(4_000_000, 5, 100))
        .await
        .expect("send");
    let closed = tokio::time::timeout(Duration::from_secs(60), c.closed())
        .await
        .expect("refused in time")
        .expect("closed");
    assert_eq!(closed.code, Some(1011), "{closed:?}");
    assert!(closed.reason.contains("storage"), "{closed:?}");
    // The relays say they are not ready while their database is away…
    let ready = wharf_tests::get(nodes[1].relay.addr, "/readyz", &[])
        .await
        .expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    pg.start_again().expect("start postgres");
    // …and ready once it is back.
    eventually("the relay is ready again", || async {
        wharf_tests::get(nodes[1].relay.addr, "/readyz", &[])
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    // Writing resumes once the relays' pools reconnect: through both relays.
    let mut batch = 5_000_000;
    for n in &nodes {
        eventually("writes resume after the restart", || {
            let url = n.url("acme");
            batch += 1;
            let acked = acked.clone();
            async move {
                let Ok(mut c) = Client::connect(&url).await else {
                    return false;
                };
                let es = entries(batch, 5, 100);
                let ids: Vec<Bytes> = es.iter().map(|e| e.entry_id.clone()).collect();
                match c.write_acked("log", es).await {
                    Ok(seqs) => {
                        acked
                            .lock()
                            .expect("lock")
                            .extend(ids.into_iter().zip(seqs));
                        true
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
    }
    let acked = acked.lock().expect("lock").clone();
    let (log, next) = stored(&url, "acme", "log").await;
    check_acked(&log, next, &acked);
    // A reader on the other relay gets the whole log.
    let mut reader = Client::connect(&nodes[1].url("acme"))
        .await
        .expect("connect");
    reader.subscribe("log", 0).await.expect("subscribe");
    let got = reader.collect("log", log.len()).await.expect("the log");
    assert_dense(&got, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_quotas_and_settings_work_on_postgres() {
    use wharf_protocol::{ClientMsg, JsNumber, RelayMsg, WriteSnapshot};
    let (_pg, url) = start_postgres().await;
    let store = url.clone();
    // One relay with a quota in its configuration, one without.
    let relay = TestRelay::start_with(move |c| {
        c.store = Some(store);
        c.postgres.max_connections = 4;
        c.quota.max_logs = Some(1_000);
    })
    .await;
    let other = {
        let store = url.clone();
        TestRelay::start_with(move |c| {
            c.store = Some(store);
            c.postgres.max_connections = 4;
        })
        .await
    };
    let mut c = relay.client("acme").await;
    c.write_acked("a", entries(1, 10, 20)).await.expect("ack");
    // A snapshot stored through one relay is served by the other.
    c.send(&ClientMsg::WriteSnapshot(WriteSnapshot {
        public_key: "a".into(),
        id: JsNumber::from(1u32),
        sequence: 4,
        iv: Bytes::from_static(&[1; 24]),
        data: Bytes::from_static(b"sealed"),
    }))
    .await
    .expect("send");
    loop {
        if let RelayMsg::SnapshotAck { sequence, .. } = c.recv().await.expect("recv") {
            assert_eq!(sequence, 4);
            break;
        }
    }
    let mut r = Client::connect_with_protocol(&other.url("acme"), Some("wharf.v1"))
        .await
        .expect("connect");
    r.send(&ClientMsg::RequestChanges {
        public_key: "a".into(),
        start_sequence: 0,
        snapshot: true,
    })
    .await
    .expect("send");
    let mut snapshot = None;
    let mut after = Vec::new();
    while after.len() < 5 {
        match r.recv().await.expect("recv") {
            RelayMsg::Snapshot { sequence, data, .. } => snapshot = Some((sequence, data)),
            RelayMsg::Changes { entries, .. } => after.extend(entries),
            _ => {}
        }
    }
    assert_eq!(snapshot, Some((4, Bytes::from_static(b"sealed"))));
    assert_dense(&after, 5);

    // A quota set through one relay's admin API applies on the other, whose tenant is open,
    // and counts the tenant's logs across relays: a third log is refused there.
    let mut c2 = other.client("acme").await;
    c2.write_acked("b", entries(2, 1, 20)).await.expect("ack");
    let put = |body: &'static str| {
        wharf_tests::http_request(
            relay.addr,
            "PUT",
            "/admin/v1/tenants/acme/settings",
            &[("content-type", "application/json")],
            body.as_bytes().to_vec(),
        )
    };
    let answer = put(r#"{"quota": {"max_logs": 2}}"#).await.expect("put");
    assert_eq!(answer.status, 200, "{}", answer.text());
    eventually("the other relay applies the new quota", || async {
        wharf_tests::get(other.addr, "/admin/v1/tenants/acme/settings", &[])
            .await
            .is_ok_and(|a| a.text().contains(r#""max_logs":2"#))
    })
    .await;
    c2.write("c", entries(3, 1, 20)).await.expect("send");
    let closed = c2.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008), "over quota: {closed:?}");
    assert!(closed.reason.contains("quota"), "{closed:?}");

    // The stored quota removed: the relay configured with one still checks it, the other no
    // longer does. Both create and append to shared logs at once: no deadlock (the quota's
    // lock on the tenant's row and a new log's foreign-key check must not wait for each other).
    let answer = wharf_tests::http_request(
        relay.addr,
        "DELETE",
        "/admin/v1/tenants/acme/settings",
        &[],
        Vec::new(),
    )
    .await
    .expect("delete");
    assert_eq!(answer.status, 200, "{}", answer.text());
    eventually("the other relay drops the stored quota", || async {
        wharf_tests::get(other.addr, "/admin/v1/tenants/acme/settings", &[])
            .await
            .is_ok_and(|a| a.text().contains(r#""max_logs":null"#))
    })
    .await;
    let mut tasks = Vec::new();
    for (i, addr) in [relay.addr, other.addr]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&format!("ws://{addr}/t/acme"))
                .await
                .expect("connect");
            for j in 0..40u32 {
                let log = format!("new-{}", (i as u32 + j) % 12);
                c.write_acked(&log, entries(100 + i as u32 * 100 + j, 2, 10))
                    .await
                    .expect("acked, no deadlock");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }

    relay.shutdown().await;
    other.shutdown().await;
}

/// An admin API call to `relay` (a relay without access control answers loopback clients).
async fn admin(
    relay: &TestRelay,
    method: &str,
    path: &str,
    body: &[u8],
) -> wharf_tests::HttpAnswer {
    wharf_tests::http_request(relay.addr, method, path, &[], body.to_vec())
        .await
        .expect("admin request")
}

fn json(answer: &wharf_tests::HttpAnswer) -> serde_json::Value {
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.text()))
}

/// The admin API on Postgres, across relays: a tenant exported from a SQLite relay is imported
/// through one relay and served, listed, shown and exported (byte for byte the same) by the
/// other; deleting a log or the tenant, or replacing it, through one relay closes the sessions
/// on the other; a failed import changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_works_across_relays_on_postgres() {
    let (_pg, url) = start_postgres().await;
    // The tenant starts on an embedded SQLite relay: two logs, written one after the other.
    let sqlite = TestRelay::start().await;
    let mut w = sqlite.client("acme").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.extend(w.write_acked("a", entries(i, 10, 40)).await.expect("ack"));
    }
    acked.extend(w.write_acked("b", entries(9, 20, 40)).await.expect("ack"));
    drop(w);
    let export = admin(&sqlite, "GET", "/admin/v1/tenants/acme/export", b"").await;
    assert_eq!(export.status, 200, "{}", export.text());
    let sqlite_detail = json(&admin(&sqlite, "GET", "/admin/v1/tenants/acme", b"").await);
    sqlite.shutdown().await;

    let pg_relay = |url: String| {
        TestRelay::start_with(move |c| {
            c.store = Some(url);
            c.postgres.max_connections = 4;
        })
    };
    let one = pg_relay(url.clone()).await;
    let two = pg_relay(url.clone()).await;
    let imported = admin(&one, "POST", "/admin/v1/tenants/acme/import", &export.body).await;
    assert_eq!(imported.status, 201, "{}", imported.text());
    assert_eq!(json(&imported)["entries"], 70);

    // The other relay lists it, shows the SQLite tenant's remoteId and logs, and serves it.
    let listed = json(&admin(&two, "GET", "/admin/v1/tenants", b"").await);
    assert_eq!(listed["tenants"][0]["tenant"], "acme", "{listed}");
    assert_eq!(listed["tenants"][0]["entries"], 70, "{listed}");
    assert_eq!(listed["tenants"][0]["logs"], 2, "{listed}");
    assert_eq!(listed["tenants"][0]["state"], "hibernated", "{listed}");
    let detail = json(&admin(&two, "GET", "/admin/v1/tenants/acme", b"").await);
    assert_eq!(detail["remote_id"], sqlite_detail["remote_id"]);
    assert_eq!(detail["log_states"], sqlite_detail["log_states"]);
    assert!(detail["last_write_unix_ms"].is_u64(), "{detail}");
    let mut reader = two.client("acme").await;
    reader.subscribe("a", 0).await.expect("subscribe");
    let got = reader.collect("a", 50).await.expect("the imported log");
    assert_dense(&got, 0);
    for (e, seq) in got.iter().zip(&acked) {
        assert_eq!(e.sequence, *seq);
    }
    let again = admin(&two, "GET", "/admin/v1/tenants/acme/export", b"").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.text(),
        export.text(),
        "the export round-trips byte for byte"
    );

    // Importing over it needs replace; a cut-short import is refused and changes nothing.
    let refused = admin(&two, "POST", "/admin/v1/tenants/acme/import", &export.body).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    let cut = &export.body[..export.body.len() - 30];
    let broken = admin(
        &one,
        "POST",
        "/admin/v1/tenants/acme/import?replace=true",
        cut,
    )
    .await;
    assert_eq!(broken.status, 400, "{}", broken.text());
    let unchanged = json(&admin(&one, "GET", "/admin/v1/tenants/acme", b"").await);
    assert_eq!(unchanged["log_states"], sqlite_detail["log_states"]);
    reader
        .ping_pong()
        .await
        .expect("still served: a failed import evicts nobody");

    // Deleting a log through one relay closes the tenant's sessions on the other.
    let deleted = admin(&one, "DELETE", "/admin/v1/tenants/acme/logs/b", b"").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let closed = reader
        .closed()
        .await
        .expect("closed by the deletion on the other relay");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    let detail = json(&admin(&two, "GET", "/admin/v1/tenants/acme", b"").await);
    assert_eq!(detail["logs"], 1, "{detail}");
    let gone = admin(&two, "DELETE", "/admin/v1/tenants/acme/logs/b", b"").await;
    assert_eq!(gone.status, 404, "{}", gone.text());

    // Replacing it does too, and the import is what both relays serve.
    let mut reader = two.client("acme").await;
    reader
        .write_acked("c", entries(50, 1, 10))
        .await
        .expect("ack");
    let replaced = admin(
        &one,
        "POST",
        "/admin/v1/tenants/acme/import?replace=true",
        &export.body,
    )
    .await;
    assert_eq!(replaced.status, 201, "{}", replaced.text());
    assert_eq!(reader.closed().await.expect("closed").code, Some(1008));
    let detail = json(&admin(&two, "GET", "/admin/v1/tenants/acme", b"").await);
    assert_eq!(
        detail["log_states"], sqlite_detail["log_states"],
        "{detail}"
    );

    // Deleting the tenant: its sessions everywhere close, and it is gone for both relays.
    let mut reader = two.client("acme").await;
    reader.subscribe("b", 0).await.expect("subscribe");
    reader.collect("b", 20).await.expect("log b");
    let deleted = admin(&one, "DELETE", "/admin/v1/tenants/acme", b"").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(reader.closed().await.expect("closed").code, Some(1008));
    for relay in [&one, &two] {
        let missing = admin(relay, "GET", "/admin/v1/tenants/acme", b"").await;
        assert_eq!(missing.status, 404, "{}", missing.text());
        let missing = admin(relay, "GET", "/admin/v1/tenants/acme/export", b"").await;
        assert_eq!(missing.status, 404, "{}", missing.text());
    }
    let missing = admin(&two, "DELETE", "/admin/v1/tenants/acme", b"").await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    // A client coming back finds a new, empty tenant with a new remoteId.
    let fresh = two.client("acme").await;
    assert_ne!(
        uuid::Uuid::from_slice(&fresh.remote_id)
            .expect("uuid")
            .to_string(),
        sqlite_detail["remote_id"].as_str().expect("remote_id")
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// Retention on Postgres: a policy stored through one relay applies on the other, each policy
/// truncates whole prefixes (the log's row lock serializes relays trimming one log), readers
/// on either relay are told where history starts, a snapshot covers the gap, and sequences are
/// never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_truncates_across_relays_on_postgres() {
    use wharf_protocol::{ClientMsg, JsNumber, RelayMsg, WriteSnapshot};
    use wharf_tests::{history_starts, read_to_caught_up, sequences};
    let (_pg, url) = start_postgres().await;
    let pg_relay = |url: String| {
        TestRelay::start_with(move |c| {
            c.store = Some(url);
            c.postgres.max_connections = 4;
        })
    };
    let one = pg_relay(url.clone()).await;
    let two = pg_relay(url.clone()).await;
    let v1 = |relay: &TestRelay, tenant: &str| {
        let url = relay.url(tenant);
        async move {
            Client::connect_with_protocol(&url, Some("wharf.v1"))
                .await
                .expect("connect")
        }
    };
    // One tenant per policy, written through relay one.
    for tenant in ["count", "bytes", "age", "snap"] {
        let mut c = v1(&one, tenant).await;
        c.write_acked(tenant, entries(1, 100, 100))
            .await
            .expect("write");
    }
    let mut c = v1(&one, "snap").await;
    c.send(&ClientMsg::WriteSnapshot(WriteSnapshot {
        public_key: "snap".into(),
        id: JsNumber::from(7u32),
        sequence: 59,
        iv: Bytes::from_static(&[1; 24]),
        data: Bytes::from_static(b"state"),
    }))
    .await
    .expect("send");
    while !matches!(c.recv().await.expect("recv"), RelayMsg::SnapshotAck { .. }) {}
    drop(c);

    // The policy is stored through relay two; a run is asked of relay one. The relays also
    // apply a new policy on their own: whichever trims first, the other finds nothing left.
    let mut trimmed = HashMap::new();
    for (tenant, policy) in [
        ("count", serde_json::json!({ "max_entries": 30 })),
        ("bytes", serde_json::json!({ "max_bytes": 1000 })),
        ("age", serde_json::json!({ "max_age": "1ms" })),
        ("snap", serde_json::json!({ "after_snapshot": true })),
    ] {
        let body = serde_json::json!({ "retention": policy }).to_string();
        let path = format!("/admin/v1/tenants/{tenant}/settings");
        let stored = admin(&two, "PUT", &path, body.as_bytes()).await;
        assert_eq!(stored.status, 200, "{}", stored.text());
        // Relay one has the policy once the settings notification reached it.
        eventually("the policy reaches relay one", || async {
            let answer = admin(&one, "GET", &path, b"").await;
            json(&answer)["stored"]["retention"].is_object()
        })
        .await;
        let path = format!("/admin/v1/tenants/{tenant}/retention");
        let run = admin(&one, "POST", &path, b"").await;
        assert_eq!(run.status, 200, "{}", run.text());
        let again = json(&admin(&one, "POST", &path, b"").await);
        assert_eq!(again["entries_deleted"], 0, "all done: {again}");
        let detail = json(&admin(&two, "GET", &format!("/admin/v1/tenants/{tenant}"), b"").await);
        let log = &detail["log_states"][0];
        assert_eq!(log["next_sequence"], 100, "{detail}");
        assert_eq!(
            log["entries"]
                .as_u64()
                .map(|n| n + log["first_sequence"].as_u64().unwrap_or(0)),
            Some(100),
            "{detail}"
        );
        trimmed.insert(tenant, log["first_sequence"].clone());
    }
    assert_eq!(trimmed["count"], 70);
    assert_eq!(trimmed["bytes"], 90);
    assert_eq!(trimmed["age"], 100);
    assert_eq!(trimmed["snap"], 60);

    // Readers on the other relay are told where history starts.
    let mut r = v1(&two, "count").await;
    let msgs = read_to_caught_up(&mut r, "count", 0, false).await;
    assert_eq!(history_starts(&msgs), Some(70));
    assert_eq!(sequences(&msgs), (70..100).collect::<Vec<_>>());
    let mut r = v1(&two, "snap").await;
    let msgs = read_to_caught_up(&mut r, "snap", 0, false).await;
    assert!(msgs
        .iter()
        .any(|m| matches!(m, RelayMsg::Snapshot { sequence: 59, .. })));
    assert_eq!(history_starts(&msgs), None, "the snapshot covers the gap");
    assert_eq!(sequences(&msgs), (60..100).collect::<Vec<_>>());
    // Nothing is left of "age", and the log continues where it was.
    let (log, next) = stored(&url, "age", "age").await;
    assert!(log.is_empty());
    assert_eq!(next, 100);
    let mut w = v1(&two, "age").await;
    assert_eq!(
        w.write_acked("age", entries(2, 1, 10))
            .await
            .expect("write"),
        vec![100],
        "sequences are never reused"
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// With the Postgres store the revocation list is in the database: a token revoked through one
/// relay's admin API, or with `wharf-relay token revoke --store` (the same library call), is
/// refused by every relay, and their open connections holding it are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_relay_on_postgres() {
    use wharf_relay::auth::revocation::RevocationStore;
    use wharf_relay::auth::token::{Action, Claims};
    let (_pg, url) = start_postgres().await;
    let key = tempfile::tempdir().expect("tempdir");
    let key_file = key.path().join("relay-key.pem");
    let rw = [Action::Read, Action::Write];
    // Relay one's data directory holds a list from before the move to Postgres.
    let data = tempfile::tempdir().expect("tempdir");
    let revoked_before = wharf_tests::claims("acme", &rw);
    std::fs::create_dir_all(data.path().join("auth")).expect("mkdir");
    let file = RevocationStore::open_file(&data.path().join("auth/revocations.sqlite"))
        .await
        .expect("the old list");
    file.revoke(&revoked_before.jti, wharf_relay::auth::unix_now())
        .await
        .expect("revoke");
    file.close().await;
    let pg_relay = |url: String, key_file: std::path::PathBuf, data: Option<std::path::PathBuf>| {
        TestRelay::start_with_tokens(move |c| {
            c.store = Some(url);
            c.postgres.max_connections = 4;
            c.auth.key_file = Some(key_file);
            if let Some(data) = data {
                c.data = data;
            }
        })
    };
    let one = pg_relay(
        url.clone(),
        key_file.clone(),
        Some(data.path().to_path_buf()),
    )
    .await;
    let two = pg_relay(url.clone(), key_file.clone(), None).await;
    // Merged into the database when relay one starts: refused by relay two too.
    let old_token = two.mint(&revoked_before);
    eventually(
        "a revocation from the old list holds on every relay",
        || async {
            Client::connect(&two.url_with_token("acme", &old_token))
                .await
                .is_err()
        },
    )
    .await;
    let (doomed, kept, later) = (
        wharf_tests::claims("acme", &rw),
        wharf_tests::claims("acme", &rw),
        wharf_tests::claims("globex", &rw),
    );
    async fn connect(relay: &TestRelay, claims: &Claims) -> Client {
        let url = relay.url_with_token(&claims.tenant, &relay.mint(claims));
        Client::connect(&url).await.expect("connect")
    }
    let mut a = connect(&two, &doomed).await;
    let mut b = connect(&two, &kept).await;
    let mut g = connect(&two, &later).await;

    // One token, revoked the way `wharf-relay token revoke --store …` does.
    let config = wharf_relay::Config {
        store: Some(url.clone()),
        ..Default::default()
    };
    let store = RevocationStore::open(&config.store_config(), None)
        .await
        .expect("the list");
    assert!(store
        .revoke(&doomed.jti, wharf_relay::auth::unix_now())
        .await
        .expect("revoke"));
    store.close().await;
    let closed = a.closed().await.expect("closed after the revocation");
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (Some(1008), "token revoked")
    );
    b.write_acked("a", entries(1, 1, 8))
        .await
        .expect("the other token still works");
    // Each relay re-reads the list within its revocation_poll.
    for relay in [&one, &two] {
        let token = relay.mint(&doomed);
        eventually("a revoked token is refused by every relay", || async {
            Client::connect(&relay.url_with_token("acme", &token))
                .await
                .is_err()
        })
        .await;
    }

    // Every token of a tenant, revoked through the other relay's admin API.
    let admin_token = one.mint(&wharf_tests::claims("*", &[Action::Admin]));
    let bearer = format!("Bearer {admin_token}");
    let answer = wharf_tests::http_request(
        one.addr,
        "POST",
        "/admin/v1/revocations",
        &[("authorization", bearer.as_str())],
        br#"{"tenant": "globex"}"#.to_vec(),
    )
    .await
    .expect("revoke");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let closed = g.closed().await.expect("closed after the revocation");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    b.write_acked("a", entries(2, 1, 8))
        .await
        .expect("acme's tokens are not globex's");
    one.shutdown().await;
    two.shutdown().await;
}

#[test]
fn a_store_that_is_not_postgres_is_refused_without_showing_its_password() {
    let err = wharf_relay::Config::load(None, serde_json::json!({ "store": "mysql://u:pw@h/db" }))
        .expect_err("refused");
    assert!(err.to_string().contains("postgres://"), "{err}");
    assert!(
        err.to_string().contains("mysql://u:(redacted)@h/db"),
        "{err}"
    );
    assert!(!err.to_string().contains("pw"), "{err}");
}
