//! End-to-end encryption: identities, the two entry suites, and key grants. Pure functions:
//! randomness comes in as an argument ([`CryptoRngCore`]), so this builds for wasm32 and the
//! browser viewer runs the same code as the native client.
//!
//! Two suites share the wire format and are told apart by the stored `iv`'s length:
//!
//! | suite | iv on the wire | nonce | associated data |
//! | --- | --- | --- | --- |
//! | [`Suite::XChaCha20Poly1305`] (native) | 8 random bytes per batch | iv ‖ entryId (24 bytes) | log name and entryId |
//! | [`Suite::Aes256Gcm`] (Effect v3) | 12 random bytes per batch | iv | none |
//!
//! The native nonce is unique per entry although a batch shares one iv, because every entry
//! has its own entryId; the associated data stops the relay from moving an entry to another log
//! or relabelling it. Effect's suite reuses its iv across a batch (wire spec §9 A1), so Wharf
//! writes Effect-suite entries one per batch.

use std::fmt;

use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use serde::Deserialize;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::entry::{Entry, EntryError};

/// Bytes of `iv` a native (XChaCha20-Poly1305) batch carries.
pub const NATIVE_IV_LEN: usize = 8;
/// Bytes of `iv` an Effect (AES-256-GCM) batch carries.
pub const EFFECT_IV_LEN: usize = 12;
/// Bytes of a Wharf entry id (a UUIDv7).
pub const ENTRY_ID_LEN: usize = 16;

const NATIVE_PREFIX: &str = "wharf-identity-v1:";
const GRANT_PREFIX: &str = "wharf-grant-v1:";
const HKDF_SALT: &[u8] = b"wharf/v1";
const ENTRY_AD: &[u8] = b"wharf/v1/entry";
const GRANT_INFO: &[u8] = b"wharf/v1/grant";
const GRANT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("this entry does not decrypt with the key for log {0:?} (wrong key, or tampered)")]
    Decrypt(String),
    #[error("unknown iv length {0}: expected {NATIVE_IV_LEN} (native) or {EFFECT_IV_LEN} (Effect AES-GCM)")]
    UnknownSuite(usize),
    #[error("a native entry needs a 16-byte entry id, got {0} bytes")]
    EntryIdLength(usize),
    #[error("the decrypted entry's id does not match the id it was stored under")]
    EntryIdMismatch,
    #[error(transparent)]
    Entry(#[from] EntryError),
    #[error("not an identity: {0}")]
    Identity(String),
    #[error("not a key grant: {0}")]
    Grant(String),
    #[error("this key grant was sealed to another key, or it is damaged")]
    GrantNotForUs,
    #[error("not an x25519 public key: {0}")]
    PublicKey(String),
    #[error("encryption failed (an input of gigabytes?)")]
    Seal,
}

/// Which cipher protects an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Wharf's native suite.
    XChaCha20Poly1305,
    /// Effect v3's `makeEncryptionSubtle`.
    Aes256Gcm,
}

impl Suite {
    /// Readers tell the suites apart from the stored iv.
    pub fn from_iv(iv: &[u8]) -> Result<Suite, CryptoError> {
        match iv.len() {
            NATIVE_IV_LEN => Ok(Suite::XChaCha20Poly1305),
            EFFECT_IV_LEN => Ok(Suite::Aes256Gcm),
            n => Err(CryptoError::UnknownSuite(n)),
        }
    }

    pub fn iv_len(self) -> usize {
        match self {
            Suite::XChaCha20Poly1305 => NATIVE_IV_LEN,
            Suite::Aes256Gcm => EFFECT_IV_LEN,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Suite::XChaCha20Poly1305 => "xchacha20poly1305",
            Suite::Aes256Gcm => "aes-256-gcm",
        }
    }
}

/// A 32-byte symmetric entry key, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct EntryKey([u8; 32]);

impl EntryKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EntryKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EntryKey(..)")
    }
}

/// What it takes to read a log: its name (the relay's `publicKey`) and its entry key. A
/// [`Grant`] carries one; every [`Identity`] has one.
///
/// The entry suites are symmetric, so a read key could also produce entries that decrypt; Wharf's
/// tools treat a log they only hold a read key for as read-only.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadKey {
    log: String,
    key: EntryKey,
}

impl fmt::Debug for ReadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadKey")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl ReadKey {
    pub fn new(log: impl Into<String>, key: EntryKey) -> Self {
        ReadKey {
            log: log.into(),
            key,
        }
    }

    /// The log's name: the `publicKey` the relay files its entries under.
    pub fn log(&self) -> &str {
        &self.log
    }

    pub fn key(&self) -> &EntryKey {
        &self.key
    }

    /// Decrypts one stored entry, choosing the suite from the iv's length.
    pub fn decrypt(
        &self,
        iv: &[u8],
        entry_id: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let fail = || CryptoError::Decrypt(self.log.clone());
        let plain = match Suite::from_iv(iv)? {
            Suite::XChaCha20Poly1305 => {
                let nonce = native_nonce(iv, entry_id)?;
                let aad = native_aad(&self.log, entry_id);
                XChaCha20Poly1305::new(self.key.0.as_slice().into())
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: ciphertext,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| fail())?
            }
            Suite::Aes256Gcm => Aes256Gcm::new(self.key.0.as_slice().into())
                .decrypt(aes_gcm::Nonce::from_slice(iv), ciphertext)
                .map_err(|_| fail())?,
        };
        Ok(Zeroizing::new(plain))
    }

    /// Decrypts and decodes one stored entry, and checks that the id inside is the id it was
    /// stored under (Effect's suite does not bind the id, so this is where a relabelled entry is
    /// caught).
    pub fn open(
        &self,
        iv: &[u8],
        entry_id: &[u8],
        ciphertext: &[u8],
    ) -> Result<Entry, CryptoError> {
        let plain = self.decrypt(iv, entry_id, ciphertext)?;
        let entry = Entry::decode(&plain)?;
        if entry.id.as_slice() != entry_id {
            return Err(CryptoError::EntryIdMismatch);
        }
        Ok(entry)
    }

    /// Encrypts one entry's plaintext with `suite`. The caller owns iv uniqueness: a fresh random
    /// iv per batch for the native suite, per entry for AES-GCM.
    pub fn seal(
        &self,
        suite: Suite,
        iv: &[u8],
        entry_id: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if iv.len() != suite.iv_len() {
            return Err(CryptoError::UnknownSuite(iv.len()));
        }
        let sealed = match suite {
            Suite::XChaCha20Poly1305 => {
                let nonce = native_nonce(iv, entry_id)?;
                let aad = native_aad(&self.log, entry_id);
                XChaCha20Poly1305::new(self.key.0.as_slice().into()).encrypt(
                    &nonce,
                    Payload {
                        msg: plaintext,
                        aad: &aad,
                    },
                )
            }
            Suite::Aes256Gcm => Aes256Gcm::new(self.key.0.as_slice().into())
                .encrypt(aes_gcm::Nonce::from_slice(iv), plaintext),
        };
        // Both AEADs fail only for inputs of gigabytes, far beyond any frame limit.
        sealed.map_err(|_| CryptoError::Seal)
    }
}

fn native_nonce(iv: &[u8], entry_id: &[u8]) -> Result<XNonce, CryptoError> {
    if entry_id.len() != ENTRY_ID_LEN {
        return Err(CryptoError::EntryIdLength(entry_id.len()));
    }
    let mut nonce = XNonce::default();
    nonce[..NATIVE_IV_LEN].copy_from_slice(iv);
    nonce[NATIVE_IV_LEN..].copy_from_slice(entry_id);
    Ok(nonce)
}

/// `"wharf/v1/entry" ‖ u16be(len(log)) ‖ log ‖ entryId`: length-prefixed so no two (log, id)
/// pairs share an encoding.
fn native_aad(log: &str, entry_id: &[u8]) -> Vec<u8> {
    let log_len = u16::try_from(log.len()).unwrap_or(u16::MAX);
    let mut aad = Vec::with_capacity(ENTRY_AD.len() + 2 + log.len() + entry_id.len());
    aad.extend_from_slice(ENTRY_AD);
    aad.extend_from_slice(&log_len.to_be_bytes());
    aad.extend_from_slice(log.as_bytes());
    aad.extend_from_slice(entry_id);
    aad
}

/// An x25519 key pair for receiving [`Grant`]s. Native identities derive one; the browser
/// viewer makes its own.
#[derive(Clone)]
pub struct GrantKeyPair {
    secret: StaticSecret,
}

impl fmt::Debug for GrantKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantKeyPair")
            .field("public", &self.public_key_string())
            .finish_non_exhaustive()
    }
}

impl GrantKeyPair {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        GrantKeyPair {
            secret: StaticSecret::random_from_rng(rng),
        }
    }

    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        GrantKeyPair {
            secret: StaticSecret::from(bytes),
        }
    }

    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// The public key as people paste it: unpadded base64url, 43 characters.
    pub fn public_key_string(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public_key())
    }

    /// Opens a grant sealed to this key pair.
    pub fn open(&self, grant: &Grant) -> Result<ReadKey, CryptoError> {
        let eph = PublicKey::from(grant.ephemeral);
        let shared = self.secret.diffie_hellman(&eph);
        if !shared.was_contributory() {
            return Err(CryptoError::GrantNotForUs);
        }
        let key = grant_key(shared.as_bytes(), &grant.ephemeral, &self.public_key());
        let plain = XChaCha20Poly1305::new(key.as_slice().into())
            .decrypt(
                XNonce::from_slice(&grant.nonce),
                Payload {
                    msg: &grant.ciphertext,
                    aad: GRANT_INFO,
                },
            )
            .map_err(|_| CryptoError::GrantNotForUs)?;
        let plain = Zeroizing::new(plain);
        if plain.len() < 32 {
            return Err(CryptoError::Grant("the sealed key is too short".into()));
        }
        let (key, log) = plain.split_at(32);
        let log = std::str::from_utf8(log)
            .map_err(|_| CryptoError::Grant("the log name is not UTF-8".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(key);
        Ok(ReadKey::new(log, EntryKey::from_bytes(k)))
    }
}

/// Reads 32 bytes written as hex (64 digits), base64 or base64url (padded or not): how people
/// paste keys.
pub fn parse_key_bytes(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).map_err(|e| e.to_string())?
    } else {
        STANDARD
            .decode(s)
            .or_else(|_| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')))
            .map_err(|_| "neither hex nor base64".to_owned())?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))
}

/// Parses an x25519 public key in the form [`GrantKeyPair::public_key_string`] prints (hex and
/// padded base64 are accepted too).
pub fn parse_public_key(s: &str) -> Result<[u8; 32], CryptoError> {
    parse_key_bytes(s).map_err(CryptoError::PublicKey)
}

/// A read key sealed to one recipient's x25519 public key: an ephemeral x25519 key, HKDF-SHA256
/// and XChaCha20-Poly1305. Only the recipient's secret opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    ephemeral: [u8; 32],
    nonce: [u8; 24],
    ciphertext: Vec<u8>,
}

impl Grant {
    pub fn seal(
        read_key: &ReadKey,
        recipient: &[u8; 32],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Grant, CryptoError> {
        let eph_secret = StaticSecret::random_from_rng(&mut *rng);
        let ephemeral = PublicKey::from(&eph_secret).to_bytes();
        let shared = eph_secret.diffie_hellman(&PublicKey::from(*recipient));
        if !shared.was_contributory() {
            return Err(CryptoError::PublicKey("a low-order point".into()));
        }
        let key = grant_key(shared.as_bytes(), &ephemeral, recipient);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut plain = Zeroizing::new(Vec::with_capacity(32 + read_key.log.len()));
        plain.extend_from_slice(read_key.key.as_bytes());
        plain.extend_from_slice(read_key.log.as_bytes());
        let ciphertext = XChaCha20Poly1305::new(key.as_slice().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: GRANT_INFO,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        Ok(Grant {
            ephemeral,
            nonce,
            ciphertext,
        })
    }

    pub fn parse(s: &str) -> Result<Grant, CryptoError> {
        let body = s.trim().strip_prefix(GRANT_PREFIX).ok_or_else(|| {
            CryptoError::Grant(format!("it does not start with {GRANT_PREFIX:?}"))
        })?;
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| CryptoError::Grant(e.to_string()))?;
        // version ‖ ephemeral ‖ nonce ‖ ciphertext (at least a key and a tag)
        if raw.len() < 1 + 32 + 24 + 32 + 16 {
            return Err(CryptoError::Grant("too short".into()));
        }
        if raw[0] != GRANT_VERSION {
            return Err(CryptoError::Grant(format!("unknown version {}", raw[0])));
        }
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&raw[1..33]);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&raw[33..57]);
        Ok(Grant {
            ephemeral,
            nonce,
            ciphertext: raw[57..].to_vec(),
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(57 + self.ciphertext.len());
        raw.push(GRANT_VERSION);
        raw.extend_from_slice(&self.ephemeral);
        raw.extend_from_slice(&self.nonce);
        raw.extend_from_slice(&self.ciphertext);
        write!(f, "{GRANT_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }
}

fn grant_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    expand(
        Hkdf::<Sha256>::new(Some(&salt), shared),
        GRANT_INFO,
        key.as_mut_slice(),
    );
    key
}

fn expand(hk: Hkdf<Sha256>, info: &[u8], out: &mut [u8]) {
    // Only fails for outputs longer than 255 hash lengths; ours are at most 32 bytes.
    let _ = hk.expand(info, out);
}

/// Who writes a log: a native Wharf identity or an imported Effect v3 identity.
#[derive(Clone)]
pub enum Identity {
    Native(NativeIdentity),
    Effect(EffectIdentity),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("log", &self.log())
            .field("suite", &self.suite())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new native identity.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Identity::Native(NativeIdentity::generate(rng))
    }

    /// Reads either form: `wharf-identity-v1:…`, or Effect's `Identity.encodeString`.
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim();
        if s.starts_with(NATIVE_PREFIX) {
            NativeIdentity::parse(s).map(Identity::Native)
        } else {
            EffectIdentity::parse(s)
                .map(Identity::Effect)
                .map_err(|e| match e {
                    CryptoError::Identity(reason) => CryptoError::Identity(format!(
                        "expected {NATIVE_PREFIX}… or an Effect identity string ({reason})"
                    )),
                    other => other,
                })
        }
    }

    /// The log this identity writes: the relay's `publicKey`.
    pub fn log(&self) -> &str {
        match self {
            Identity::Native(n) => &n.read.log,
            Identity::Effect(e) => &e.read.log,
        }
    }

    pub fn read_key(&self) -> &ReadKey {
        match self {
            Identity::Native(n) => &n.read,
            Identity::Effect(e) => &e.read,
        }
    }

    /// The suite this identity writes with.
    pub fn suite(&self) -> Suite {
        match self {
            Identity::Native(_) => Suite::XChaCha20Poly1305,
            Identity::Effect(_) => Suite::Aes256Gcm,
        }
    }

    /// The key pair that receives grants (native identities only).
    pub fn grant_keys(&self) -> Option<&GrantKeyPair> {
        match self {
            Identity::Native(n) => Some(&n.grant_keys),
            Identity::Effect(_) => None,
        }
    }
}

/// The serialised form, secret included: `wharf-identity-v1:…` or Effect's string.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Native(n) => write!(
                f,
                "{NATIVE_PREFIX}{}",
                URL_SAFE_NO_PAD.encode(n.root.as_slice())
            ),
            Identity::Effect(e) => f.write_str(&e.encode_string()),
        }
    }
}

impl fmt::Debug for NativeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NativeIdentity")
            .field("log", &self.read.log)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for EffectIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EffectIdentity")
            .field("public_key", &self.read.log)
            .finish_non_exhaustive()
    }
}

/// A 32-byte root secret. HKDF-SHA256 (salt `"wharf/v1"`) derives everything else:
/// `"log-name"` → 16 bytes, hex: the log name; `"entry-key"` → the XChaCha20-Poly1305 key;
/// `"x25519"` → the grant-receiving secret.
#[derive(Clone)]
pub struct NativeIdentity {
    root: Zeroizing<[u8; 32]>,
    read: ReadKey,
    grant_keys: GrantKeyPair,
}

impl NativeIdentity {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut root = [0u8; 32];
        rng.fill_bytes(&mut root);
        Self::from_root(root)
    }

    pub fn from_root(root: [u8; 32]) -> Self {
        let root = Zeroizing::new(root);
        let hk = || Hkdf::<Sha256>::new(Some(HKDF_SALT), root.as_slice());
        let mut name = [0u8; 16];
        expand(hk(), b"log-name", &mut name);
        let mut key = [0u8; 32];
        expand(hk(), b"entry-key", &mut key);
        let mut x = Zeroizing::new([0u8; 32]);
        expand(hk(), b"x25519", x.as_mut_slice());
        let log = hex::encode(name);
        NativeIdentity {
            root,
            read: ReadKey::new(log, EntryKey::from_bytes(key)),
            grant_keys: GrantKeyPair::from_secret_bytes(*x),
        }
    }

    fn parse(s: &str) -> Result<Self, CryptoError> {
        let body = s.strip_prefix(NATIVE_PREFIX).unwrap_or(s);
        let raw = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(body)
                .map_err(|e| CryptoError::Identity(format!("bad base64url: {e}")))?,
        );
        let root: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            CryptoError::Identity(format!("the secret is {} bytes, expected 32", raw.len()))
        })?;
        Ok(Self::from_root(root))
    }
}

/// An Effect v3 `Identity`: `publicKey` (an opaque log name, usually a UUID) and the 32-byte
/// AES-256-GCM key Effect calls `privateKey`.
#[derive(Clone)]
pub struct EffectIdentity {
    read: ReadKey,
}

#[derive(Deserialize)]
struct EffectJson {
    #[serde(rename = "publicKey")]
    public_key: String,
    #[serde(rename = "privateKey")]
    private_key: String,
}

impl EffectIdentity {
    pub fn new(public_key: impl Into<String>, key: [u8; 32]) -> Self {
        EffectIdentity {
            read: ReadKey::new(public_key, EntryKey::from_bytes(key)),
        }
    }

    /// Like Effect's `Identity.makeRandom()`: a UUIDv4 string and 32 random bytes.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut u = [0u8; 16];
        rng.fill_bytes(&mut u);
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let public_key = uuid::Builder::from_random_bytes(u).into_uuid().to_string();
        Self::new(public_key, key)
    }

    /// Reads Effect's `Identity.encodeString`: base64url of
    /// `{"publicKey": "...", "privateKey": "<base64 of the key>"}`.
    pub fn parse(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim();
        let json = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .or_else(|_| URL_SAFE.decode(s))
            .map_err(|e| CryptoError::Identity(format!("bad base64url: {e}")))?;
        let json = Zeroizing::new(json);
        let parsed: EffectJson = serde_json::from_slice(&json)
            .map_err(|e| CryptoError::Identity(format!("bad identity JSON: {e}")))?;
        let key = Zeroizing::new(
            STANDARD
                .decode(parsed.private_key.as_bytes())
                .map_err(|e| CryptoError::Identity(format!("privateKey is not base64: {e}")))?,
        );
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
            CryptoError::Identity(format!(
                "privateKey is {} bytes; Wharf supports Effect's default 32-byte (AES-256) keys",
                key.len()
            ))
        })?;
        Ok(Self::new(parsed.public_key, key))
    }

    /// Effect's `Identity.encodeString` form.
    pub fn encode_string(&self) -> String {
        let json = Zeroizing::new(
            serde_json::json!({
                "publicKey": self.read.log,
                "privateKey": STANDARD.encode(self.read.key.as_bytes()),
            })
            .to_string(),
        );
        URL_SAFE_NO_PAD.encode(json.as_bytes())
    }

    pub fn read_key(&self) -> &ReadKey {
        &self.read
    }
}
