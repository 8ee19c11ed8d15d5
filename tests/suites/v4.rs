//! Effect v4 clients on `/v4/t/{tenant}`, over real WebSockets to a real relay: the session
//! (Hello, the signed challenge, pinning), writes and reads byte for byte, chunked writes and
//! downloads, retries, token scopes, v3 beside v4, and bad input.

use bytes::Bytes;
use wharf_protocol::v4::eventlog::tag;
use wharf_protocol::v4::{
    Authenticate, ErrorCode, Exit, FromClient, FromServer, RemoteBatch, RequestId, WriteAck,
};
use wharf_relay::auth::token::Action;
use wharf_tests::v4::{batch, identity, V4Client};
use wharf_tests::{claims, Client, TestRelay};

fn v4_url(relay: &TestRelay, tenant: &str) -> String {
    format!("ws://{}/v4/t/{tenant}", relay.addr)
}

fn acks(exit: Exit<Vec<WriteAck>>) -> Vec<u64> {
    match exit {
        Exit::Success(acks) => acks.into_iter().map(|a| a.sequence).collect(),
        other => panic!("write failed: {other:?}"),
    }
}

fn failure_code<T: std::fmt::Debug>(exit: Exit<T>) -> ErrorCode {
    match exit {
        Exit::Failure(e) => e.code,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn two_replicas_of_one_identity_exchange_batches_byte_for_byte_and_live() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let id = identity();
    let mut a = V4Client::connect(&url).await.expect("connect");
    assert!(matches!(
        a.authenticate(&id).await.expect("auth"),
        Exit::Success(())
    ));
    let written = vec![
        batch(&id, "default", 3, 100),
        batch(&id, "default", 1, 5000),
    ];
    let seqs = acks(
        a.write(&id, "default", written.clone())
            .await
            .expect("write"),
    );
    assert_eq!(
        seqs,
        vec![0, 1, 2, 3],
        "one ack per entry, in order, from 0"
    );

    // Another replica: the same remote id, the batches as written, at their sequences.
    let mut b = V4Client::connect(&url).await.expect("connect");
    assert!(matches!(
        b.authenticate(&id).await.expect("auth"),
        Exit::Success(())
    ));
    assert_eq!(
        a.hello.as_ref().map(|h| h.remote_id),
        b.hello.as_ref().map(|h| h.remote_id),
        "the tenant's remote id is stable"
    );
    assert_ne!(
        a.hello.as_ref().map(|h| h.challenge.clone()),
        b.hello.as_ref().map(|h| h.challenge.clone())
    );
    let stream = b
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    let got = b.collect(&stream, 4).await.expect("batches");
    assert_eq!(
        got,
        vec![
            RemoteBatch {
                sequence: 0,
                batch: written[0].clone()
            },
            RemoteBatch {
                sequence: 3,
                batch: written[1].clone()
            },
        ]
    );
    // Live: a new batch from the first replica reaches the second.
    let live = batch(&id, "default", 2, 10);
    assert_eq!(
        acks(
            a.write(&id, "default", vec![live.clone()])
                .await
                .expect("write")
        ),
        vec![4, 5]
    );
    let got = b.collect(&stream, 2).await.expect("live");
    assert_eq!(
        got,
        vec![RemoteBatch {
            sequence: 4,
            batch: live
        }]
    );

    // From the middle of a batch: the batch holding it, whole.
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    let s = c
        .changes(&id.public_key, "default", 5)
        .await
        .expect("changes");
    let got = c.batches(&s).await.expect("batches");
    assert_eq!(got.iter().map(|b| b.sequence).collect::<Vec<_>>(), vec![4]);

    // What the relay stored decrypts with the identity (the viewer and CLI do the same).
    let plain = id
        .decrypt_batch(
            "default",
            &got[0].batch.entry_ids,
            &got[0].batch.iv,
            &got[0].batch.encrypted_batch,
        )
        .expect("decrypts");
    assert_eq!(
        wharf_protocol::v4::BatchEntry::decode_all(&plain)
            .expect("entries")
            .len(),
        2
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn identities_and_stores_are_isolated() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let (alice, bob) = (identity(), identity());
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&alice).await.expect("auth");
    assert_eq!(
        acks(
            c.write(&alice, "one", vec![batch(&alice, "one", 2, 10)])
                .await
                .expect("w")
        ),
        vec![0, 1]
    );
    assert_eq!(
        acks(
            c.write(&alice, "two", vec![batch(&alice, "two", 1, 10)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    // Bob is not authenticated on this connection: neither his writes nor his reads pass.
    let refused = c
        .write(&bob, "one", vec![batch(&bob, "one", 1, 1)])
        .await
        .expect("w");
    assert_eq!(failure_code(refused), ErrorCode::Forbidden);
    // Several identities on one connection (a Hello each).
    c.authenticate(&bob).await.expect("auth");
    assert_eq!(
        acks(
            c.write(&bob, "one", vec![batch(&bob, "one", 1, 10)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    let s = c
        .changes(&alice.public_key, "two", 0)
        .await
        .expect("changes");
    let got = c.batches(&s).await.expect("batches");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].batch.entry_ids.len(),
        1,
        "store two holds its own batch only"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_bad_signature_pins_nothing_and_the_victim_connects_after_it() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let victim = identity();
    let attacker = identity();
    let mut evil = V4Client::connect(&url).await.expect("connect");
    evil.hello().await.expect("hello");
    // The victim's publicKey, the attacker's key, a signature that does not verify.
    let refused = evil
        .authenticate_with(Authenticate {
            public_key: victim.public_key.clone(),
            signing_public_key: attacker.signing_public_key().to_vec(),
            signature: vec![7; 64],
        })
        .await
        .expect("answer");
    assert_eq!(failure_code(refused), ErrorCode::Forbidden);
    // The challenge was used: the same signature again has nothing to answer.
    let mut v = V4Client::connect(&url).await.expect("connect");
    assert!(matches!(
        v.authenticate(&victim).await.expect("auth"),
        Exit::Success(())
    ));
    assert_eq!(
        acks(
            v.write(&victim, "default", vec![batch(&victim, "default", 1, 1)])
                .await
                .expect("w")
        ),
        vec![0]
    );

    // Now the victim's key is pinned: another key with a valid signature of its own is refused.
    let mut other = V4Client::connect(&url).await.expect("connect");
    let hello = other.hello().await.expect("hello");
    let impostor = wharf_protocol::v4::V4Identity::new(victim.public_key.clone(), [9; 32]);
    let refused = other
        .authenticate_with(Authenticate {
            public_key: victim.public_key.clone(),
            signing_public_key: impostor.signing_public_key().to_vec(),
            signature: impostor
                .sign_challenge(&hello.remote_id, &hello.challenge)
                .to_vec(),
        })
        .await
        .expect("answer");
    assert_eq!(failure_code(refused), ErrorCode::Forbidden);

    // The pin is durable: after a restart on the same data, still the victim's key only.
    let config = relay.config.clone();
    let dir = relay.shutdown().await;
    let relay = TestRelay::start_config(config).await;
    let url = v4_url(&relay, "acme");
    let mut v = V4Client::connect(&url).await.expect("connect");
    assert!(matches!(
        v.authenticate(&victim).await.expect("auth"),
        Exit::Success(())
    ));
    let mut other = V4Client::connect(&url).await.expect("connect");
    let hello = other.hello().await.expect("hello");
    let refused = other
        .authenticate_with(Authenticate {
            public_key: victim.public_key.clone(),
            signing_public_key: impostor.signing_public_key().to_vec(),
            signature: impostor
                .sign_challenge(&hello.remote_id, &hello.challenge)
                .to_vec(),
        })
        .await
        .expect("answer");
    assert_eq!(failure_code(refused), ErrorCode::Forbidden);
    relay.shutdown().await;
    drop(dir);
}

#[tokio::test]
async fn a_challenge_is_used_once_and_unauthenticated_calls_are_forbidden() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let id = identity();
    let mut c = V4Client::connect(&url).await.expect("connect");
    // Nothing is allowed before Authenticate.
    let refused = c
        .write(&id, "default", vec![batch(&id, "default", 1, 1)])
        .await
        .expect("w");
    assert_eq!(failure_code(refused), ErrorCode::Forbidden);
    let s = c
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    let exit = c.exit_of(&s).await.expect("exit");
    assert_eq!(
        failure_code(Exit::<()>::decode(&exit).expect("exit")),
        ErrorCode::Forbidden
    );
    // Authenticate replaying an answered challenge.
    let hello = c.hello().await.expect("hello");
    let auth = Authenticate {
        public_key: id.public_key.clone(),
        signing_public_key: id.signing_public_key().to_vec(),
        signature: id
            .sign_challenge(&hello.remote_id, &hello.challenge)
            .to_vec(),
    };
    assert!(matches!(
        c.authenticate_with(auth.clone()).await.expect("auth"),
        Exit::Success(())
    ));
    let replay = c.authenticate_with(auth).await.expect("auth");
    assert_eq!(failure_code(replay), ErrorCode::Forbidden);
    relay.shutdown().await;
}

#[tokio::test]
async fn retried_batches_are_acked_where_they_were_stored_and_partly_known_ones_stored_whole() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let id = identity();
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    let first = batch(&id, "default", 2, 10);
    assert_eq!(
        acks(
            c.write(&id, "default", vec![first.clone()])
                .await
                .expect("w")
        ),
        vec![0, 1]
    );
    // The same batch again (a lost ack): the same sequences, nothing stored.
    assert_eq!(
        acks(
            c.write(&id, "default", vec![first.clone()])
                .await
                .expect("w")
        ),
        vec![0, 1]
    );
    // Re-encrypted with a new entry (Effect resends unacked entries with the next change):
    // the batch is stored whole, at new sequences.
    let mut regrouped = batch(&id, "default", 3, 10);
    regrouped.entry_ids[0] = first.entry_ids[0];
    regrouped.entry_ids[1] = first.entry_ids[1];
    assert_eq!(
        acks(
            c.write(&id, "default", vec![regrouped.clone()])
                .await
                .expect("w")
        ),
        vec![2, 3, 4]
    );
    let s = c
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    let got = c.collect(&s, 5).await.expect("batches");
    assert_eq!(
        got,
        vec![
            RemoteBatch {
                sequence: 0,
                batch: first
            },
            RemoteBatch {
                sequence: 2,
                batch: regrouped
            },
        ]
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_large_event_uploads_in_parts_and_downloads_in_acked_chunks() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let id = identity();
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    // 1.5 MB in one entry: three parts up, and three Chunk messages down.
    let big = batch(&id, "default", 1, 1_500_000);
    assert_eq!(
        acks(c.write(&id, "default", vec![big.clone()]).await.expect("w")),
        vec![0]
    );
    let s = c
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    // The first Chunk is one part; until it is acked no other arrives (a Ping is answered).
    let first = loop {
        match c.recv().await.expect("recv").expect("open") {
            FromServer::Chunk { request_id, values } if request_id == s => break values,
            _ => {}
        }
    };
    let elements = wharf_protocol::v4::StreamElement::decode_all(&first).expect("elements");
    let wharf_protocol::v4::StreamElement::Chunked(part) = &elements[0] else {
        panic!("a large payload goes in parts")
    };
    assert_eq!((part.index, part.total), (0, 3));
    c.send(&FromClient::Ping).await.expect("ping");
    match c.recv().await.expect("recv").expect("open") {
        FromServer::Pong => {}
        other => panic!("a chunk came before its predecessor's ack: {other:?}"),
    }
    c.send(&FromClient::Ack(s.clone())).await.expect("ack");
    let mut parts = vec![part.data.clone()];
    while parts.len() < 3 {
        if let FromServer::Chunk { request_id, values } =
            c.recv().await.expect("recv").expect("open")
        {
            assert_eq!(request_id, s);
            c.send(&FromClient::Ack(s.clone())).await.expect("ack");
            for e in wharf_protocol::v4::StreamElement::decode_all(&values).expect("elements") {
                if let wharf_protocol::v4::StreamElement::Chunked(p) = e {
                    parts.push(p.data);
                }
            }
        }
    }
    let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    assert_eq!(
        RemoteBatch::decode_all(&joined).expect("batches"),
        vec![RemoteBatch {
            sequence: 0,
            batch: big
        }]
    );
    // Interrupt ends the stream with an interrupt exit.
    c.send(&FromClient::Interrupt(s.clone()))
        .await
        .expect("interrupt");
    let exit = c.exit_of(&s).await.expect("exit");
    assert_eq!(
        Exit::<()>::decode(&exit).expect("exit"),
        Exit::Interrupt(None)
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn token_scopes_name_v4_logs_by_public_key_or_by_store() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let id = identity();
    let mut scoped = claims("acme", &[Action::Read, Action::Write]);
    scoped.logs = Some(vec![format!("{}/allowed", id.public_key)]);
    let token = relay.mint(&scoped);
    let url = format!("{}?token={token}", v4_url(&relay, "acme"));
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    assert_eq!(
        acks(
            c.write(&id, "allowed", vec![batch(&id, "allowed", 1, 1)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    let refused = c
        .write(&id, "other", vec![batch(&id, "other", 1, 1)])
        .await
        .expect("w");
    assert_eq!(failure_code(refused), ErrorCode::Unauthorized);
    // A publicKey alone covers every store.
    scoped.logs = Some(vec![id.public_key.clone()]);
    let url = format!("{}?token={}", v4_url(&relay, "acme"), relay.mint(&scoped));
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    assert_eq!(
        acks(
            c.write(&id, "other", vec![batch(&id, "other", 1, 1)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    // Without a token, no upgrade at all.
    assert!(V4Client::connect(&v4_url(&relay, "acme")).await.is_err());
    relay.shutdown().await;
}

#[tokio::test]
async fn v3_and_v4_share_a_tenant_without_mixing() {
    let relay = TestRelay::start().await;
    let id = identity();
    let mut v4 = V4Client::connect(&v4_url(&relay, "acme"))
        .await
        .expect("connect");
    v4.authenticate(&id).await.expect("auth");
    acks(
        v4.write(&id, "default", vec![batch(&id, "default", 2, 1)])
            .await
            .expect("w"),
    );
    let mut v3 = relay.client("acme").await;
    // A v3 client's log of the same publicKey is another log.
    let seqs = v3
        .write_acked(&id.public_key, wharf_tests::entries(1, 3, 10))
        .await
        .expect("v3 write");
    assert_eq!(seqs, vec![0, 1, 2]);
    // And v3 cannot name a v4 log's storage key.
    let key = wharf_protocol::v4::stored::log_key(&id.public_key, "default");
    v3.send(&wharf_protocol::ClientMsg::RequestChanges {
        public_key: key,
        start_sequence: 0,
        snapshot: false,
    })
    .await
    .expect("send");
    assert!(v3.closed().await.expect("closed").code.is_some());
    let _: Client = relay.client("acme").await;
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_relay_serves_others() {
    let relay = TestRelay::start().await;
    let url = v4_url(&relay, "acme");
    let id = identity();
    let mut good = V4Client::connect(&url).await.expect("connect");
    good.authenticate(&id).await.expect("auth");

    // An unknown tag and a payload of the wrong type: a defect exit, the connection stays.
    let mut c = V4Client::connect(&url).await.expect("connect");
    let exit = c
        .call("EventLog.Nope", wharf_protocol::v4::eventlog::encode_void())
        .await
        .expect("exit");
    assert!(matches!(
        Exit::<()>::decode(&exit).expect("exit"),
        Exit::Die(_)
    ));
    let exit = c
        .call(
            tag::AUTHENTICATE,
            wharf_protocol::v4::eventlog::encode_void(),
        )
        .await
        .expect("exit");
    assert!(matches!(
        Exit::<()>::decode(&exit).expect("exit"),
        Exit::Die(_)
    ));
    c.send(&FromClient::Ping).await.expect("ping");
    assert_eq!(c.recv().await.expect("recv"), Some(FromServer::Pong));
    // A malformed envelope: a Defect, then the close.
    c.send_raw(Bytes::from_static(&[0x03, 0x21, 0x00, 0x00]))
        .await
        .expect("send");
    assert!(matches!(
        c.recv().await.expect("recv"),
        Some(FromServer::Defect(_))
    ));
    assert!(c.closed().await.is_ok());

    // An endless chunked write: refused past the message limit, the parts are dropped.
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    let part = wharf_protocol::v4::Chunked {
        id: 1,
        index: 0,
        total: 1 << 40,
        data: Bytes::from_static(b"x"),
    };
    let exit = c
        .call(tag::WRITE_CHUNKED, part.encode_payload())
        .await
        .expect("exit");
    assert_eq!(
        failure_code(Exit::<Vec<WriteAck>>::decode(&exit).expect("exit")),
        ErrorCode::InvalidRequest
    );

    // Nothing stored changed for the good client, which still writes and reads.
    assert_eq!(
        acks(
            good.write(&id, "default", vec![batch(&id, "default", 1, 1)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    let s = good
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    assert_eq!(good.batches(&s).await.expect("batches").len(), 1);
    let _ = RequestId::Int(0);
    relay.shutdown().await;
}

/// The impostor's answer: `victim`'s publicKey, a key of its own, a valid signature with it.
async fn impostor_refused(url: &str, public_key: &str) -> bool {
    let mut c = V4Client::connect(url).await.expect("connect");
    let hello = c.hello().await.expect("hello");
    let impostor = wharf_protocol::v4::V4Identity::new(public_key.to_owned(), [9; 32]);
    let answer = c
        .authenticate_with(Authenticate {
            public_key: public_key.to_owned(),
            signing_public_key: impostor.signing_public_key().to_vec(),
            signature: impostor
                .sign_challenge(&hello.remote_id, &hello.challenge)
                .to_vec(),
        })
        .await
        .expect("answer");
    matches!(answer, Exit::Failure(e) if e.code == ErrorCode::Forbidden)
}

#[tokio::test]
async fn v4_logs_and_pins_survive_export_and_import() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let rw = relay.mint(&claims("acme", &[Action::Read, Action::Write]));
    let url = format!("{}?token={rw}", v4_url(&relay, "acme"));
    let id = identity();
    let mut c = V4Client::connect(&url).await.expect("connect");
    c.authenticate(&id).await.expect("auth");
    let written = vec![
        batch(&id, "default", 3, 50),
        batch(&id, "default", 1, 700_000),
    ];
    assert_eq!(
        acks(c.write(&id, "default", written.clone()).await.expect("w")),
        vec![0, 1, 2, 3]
    );

    let admin = relay.mint(&claims("*", &[Action::Admin]));
    let auth = format!("Bearer {admin}");
    let headers = [("authorization", auth.as_str())];
    let export = wharf_tests::http_request(
        relay.addr,
        "GET",
        "/admin/v1/tenants/acme/export",
        &headers,
        Vec::new(),
    )
    .await
    .expect("export");
    assert_eq!(export.status, 200);
    let imported = wharf_tests::http_request(
        relay.addr,
        "POST",
        "/admin/v1/tenants/copy/import",
        &headers,
        export.body,
    )
    .await
    .expect("import");
    assert_eq!(imported.status, 201);

    let copy_token = relay.mint(&claims("copy", &[Action::Read, Action::Write]));
    let copy_url = format!("{}?token={copy_token}", v4_url(&relay, "copy"));
    let mut r = V4Client::connect(&copy_url).await.expect("connect");
    assert!(matches!(
        r.authenticate(&id).await.expect("auth"),
        Exit::Success(())
    ));
    let s = r
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    let got = r.collect(&s, 4).await.expect("batches");
    assert_eq!(
        got,
        vec![
            RemoteBatch {
                sequence: 0,
                batch: written[0].clone()
            },
            RemoteBatch {
                sequence: 3,
                batch: written[1].clone()
            },
        ]
    );
    // The pin came along: the copy refuses another key for the identity.
    assert!(impostor_refused(&copy_url, &id.public_key).await);
    // A retry into the copy is acked where the original stored it.
    assert_eq!(
        acks(
            r.write(&id, "default", vec![written[0].clone()])
                .await
                .expect("w")
        ),
        vec![0, 1, 2]
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_batches_and_pins_hold_across_relays() {
    let pg = wharf_tests::postgres::PgServer::start()
        .expect("a PostgreSQL server (scripts/prereqs installs it)");
    let db = pg.database().await.expect("a database");
    let (s1, s2) = (db.clone(), db.clone());
    let a = TestRelay::start_with(move |c| c.store = Some(s1)).await;
    let b = TestRelay::start_with(move |c| c.store = Some(s2)).await;
    let id = identity();
    let mut ca = V4Client::connect(&v4_url(&a, "acme"))
        .await
        .expect("connect");
    let mut cb = V4Client::connect(&v4_url(&b, "acme"))
        .await
        .expect("connect");
    ca.authenticate(&id).await.expect("auth");
    assert!(
        matches!(cb.authenticate(&id).await.expect("auth"), Exit::Success(())),
        "one pin for both relays"
    );
    assert!(impostor_refused(&v4_url(&b, "acme"), &id.public_key).await);
    assert_eq!(
        ca.hello.as_ref().map(|h| h.remote_id),
        cb.hello.as_ref().map(|h| h.remote_id)
    );

    let s = cb
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    let first = batch(&id, "default", 2, 10);
    assert_eq!(
        acks(
            ca.write(&id, "default", vec![first.clone()])
                .await
                .expect("w")
        ),
        vec![0, 1]
    );
    // The retry through the other relay: the same sequences.
    assert_eq!(
        acks(
            cb.write(&id, "default", vec![first.clone()])
                .await
                .expect("w")
        ),
        vec![0, 1]
    );
    let mut regrouped = batch(&id, "default", 3, 10);
    regrouped.entry_ids[1] = first.entry_ids[0];
    assert_eq!(
        acks(
            cb.write(&id, "default", vec![regrouped.clone()])
                .await
                .expect("w")
        ),
        vec![2, 3, 4]
    );
    // The reader on relay b gets relay a's batch live (its own write is not echoed to it).
    let got = cb.collect(&s, 2).await.expect("live");
    assert_eq!(
        got,
        vec![RemoteBatch {
            sequence: 0,
            batch: first
        }]
    );
    let mut fresh = V4Client::connect(&v4_url(&a, "acme"))
        .await
        .expect("connect");
    fresh.authenticate(&id).await.expect("auth");
    let s = fresh
        .changes(&id.public_key, "default", 2)
        .await
        .expect("changes");
    assert_eq!(
        fresh.batches(&s).await.expect("batches"),
        vec![RemoteBatch {
            sequence: 2,
            batch: regrouped
        }]
    );
    a.shutdown().await;
    b.shutdown().await;
}

async fn admin(
    relay: &TestRelay,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).expect("json")
    };
    let answer = wharf_tests::http_request(
        relay.addr,
        method,
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
    .expect("admin request");
    (
        answer.status,
        serde_json::from_slice(&answer.body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn retention_cuts_whole_batches_and_spares_the_pins_and_quotas_refuse_whole_batches() {
    let relay = TestRelay::start_with(|c| c.quota.max_bytes = Some(200_000)).await;
    let url = v4_url(&relay, "acme");
    // Five identities pinned (more than the retention below keeps of any log).
    let ids: Vec<_> = (0..5).map(|_| identity()).collect();
    let mut c = V4Client::connect(&url).await.expect("connect");
    for id in &ids {
        assert!(matches!(
            c.authenticate(id).await.expect("auth"),
            Exit::Success(())
        ));
    }
    let id = &ids[0];
    let written: Vec<_> = (0..4).map(|_| batch(id, "default", 2, 10)).collect();
    for (i, b) in written.iter().enumerate() {
        let at = 2 * i as u64;
        assert_eq!(
            acks(c.write(id, "default", vec![b.clone()]).await.expect("w")),
            vec![at, at + 1]
        );
    }
    // Keep 3 entries a log: sequences 5, 6, 7 stay; 5 is the second half of a batch whose first
    // half is gone, so readers get the batch at 6 only.
    let (status, body) = admin(
        &relay,
        "PUT",
        "/admin/v1/tenants/acme/settings",
        serde_json::json!({"retention": {"max_entries": 3}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, report) = admin(
        &relay,
        "POST",
        "/admin/v1/tenants/acme/retention",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let mut r = V4Client::connect(&url).await.expect("connect");
    r.authenticate(id).await.expect("auth");
    let s = r
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    assert_eq!(
        r.batches(&s).await.expect("batches"),
        vec![RemoteBatch {
            sequence: 6,
            batch: written[3].clone()
        }]
    );
    // Every pin survived: no other key can take any of the identities.
    for id in &ids {
        assert!(
            impostor_refused(&url, &id.public_key).await,
            "{}'s pin was kept",
            id.public_key
        );
    }

    // Over the byte quota: the batch that would pass it is refused whole (nothing of it is
    // stored); a batch before it in the same request is stored, and the client's retry of the
    // request is acked there, as any retry is.
    let small = batch(id, "default", 1, 10);
    let big = batch(id, "default", 1, 300_000);
    let refused = c
        .write(id, "default", vec![small.clone(), big.clone()])
        .await
        .expect("w");
    assert_eq!(failure_code(refused), ErrorCode::InvalidRequest);
    let refused = c
        .write(id, "default", vec![small.clone(), big])
        .await
        .expect("w");
    assert_eq!(failure_code(refused), ErrorCode::InvalidRequest);
    assert_eq!(
        acks(c.write(id, "default", vec![small]).await.expect("w")),
        vec![8]
    );
    assert_eq!(
        acks(
            c.write(id, "default", vec![batch(id, "default", 1, 10)])
                .await
                .expect("w")
        ),
        vec![9]
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn open_chunked_writes_and_streams_are_bounded_per_connection() {
    let relay = TestRelay::start_with(|c| {
        c.max_message_bytes = 1 << 20;
        c.max_subscriptions_per_connection = 2;
    })
    .await;
    let id = identity();
    let mut c = V4Client::connect(&v4_url(&relay, "acme"))
        .await
        .expect("connect");
    c.authenticate(&id).await.expect("auth");
    let part = |n: i64| wharf_protocol::v4::Chunked {
        id: n,
        index: 0,
        total: 2,
        data: Bytes::from(vec![0u8; 500_000]),
    };
    // Two unfinished writes of 500 kB each fit in 1 MiB; a third does not.
    for n in 0..2 {
        let exit = c
            .call(tag::WRITE_CHUNKED, part(n).encode_payload())
            .await
            .expect("exit");
        assert_eq!(
            Exit::<Vec<WriteAck>>::decode(&exit).expect("exit"),
            Exit::Success(vec![])
        );
    }
    let exit = c
        .call(tag::WRITE_CHUNKED, part(2).encode_payload())
        .await
        .expect("exit");
    assert_eq!(
        failure_code(Exit::<Vec<WriteAck>>::decode(&exit).expect("exit")),
        ErrorCode::InvalidRequest
    );
    // The connection goes on, and so do whole writes.
    assert_eq!(
        acks(
            c.write(&id, "default", vec![batch(&id, "default", 1, 10)])
                .await
                .expect("w")
        ),
        vec![0]
    );
    // Two Changes streams, not three (max_subscriptions_per_connection).
    let first = c
        .changes(&id.public_key, "default", 0)
        .await
        .expect("changes");
    assert_eq!(c.batches(&first).await.expect("batches").len(), 1);
    c.changes(&id.public_key, "other", 0)
        .await
        .expect("changes");
    let third = c
        .changes(&id.public_key, "third", 0)
        .await
        .expect("changes");
    let exit = c.exit_of(&third).await.expect("exit");
    assert_eq!(
        failure_code(Exit::<()>::decode(&exit).expect("exit")),
        ErrorCode::InvalidRequest
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_scoped_token_pins_no_key_for_another_identity_and_long_store_ids_are_refused() {
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let (mine, victim) = (identity(), identity());
    let mut scoped = claims("acme", &[Action::Read, Action::Write]);
    scoped.logs = Some(vec![format!("{}/notes", mine.public_key)]);
    let url = format!("{}?token={}", v4_url(&relay, "acme"), relay.mint(&scoped));
    let mut c = V4Client::connect(&url).await.expect("connect");
    // Its own identity: yes. Another one, even with a valid signature of a key of its own: no
    // (it would pin that key for the victim).
    assert!(matches!(
        c.authenticate(&mine).await.expect("auth"),
        Exit::Success(())
    ));
    let impostor = wharf_protocol::v4::V4Identity::new(victim.public_key.clone(), [9; 32]);
    assert_eq!(
        failure_code(c.authenticate(&impostor).await.expect("auth")),
        ErrorCode::Unauthorized
    );
    // So the victim, with a token of its own, is not locked out.
    let full = relay.mint(&claims("acme", &[Action::Read, Action::Write]));
    let mut v = V4Client::connect(&format!("{}?token={full}", v4_url(&relay, "acme")))
        .await
        .expect("connect");
    assert!(matches!(
        v.authenticate(&victim).await.expect("auth"),
        Exit::Success(())
    ));
    // A storeId past max_public_key_bytes is refused; nothing chunked is joined before Authenticate.
    let long = "s".repeat(300);
    assert_eq!(
        failure_code(
            v.write(&victim, &long, vec![batch(&victim, &long, 1, 1)])
                .await
                .expect("w")
        ),
        ErrorCode::InvalidRequest
    );
    let mut anon = V4Client::connect(&format!("{}?token={full}", v4_url(&relay, "acme")))
        .await
        .expect("connect");
    let part = wharf_protocol::v4::Chunked {
        id: 1,
        index: 0,
        total: 2,
        data: Bytes::from_static(b"x"),
    };
    let exit = anon
        .call(tag::WRITE_CHUNKED, part.encode_payload())
        .await
        .expect("exit");
    assert_eq!(
        failure_code(Exit::<Vec<WriteAck>>::decode(&exit).expect("exit")),
        ErrorCode::Forbidden
    );
    relay.shutdown().await;
}
