//! Crypto vectors: Effect-written entries from the golden file (`tests/vectors/effect-v3-golden.json`), Wharf's own native
//! vectors (committed in `tests/vectors/native-v1.json`), and the properties the suites promise.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use wharf_protocol::crypto::{parse_public_key, CryptoError, EntryKey, NATIVE_IV_LEN};
use wharf_protocol::{
    EffectIdentity, Entry, Grant, GrantKeyPair, Identity, NativeIdentity, ReadKey, Suite,
};

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/effect-v3-golden.json"
    );
    let text = std::fs::read_to_string(path).expect("protocol/tests/vectors/effect-v3-golden.json");
    serde_json::from_str(&text).expect("golden json")
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn effect_read_key(g: &Value) -> ReadKey {
    let key: [u8; 32] = hex_of(&g["inputs"]["key"]).try_into().expect("32-byte key");
    let public_key = g["inputs"]["publicKey"].as_str().expect("publicKey");
    EffectIdentity::new(public_key, key).read_key().clone()
}

#[test]
fn decrypts_effect_written_entries() {
    let g = golden();
    let rk = effect_read_key(&g);
    let iv = hex_of(&g["inputs"]["iv"]);
    assert_eq!(Suite::from_iv(&iv).expect("suite"), Suite::Aes256Gcm);
    for (n, (ct, plain, id)) in [
        ("encryptedEntry1", "entry1Msgpack", "entryId"),
        ("encryptedEntry2", "entry2Msgpack", "entryId2"),
    ]
    .into_iter()
    .enumerate()
    {
        let ct = hex_of(&g["inputs"][ct]);
        let id = hex_of(&g["inputs"][id]);
        let plaintext = rk.decrypt(&iv, &id, &ct).expect("decrypts");
        assert_eq!(plaintext.as_slice(), hex_of(&g["inputs"][plain]).as_slice());
        let entry = rk.open(&iv, &id, &ct).expect("opens");
        assert_eq!(entry.event, "TodoCreated");
        assert_eq!(entry.primary_key, format!("todo-{}", n + 1));
        assert_eq!(entry.id.as_slice(), id.as_slice());
        assert_eq!(entry.timestamp_ms(), 1_700_000_000_000);
        // Re-encoding the decoded entry gives Effect's bytes back, and sealing them with the
        // same key and iv gives Effect's ciphertext back.
        assert_eq!(entry.encode(), plaintext.as_slice());
        assert_eq!(
            rk.seal(Suite::Aes256Gcm, &iv, &id, &entry.encode())
                .expect("seal"),
            ct
        );
    }
}

#[test]
fn effect_entry_under_another_id_is_refused() {
    let g = golden();
    let rk = effect_read_key(&g);
    let iv = hex_of(&g["inputs"]["iv"]);
    let ct = hex_of(&g["inputs"]["encryptedEntry1"]);
    let other_id = hex_of(&g["inputs"]["entryId2"]);
    assert!(matches!(
        rk.open(&iv, &other_id, &ct),
        Err(CryptoError::EntryIdMismatch)
    ));
}

#[test]
fn effect_identity_string_round_trips() {
    let g = golden();
    let key: [u8; 32] = hex_of(&g["inputs"]["key"]).try_into().expect("key");
    let id = EffectIdentity::new("5f0c2b9e-7d4a-4c1e-9b3f-2a6d8e1c4f70", key);
    let s = id.encode_string();
    // What Effect's `Identity.encodeString` makes of the same identity (base64url of its JSON).
    let json: Value = serde_json::from_slice(&base64_url_decode(&s)).expect("json");
    assert_eq!(json["publicKey"], "5f0c2b9e-7d4a-4c1e-9b3f-2a6d8e1c4f70");
    assert_eq!(
        json["privateKey"],
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    );
    let back = Identity::parse(&s).expect("parses");
    assert_eq!(back.log(), "5f0c2b9e-7d4a-4c1e-9b3f-2a6d8e1c4f70");
    assert_eq!(back.suite(), Suite::Aes256Gcm);
    assert_eq!(back.read_key().key().as_bytes(), &key);
    assert!(back.grant_keys().is_none());
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

#[test]
fn bad_identities_say_why() {
    for (input, needle) in [
        ("", "identity"),
        ("wharf-identity-v1:AAAA", "expected 32"),
        ("wharf-identity-v1:!!!", "base64url"),
        ("bm90IGpzb24", "JSON"),
        // {"publicKey":"x","privateKey":"AAEC"}: a 3-byte key
        (
            "eyJwdWJsaWNLZXkiOiJ4IiwicHJpdmF0ZUtleSI6IkFBRUMifQ",
            "32-byte",
        ),
    ] {
        let err = Identity::parse(input).expect_err(input).to_string();
        assert!(err.contains(needle), "{input:?}: {err}");
    }
}

fn native_fixture() -> (NativeIdentity, [u8; NATIVE_IV_LEN], Entry) {
    let root: [u8; 32] = std::array::from_fn(|i| i as u8);
    let id = NativeIdentity::from_root(root);
    let iv: [u8; NATIVE_IV_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
    let entry = Entry {
        id: hex::decode("018bcfe5680070008000000000000001")
            .expect("hex")
            .try_into()
            .expect("16"),
        event: "FactLearned".into(),
        primary_key: "fact-1".into(),
        payload: rmp_serde::to_vec_named(&json!({"text": "the sky is blue"})).expect("msgpack"),
    };
    (id, iv, entry)
}

/// Wharf's own vectors. Regenerate with `WHARF_BLESS=1 cargo test -p wharf-protocol --test crypto`
/// only on purpose: a change here breaks every stored native entry.
#[test]
fn native_vectors() {
    let (id, iv, entry) = native_fixture();
    let identity = Identity::Native(id.clone());
    let rk = identity.read_key();
    let plaintext = entry.encode();
    let ct = rk
        .seal(Suite::XChaCha20Poly1305, &iv, &entry.id, &plaintext)
        .expect("seal");
    let actual = json!({
        "root": hex::encode((0..32u8).collect::<Vec<_>>()),
        "identity": identity.to_string(),
        "log": identity.log(),
        "entryKey": hex::encode(rk.key().as_bytes()),
        "x25519Public": identity.grant_keys().expect("native").public_key_string(),
        "iv": hex::encode(iv),
        "entryId": hex::encode(entry.id),
        "plaintext": hex::encode(&plaintext),
        "ciphertext": hex::encode(&ct),
    });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/native-v1.json");
    if std::env::var_os("WHARF_BLESS").is_some() {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&actual).expect("json") + "\n",
        )
        .expect("write");
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("committed vectors"))
            .expect("json");
    assert_eq!(actual, expected);
    // And the committed ciphertext opens on its own.
    let opened = rk
        .open(
            &hex_of(&expected["iv"]),
            &hex_of(&expected["entryId"]),
            &hex_of(&expected["ciphertext"]),
        )
        .expect("opens");
    assert_eq!(opened, entry);
    assert_eq!(
        Identity::parse(expected["identity"].as_str().expect("str"))
            .expect("parse")
            .log(),
        identity.log()
    );
}

#[test]
fn native_entries_are_bound_to_log_and_id() {
    let (id, iv, entry) = native_fixture();
    let rk = Identity::Native(id).read_key().clone();
    let ct = rk
        .seal(Suite::XChaCha20Poly1305, &iv, &entry.id, &entry.encode())
        .expect("seal");
    // Same key, another log name: the relay moved the entry to another log.
    let moved = ReadKey::new("another-log", rk.key().clone());
    assert!(matches!(
        moved.open(&iv, &entry.id, &ct),
        Err(CryptoError::Decrypt(_))
    ));
    // Same log, another entry id: relabelled.
    let mut other = entry.id;
    other[15] ^= 1;
    assert!(matches!(
        rk.open(&iv, &other, &ct),
        Err(CryptoError::Decrypt(_))
    ));
    // A flipped bit anywhere.
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 0x40;
        assert!(
            rk.open(&iv, &entry.id, &bad).is_err(),
            "bit flip at {i} accepted"
        );
    }
    // An iv of neither suite's length.
    assert!(matches!(
        rk.open(&[0; 10], &entry.id, &ct),
        Err(CryptoError::UnknownSuite(10))
    ));
}

#[test]
fn one_batch_iv_still_gives_every_entry_its_own_nonce() {
    let (id, iv, entry) = native_fixture();
    let rk = Identity::Native(id).read_key().clone();
    let mut second = entry.clone();
    second.id[15] = 2;
    let a = rk
        .seal(Suite::XChaCha20Poly1305, &iv, &entry.id, &entry.encode())
        .expect("seal");
    let b = rk
        .seal(Suite::XChaCha20Poly1305, &iv, &second.id, &second.encode())
        .expect("seal");
    // The plaintexts differ in one byte; with a reused nonce the ciphertexts would too.
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        differing > a.len() / 2,
        "only {differing} of {} bytes differ",
        a.len()
    );
}

#[test]
fn native_identity_round_trips_and_derives_distinct_keys() {
    let mut rng = StdRng::seed_from_u64(7);
    let a = Identity::generate(&mut rng);
    let b = Identity::generate(&mut rng);
    assert_ne!(a.log(), b.log());
    assert_eq!(a.log().len(), 32);
    let back = Identity::parse(&a.to_string()).expect("parse");
    assert_eq!(back.log(), a.log());
    assert_eq!(back.read_key(), a.read_key());
    assert_eq!(
        back.grant_keys().expect("native").public_key(),
        a.grant_keys().expect("native").public_key()
    );
    assert_eq!(a.suite(), Suite::XChaCha20Poly1305);
    assert!(
        !format!("{a:?}").contains(&a.to_string()),
        "Debug leaks the secret"
    );
}

#[test]
fn grants_open_only_for_their_recipient() {
    let mut rng = StdRng::seed_from_u64(11);
    let owner = Identity::generate(&mut rng);
    let viewer = GrantKeyPair::generate(&mut rng);
    let stranger = GrantKeyPair::generate(&mut rng);
    let to = parse_public_key(&viewer.public_key_string()).expect("public key");
    let grant = Grant::seal(owner.read_key(), &to, &mut rng)
        .expect("seal")
        .to_string();
    assert!(grant.starts_with("wharf-grant-v1:"));

    let parsed = Grant::parse(&grant).expect("parse");
    let opened = viewer.open(&parsed).expect("the recipient opens it");
    assert_eq!(&opened, owner.read_key());
    assert!(matches!(
        stranger.open(&parsed),
        Err(CryptoError::GrantNotForUs)
    ));

    // Any damaged byte is refused.
    let mut raw = base64_url_decode(grant.strip_prefix("wharf-grant-v1:").expect("prefix"));
    let last = raw.len() - 1;
    raw[last] ^= 1;
    use base64::Engine as _;
    let damaged = format!(
        "wharf-grant-v1:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
    );
    assert!(viewer
        .open(&Grant::parse(&damaged).expect("parse"))
        .is_err());
    assert!(Grant::parse("wharf-grant-v1:AAAA").is_err());
    assert!(Grant::parse("hello").is_err());

    // Effect identities can be granted too: the read key is the AES key.
    let effect = Identity::Effect(EffectIdentity::generate(&mut rng));
    let g = Grant::seal(effect.read_key(), &to, &mut rng).expect("seal");
    assert_eq!(&viewer.open(&g).expect("open"), effect.read_key());

    // The all-zero (low-order) public key is refused rather than producing a known key.
    assert!(Grant::seal(owner.read_key(), &[0; 32], &mut rng).is_err());
    // Hex public keys are accepted.
    assert_eq!(parse_public_key(&hex::encode(to)).expect("hex"), to);
    let _ = EntryKey::from_bytes([0; 32]);
}

#[test]
fn entries_decode_in_any_map_form() {
    let (_, _, entry) = native_fixture();
    // A fixmap in another key order (what rmp or another encoder may write): the same entry.
    let mut alt = Vec::new();
    rmp::encode::write_map_len(&mut alt, 4).expect("vec");
    rmp::encode::write_str(&mut alt, "payload").expect("vec");
    rmp::encode::write_bin(&mut alt, &entry.payload).expect("vec");
    rmp::encode::write_str(&mut alt, "primaryKey").expect("vec");
    rmp::encode::write_str(&mut alt, &entry.primary_key).expect("vec");
    rmp::encode::write_str(&mut alt, "event").expect("vec");
    rmp::encode::write_str(&mut alt, &entry.event).expect("vec");
    rmp::encode::write_str(&mut alt, "id").expect("vec");
    rmp::encode::write_bin(&mut alt, &entry.id).expect("vec");
    assert_eq!(alt[0], 0x84);
    assert_eq!(Entry::decode(&alt).expect("decode"), entry);
    let mut trailing = entry.encode();
    trailing.push(0xc0);
    assert!(Entry::decode(&trailing).is_err());
    assert!(Entry::decode(&[]).is_err());
}
