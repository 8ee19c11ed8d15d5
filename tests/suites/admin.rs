//! The admin API against its OpenAPI description (docs/openapi.json), admin tokens, the
//! `wharf-relay admin` CLI end to end (tenants, export, import, deletion), and backups taken
//! while writes run, restored into a relay that serves the same remoteId and sequences.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use wharf_protocol::RelayMsg;
use wharf_relay::auth::token::{Action, Audience, Claims};
use wharf_relay::auth::unix_now;
use wharf_tests::{
    entries, eventually, http_request, relay_binary, stored_count, ChildRelay, Client, HttpAnswer,
    TestRelay,
};

const PK: &str = "admin-log";

fn claims(relay: &TestRelay, tenant: &str, actions: Vec<Action>) -> Claims {
    let now = unix_now();
    Claims {
        iss: relay.config.auth.issuer.clone(),
        sub: "admin-test".into(),
        aud: Audience::One(relay.config.auth.audience.clone()),
        tenant: tenant.into(),
        actions,
        logs: None,
        exp: now + 600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    }
}

async fn call(
    relay: &TestRelay,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpAnswer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http_request(relay.addr, method, path, &headers, body.to_vec())
        .await
        .expect("request")
}

/// The OpenAPI description, and a check that an answer is one it documents.
struct Spec(Value);

impl Spec {
    fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        Spec(serde_json::from_slice(&std::fs::read(path).expect("openapi.json")).expect("JSON"))
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in self.0["paths"].as_object().expect("paths") {
            for method in ["get", "post", "delete", "put", "patch"] {
                if item.get(method).is_some() {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut node = &self.0;
                for part in r.trim_start_matches("#/").split('/') {
                    node = &node[part];
                }
                node
            }
            None => v,
        }
    }

    /// Required keys of a schema (through `$ref` and `allOf`).
    fn required(&self, schema: &Value) -> Vec<String> {
        let schema = self.resolve(schema);
        let mut keys: Vec<String> = schema["required"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(all) = schema["allOf"].as_array() {
            for part in all {
                keys.extend(self.required(part));
            }
        }
        keys
    }

    /// Asserts that `answer` to `method template` is documented, and that a JSON body has the
    /// documented schema's required keys.
    fn check(&self, method: &str, template: &str, answer: &HttpAnswer) {
        let op = &self.0["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not in openapi.json");
        let status = answer.status.to_string();
        let documented = op["responses"].get(&status).unwrap_or_else(|| {
            panic!(
                "{method} {template} answered {status} ({}), which openapi.json does not document",
                answer.text()
            )
        });
        let documented = self.resolve(documented);
        if let Some(content) = documented.get("content") {
            let (kind, media) = content
                .as_object()
                .expect("content")
                .iter()
                .next()
                .expect("a type");
            let got = answer.header("content-type").unwrap_or_default();
            assert!(
                got.starts_with(kind.as_str()),
                "{method} {template}: {got} is not {kind}"
            );
            if kind == "application/json" {
                let body: Value = serde_json::from_slice(&answer.body).expect("JSON body");
                for key in self.required(&media["schema"]) {
                    assert!(
                        body.get(&key).is_some(),
                        "{method} {template}: no {key:?} in {body}"
                    );
                }
                if let Some(items) =
                    self.resolve(&media["schema"])["properties"]["tenants"]["items"].as_object()
                {
                    let item = Value::Object(items.clone());
                    for t in body["tenants"].as_array().expect("tenants") {
                        for key in self.required(&item) {
                            assert!(t.get(&key).is_some(), "no {key:?} in {t}");
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn the_admin_api_answers_as_openapi_json_documents() {
    let spec = Spec::load();
    let relay = TestRelay::start_with_tokens(|_| {}).await;
    let all = relay.mint(&claims(&relay, "*", vec![Action::Admin]));
    let acme_admin = relay.mint(&claims(&relay, "acme", vec![Action::Admin]));
    let acme_rw = relay.mint(&claims(&relay, "acme", vec![Action::Read, Action::Write]));
    let mut writer = Client::connect(&relay.url_with_token("acme", &acme_rw))
        .await
        .expect("connect");
    for batch in 0..3 {
        writer
            .write_acked(PK, entries(batch, 10, 50))
            .await
            .expect("acked");
    }
    writer
        .write_acked("other-log", entries(9, 2, 50))
        .await
        .expect("acked");
    let mut seen = BTreeSet::new();
    let mut check = |method: &str, template: &str, answer: &HttpAnswer| {
        spec.check(method, template, answer);
        seen.insert((method.to_owned(), template.to_owned()));
    };

    let list = call(&relay, "GET", "/admin/v1/tenants", Some(&all), b"").await;
    check("GET", "/admin/v1/tenants", &list);
    let body: Value = serde_json::from_slice(&list.body).expect("JSON");
    let acme = &body["tenants"][0];
    assert_eq!(acme["tenant"], "acme");
    assert_eq!(acme["state"], "active");
    assert_eq!(acme["entries"], 32);
    assert_eq!(acme["logs"], 2);
    assert_eq!(acme["connections"], 1);
    assert!(acme["size_bytes"].as_u64().expect("size") > 0);
    // Without a token, with a token of another scope, with a non-admin token.
    let none = call(&relay, "GET", "/admin/v1/tenants", None, b"").await;
    assert_eq!(none.status, 401);
    check("GET", "/admin/v1/tenants", &none);
    let scoped = call(&relay, "GET", "/admin/v1/tenants", Some(&acme_admin), b"").await;
    assert_eq!(scoped.status, 403, "listing needs a token for every tenant");
    check("GET", "/admin/v1/tenants", &scoped);
    let rw = call(&relay, "GET", "/admin/v1/tenants/acme", Some(&acme_rw), b"").await;
    assert_eq!(rw.status, 403, "{}", rw.text());
    check("GET", "/admin/v1/tenants/{tenant}", &rw);

    let show = call(
        &relay,
        "GET",
        "/admin/v1/tenants/acme",
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(show.status, 200);
    check("GET", "/admin/v1/tenants/{tenant}", &show);
    let detail: Value = serde_json::from_slice(&show.body).expect("JSON");
    assert_eq!(
        detail["remote_id"],
        uuid::Uuid::from_slice(&writer.remote_id)
            .expect("uuid")
            .to_string()
    );
    assert_eq!(detail["log_states"][0]["public_key"], PK);
    assert_eq!(detail["log_states"][0]["next_sequence"], 30);
    let missing = call(&relay, "GET", "/admin/v1/tenants/nobody", Some(&all), b"").await;
    assert_eq!(missing.status, 404);
    check("GET", "/admin/v1/tenants/{tenant}", &missing);
    let bad = call(&relay, "GET", "/admin/v1/tenants/NO!", Some(&all), b"").await;
    assert_eq!(bad.status, 400);
    check("GET", "/admin/v1/tenants/{tenant}", &bad);
    let other = call(
        &relay,
        "GET",
        "/admin/v1/tenants/other",
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(other.status, 403);

    let export = call(
        &relay,
        "GET",
        "/admin/v1/tenants/acme/export",
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(export.status, 200);
    check("GET", "/admin/v1/tenants/{tenant}/export", &export);
    let lines: Vec<Value> = export
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1 + 32 + 1);
    assert_eq!(lines[0]["format"], "wharf-export");
    assert_eq!(lines[33]["entries"], 32);

    // In use: refused, then forced (the writer is closed with 1008).
    let busy = call(
        &relay,
        "DELETE",
        &format!("/admin/v1/tenants/acme/logs/{PK}"),
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(busy.status, 409, "{}", busy.text());
    check(
        "DELETE",
        "/admin/v1/tenants/{tenant}/logs/{public_key}",
        &busy,
    );
    let forced = call(
        &relay,
        "DELETE",
        &format!("/admin/v1/tenants/acme/logs/{PK}?force=true"),
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(forced.status, 204, "{}", forced.text());
    check(
        "DELETE",
        "/admin/v1/tenants/{tenant}/logs/{public_key}",
        &forced,
    );
    let closed = writer.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    let gone = call(
        &relay,
        "DELETE",
        &format!("/admin/v1/tenants/acme/logs/{PK}"),
        Some(&acme_admin),
        b"",
    )
    .await;
    assert_eq!(gone.status, 404);
    check(
        "DELETE",
        "/admin/v1/tenants/{tenant}/logs/{public_key}",
        &gone,
    );
    let detail: Value = serde_json::from_slice(
        &call(
            &relay,
            "GET",
            "/admin/v1/tenants/acme",
            Some(&acme_admin),
            b"",
        )
        .await
        .body,
    )
    .expect("JSON");
    assert_eq!(detail["entries"], 2, "the other log stays");

    // Import the export into a new tenant, then refuse to import over it.
    let body = export.body.clone();
    let imported = call(
        &relay,
        "POST",
        "/admin/v1/tenants/copy/import",
        Some(&all),
        &body,
    )
    .await;
    assert_eq!(imported.status, 201, "{}", imported.text());
    check("POST", "/admin/v1/tenants/{tenant}/import", &imported);
    let again = call(
        &relay,
        "POST",
        "/admin/v1/tenants/copy/import",
        Some(&all),
        &body,
    )
    .await;
    assert_eq!(again.status, 409);
    check("POST", "/admin/v1/tenants/{tenant}/import", &again);
    let cut = &body[..body.len() / 2];
    let broken = call(
        &relay,
        "POST",
        "/admin/v1/tenants/broken/import",
        Some(&all),
        cut,
    )
    .await;
    assert_eq!(broken.status, 400, "{}", broken.text());
    check("POST", "/admin/v1/tenants/{tenant}/import", &broken);
    assert!(
        !relay.config.data.join("tenants/broken.sqlite").exists(),
        "nothing left behind"
    );
    let mut reader = Client::connect(&relay.url_with_token(
        "copy",
        &relay.mint(&claims(&relay, "copy", vec![Action::Read])),
    ))
    .await
    .expect("connect");
    assert_eq!(reader.remote_id, writer.remote_id, "remoteId kept");
    reader.subscribe(PK, 0).await.expect("subscribe");
    let log = reader.collect(PK, 30).await.expect("entries");
    let original: Vec<_> = (0..3).flat_map(|b| entries(b, 10, 50)).collect();
    for (i, (got, want)) in log.iter().zip(&original).enumerate() {
        assert_eq!(got.sequence, i as u64);
        assert_eq!(got.entry_id, want.entry_id);
        assert_eq!(got.encrypted_entry, want.encrypted_entry);
    }
    drop(reader);

    let delete = call(
        &relay,
        "DELETE",
        "/admin/v1/tenants/copy?force=true",
        Some(&all),
        b"",
    )
    .await;
    assert_eq!(delete.status, 204, "{}", delete.text());
    check("DELETE", "/admin/v1/tenants/{tenant}", &delete);
    let delete = call(&relay, "DELETE", "/admin/v1/tenants/copy", Some(&all), b"").await;
    assert_eq!(delete.status, 404);
    check("DELETE", "/admin/v1/tenants/{tenant}", &delete);

    // Tenant settings and retention, as documented.
    let settings = "/admin/v1/tenants/{tenant}/settings";
    let got = call(
        &relay,
        "GET",
        "/admin/v1/tenants/acme/settings",
        Some(&all),
        b"",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    check("GET", settings, &got);
    let body = br#"{"retention":{"max_entries":1000000},"quota":{"max_logs":100}}"#;
    let put = call(
        &relay,
        "PUT",
        "/admin/v1/tenants/acme/settings",
        Some(&all),
        body,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    check("PUT", settings, &put);
    let bad = call(
        &relay,
        "PUT",
        "/admin/v1/tenants/acme/settings",
        Some(&all),
        b"{\"retention\":{\"nope\":1}}",
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    check("PUT", settings, &bad);
    let ran = call(
        &relay,
        "POST",
        "/admin/v1/tenants/acme/retention",
        Some(&all),
        b"",
    )
    .await;
    assert_eq!(ran.status, 200, "{}", ran.text());
    check("POST", "/admin/v1/tenants/{tenant}/retention", &ran);
    let deleted = call(
        &relay,
        "DELETE",
        "/admin/v1/tenants/acme/settings",
        Some(&all),
        b"",
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    check("DELETE", settings, &deleted);

    // Revocation: the scoped admin token stops working.
    let jti = {
        let c = claims(&relay, "acme", vec![Action::Admin]);
        let jti = c.jti.clone();
        let token = relay.mint(&c);
        assert_eq!(
            call(&relay, "GET", "/admin/v1/tenants/acme", Some(&token), b"")
                .await
                .status,
            200
        );
        (jti, token)
    };
    let body = serde_json::to_vec(&serde_json::json!({ "jti": jti.0 })).expect("JSON");
    let revoked = call(&relay, "POST", "/admin/v1/revocations", Some(&all), &body).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    check("POST", "/admin/v1/revocations", &revoked);
    let nonsense = call(&relay, "POST", "/admin/v1/revocations", Some(&all), b"{}").await;
    assert_eq!(nonsense.status, 400);
    check("POST", "/admin/v1/revocations", &nonsense);
    eventually("the revocation reaches the relay", || async {
        call(&relay, "GET", "/admin/v1/tenants/acme", Some(&jti.1), b"")
            .await
            .status
            == 401
    })
    .await;

    assert_eq!(
        seen,
        spec.operations(),
        "every documented operation was exercised"
    );
    relay.shutdown().await;
}

fn admin(addr: &str, args: &[&str]) -> Output {
    eprintln!("wharf-relay admin {args:?}");
    let out = std::process::Command::new(relay_binary())
        .args(["admin", "--url", &format!("http://{addr}")])
        .args(args)
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf-relay admin");
    out
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_admin_cli_lists_exports_imports_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = ChildRelay::start(&dir.path().join("data"), &[])
        .await
        .expect("start");
    let addr = relay.addr.to_string();
    let mut w = Client::connect(&relay.url("acme")).await.expect("connect");
    for batch in 0..4 {
        w.write_acked(PK, entries(batch, 25, 80))
            .await
            .expect("acked");
    }
    let mut beta = Client::connect(&relay.url("beta")).await.expect("connect");
    beta.write_acked(PK, entries(7, 3, 10))
        .await
        .expect("acked");
    drop(beta);

    let table = ok(admin(&addr, &["tenants"]));
    assert!(table.starts_with("TENANT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("acme") && l.contains("100")),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok(admin(&addr, &["tenants", "--json"]))).expect("JSON");
    let names: Vec<&str> = json["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert_eq!(names, ["acme", "beta"]);
    let shown = ok(admin(&addr, &["tenant", "acme"]));
    assert!(shown.contains(PK) && shown.contains("100"), "{shown}");

    let file = dir.path().join("acme.ndjson");
    let file_arg = file.to_str().expect("utf-8");
    let said = ok(admin(&addr, &["export", "acme", "-o", file_arg]));
    assert!(said.contains("exported 100 entries"), "{said}");
    let said = ok(admin(&addr, &["import", "copy", "-i", file_arg]));
    assert!(said.contains("imported 100 entries"), "{said}");
    let refused = admin(&addr, &["import", "copy", "-i", file_arg]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("already has data"), "{said}");
    ok(admin(
        &addr,
        &["import", "copy", "-i", file_arg, "--replace"],
    ));
    let mut copy = Client::connect(&relay.url("copy")).await.expect("connect");
    assert_eq!(copy.remote_id, w.remote_id);
    copy.subscribe(PK, 0).await.expect("subscribe");
    let log = copy.collect(PK, 100).await.expect("entries");
    assert_eq!(log.last().map(|e| e.sequence), Some(99));
    drop(copy);

    // acme is in use: refused, then forced; its client is closed with 1008.
    let refused = admin(&addr, &["delete-tenant", "acme"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409"));
    ok(admin(
        &addr,
        &["delete-tenant", "acme", "--force", "--json"],
    ));
    let closed = w.closed().await.expect("closed");
    assert_eq!(closed.code, Some(1008));
    ok(admin(&addr, &["delete-log", "beta", PK]));
    let json: Value =
        serde_json::from_str(&ok(admin(&addr, &["tenants", "--json"]))).expect("JSON");
    let left: HashMap<String, u64> = json["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|t| {
            (
                t["tenant"].as_str().unwrap_or_default().to_owned(),
                t["entries"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        left,
        HashMap::from([("beta".to_owned(), 0), ("copy".to_owned(), 100)])
    );
    let missing = admin(&addr, &["tenant", "acme"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}

/// entry id → acked sequence.
type Acked = Arc<Mutex<HashMap<Bytes, u64>>>;

async fn keep_writing(
    url: String,
    prefix: u32,
    acked: Acked,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut c = Client::connect(&url).await.expect("connect");
    for batch in 0u32.. {
        if stop.is_cancelled() {
            return;
        }
        let es = entries(prefix * 100_000 + batch, 5, 200);
        let ids: Vec<Bytes> = es.iter().map(|e| e.entry_id.clone()).collect();
        let seqs = c.write_acked(PK, es).await.expect("acked");
        acked
            .lock()
            .expect("lock")
            .extend(ids.into_iter().zip(seqs));
    }
}

#[tokio::test]
async fn a_backup_taken_during_writes_restores_every_entry_acked_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let relay = ChildRelay::start(&data, &[("WHARF_AUTH", "token")])
        .await
        .expect("start");
    let key = data.join("auth/signing-key.pem");
    let token = |tenant: &str| -> String {
        let out = std::process::Command::new(relay_binary())
            .args([
                "token",
                "issue",
                "--tenant",
                tenant,
                "--actions",
                "read,write",
                "--data",
            ])
            .arg(&data)
            .output()
            .expect("token issue");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let tenants = ["alpha", "beta"];
    let urls: Vec<String> = tenants
        .iter()
        .map(|t| format!("{}?token={}", relay.url(t), token(t)))
        .collect();
    let acked: Vec<Acked> = tenants.iter().map(|_| Acked::default()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = urls
        .iter()
        .zip(&acked)
        .enumerate()
        .map(|(i, (url, acked))| {
            tokio::spawn(keep_writing(
                url.clone(),
                i as u32,
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    eventually("writes are acked", || async {
        acked.iter().all(|a| a.lock().expect("lock").len() >= 500)
    })
    .await;
    // Everything acked now must be in the backup.
    let before: Vec<HashMap<Bytes, u64>> = acked
        .iter()
        .map(|a| a.lock().expect("lock").clone())
        .collect();
    let backup_dir = dir.path().join("backup");
    let out = tokio::process::Command::new(relay_binary())
        .args(["backup", "--json", "--data"])
        .arg(&data)
        .arg("--to")
        .arg(&backup_dir)
        .output()
        .await
        .expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value = serde_json::from_slice(&out.stdout).expect("manifest JSON");
    stop.cancel();
    for w in writers {
        w.await.expect("writer");
    }
    let after: usize = acked.iter().map(|a| a.lock().expect("lock").len()).sum();
    assert!(
        after > before.iter().map(HashMap::len).sum::<usize>(),
        "writes ran during the backup"
    );
    assert_eq!(manifest["tenants"].as_array().expect("tenants").len(), 2);
    assert!(manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .any(|f| f["path"] == "auth/signing-key.pem"));

    // A backup into a non-empty directory is refused; so is a restore over data.
    let again = std::process::Command::new(relay_binary())
        .args(["backup", "--data"])
        .arg(&data)
        .arg("--to")
        .arg(&backup_dir)
        .output()
        .expect("backup");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let restored = dir.path().join("restored");
    let out = std::process::Command::new(relay_binary())
        .args(["restore", "--from"])
        .arg(&backup_dir)
        .arg("--data")
        .arg(&restored)
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&key).expect("key"),
        std::fs::read(restored.join("auth/signing-key.pem")).expect("restored key"),
        "the relay's key comes back: its tokens stay valid"
    );
    let second = ChildRelay::start(&restored, &[("WHARF_AUTH", "token")])
        .await
        .expect("start restored");
    for (i, tenant) in tenants.iter().enumerate() {
        let url = format!(
            "{}?token={}",
            second.url(tenant),
            token_for(&restored, tenant)
        );
        let original = Client::connect(&urls[i]).await.expect("original");
        let mut c = Client::connect(&url).await.expect("restored");
        assert_eq!(
            c.remote_id, original.remote_id,
            "{tenant}: the same remoteId"
        );
        let count = stored_count(&restored, tenant, PK);
        assert_eq!(
            count as u64,
            manifest["tenants"][i]["logs"][0]["entries"]
                .as_u64()
                .expect("entries"),
            "the manifest counts what is there"
        );
        c.subscribe(PK, 0).await.expect("subscribe");
        let log = c.collect(PK, count).await.expect("log");
        let by_id: HashMap<&Bytes, u64> = log.iter().map(|e| (&e.entry_id, e.sequence)).collect();
        for (id, seq) in &before[i] {
            assert_eq!(
                by_id.get(id),
                Some(seq),
                "{tenant}: an entry acked before the backup"
            );
        }
        assert!(
            matches!(c.ping_pong().await, Ok(ref m) if m.iter().all(|m| !matches!(m, RelayMsg::Changes { .. })))
        );
    }
    // A damaged backup is refused before anything is written.
    let victim = backup_dir.join("tenants/alpha.sqlite");
    let mut bytes = std::fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write");
    let elsewhere = dir.path().join("elsewhere");
    let out = std::process::Command::new(relay_binary())
        .args(["restore", "--from"])
        .arg(&backup_dir)
        .arg("--data")
        .arg(&elsewhere)
        .output()
        .expect("restore");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    assert!(!elsewhere.join("tenants").exists());
}

fn token_for(data: &Path, tenant: &str) -> String {
    let out = std::process::Command::new(relay_binary())
        .args([
            "token",
            "issue",
            "--tenant",
            tenant,
            "--actions",
            "read",
            "--data",
        ])
        .arg(data)
        .output()
        .expect("token issue");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
