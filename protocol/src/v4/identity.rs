//! A v4 identity and what it signs and encrypts: the session's signed challenge
//! (`EventLogSessionAuth`) and a batch's AES-256-GCM encryption (`EventLogEncryption`).
//!
//! An identity is a `publicKey` (a string, a UUID in Effect's apps) and a 32-byte root secret.
//! From the secret: the AES key `SHA-256("effect/eventlog/identity/v1/encryption" ‖ 0 ‖ secret)`
//! and the Ed25519 seed `SHA-256("effect/eventlog/identity/v1/signing" ‖ 0 ‖ secret)`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::error::V4Error;
use super::eventlog::ENTRY_ID_BYTES;

/// The context string that starts every signed challenge.
pub const AUTH_CONTEXT: &str = "eventlog-auth-v1";
/// The bytes of a challenge.
pub const CHALLENGE_BYTES: usize = 32;
/// The bytes of a batch's iv.
pub const IV_BYTES: usize = 12;

/// The bytes a client signs to authenticate `public_key` on a session: five fields, each a
/// u32 big-endian length and its bytes (the context, the remote id as lowercase hex, the
/// challenge, the public key, the signing public key).
pub fn auth_payload(
    remote_id: &[u8; 16],
    challenge: &[u8],
    public_key: &str,
    signing_public_key: &[u8],
) -> Vec<u8> {
    let remote = hex::encode(remote_id);
    let fields: [&[u8]; 5] = [
        AUTH_CONTEXT.as_bytes(),
        remote.as_bytes(),
        challenge,
        public_key.as_bytes(),
        signing_public_key,
    ];
    let mut out = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Checks an `Authenticate`: `signature` over the session's payload by `signing_public_key`.
pub fn verify_auth(
    remote_id: &[u8; 16],
    challenge: &[u8],
    public_key: &str,
    signing_public_key: &[u8],
    signature: &[u8],
) -> Result<(), V4Error> {
    let key = <[u8; 32]>::try_from(signing_public_key)
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| V4Error::Invalid("the signing public key is not an Ed25519 key".into()))?;
    let signature = Signature::from_slice(signature)
        .map_err(|_| V4Error::Invalid("the signature is not 64 bytes".into()))?;
    let payload = auth_payload(remote_id, challenge, public_key, signing_public_key);
    key.verify_strict(&payload, &signature)
        .map_err(|_| V4Error::Invalid("the signature does not verify".into()))
}

fn derive(label: &str, secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(secret);
    Zeroizing::new(h.finalize().into())
}

/// An Effect v4 identity: its public key and root secret.
pub struct V4Identity {
    pub public_key: String,
    secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for V4Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Identity")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl V4Identity {
    pub fn new(public_key: String, secret: [u8; 32]) -> Self {
        Self {
            public_key,
            secret: Zeroizing::new(secret),
        }
    }

    /// A new identity: a random UUID for its public key and a random root secret.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let effect = crate::crypto::EffectIdentity::generate(rng);
        Self::new(
            effect.read_key().log().to_owned(),
            *effect.read_key().key().as_bytes(),
        )
    }

    /// Reads Effect's identity string (`EventLog.encodeIdentityString`): base64url of
    /// `{"publicKey", "privateKey": base64 of the root secret}`. v3 identity strings have the
    /// same form (their key is the AES key itself): which one a string is, its user says.
    pub fn parse(s: &str) -> Result<Self, V4Error> {
        let effect = crate::crypto::EffectIdentity::parse(s)
            .map_err(|e| V4Error::Crypto(format!("not an Effect identity string: {e}")))?;
        Ok(Self::new(
            effect.read_key().log().to_owned(),
            *effect.read_key().key().as_bytes(),
        ))
    }

    /// Effect's identity string, as `EventLog.encodeIdentityString` writes it.
    pub fn encode_string(&self) -> String {
        crate::crypto::EffectIdentity::new(self.public_key.clone(), *self.secret).encode_string()
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&derive("effect/eventlog/identity/v1/signing", &self.secret))
    }

    /// The Ed25519 public key this identity authenticates with.
    pub fn signing_public_key(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }

    /// Signs a session's challenge (the `signature` of `Authenticate`).
    pub fn sign_challenge(&self, remote_id: &[u8; 16], challenge: &[u8]) -> [u8; 64] {
        let key = self.signing_key();
        let payload = auth_payload(
            remote_id,
            challenge,
            &self.public_key,
            key.verifying_key().as_bytes(),
        );
        key.sign(&payload).to_bytes()
    }

    fn cipher(&self) -> Aes256Gcm {
        let key = derive("effect/eventlog/identity/v1/encryption", &self.secret);
        Aes256Gcm::new_from_slice(&key[..]).expect("a 32-byte key")
    }

    /// Encrypts a batch's plaintext (an encoded array of entries) for `store_id`.
    pub fn encrypt_batch(
        &self,
        store_id: &str,
        entry_ids: &[[u8; ENTRY_ID_BYTES]],
        iv: &[u8; IV_BYTES],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, V4Error> {
        let aad = batch_aad(store_id, entry_ids);
        self.cipher()
            .encrypt(
                Nonce::from_slice(iv),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| V4Error::Crypto("the batch could not be encrypted".into()))
    }

    /// Decrypts a batch: its store id and entry ids are authenticated with it.
    pub fn decrypt_batch(
        &self,
        store_id: &str,
        entry_ids: &[[u8; ENTRY_ID_BYTES]],
        iv: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, V4Error> {
        if iv.len() != IV_BYTES {
            return Err(V4Error::Crypto(format!(
                "an iv of {} bytes, not {IV_BYTES}",
                iv.len()
            )));
        }
        let aad = batch_aad(store_id, entry_ids);
        self.cipher()
            .decrypt(
                Nonce::from_slice(iv),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                V4Error::Crypto(
                    "the batch does not decrypt with this identity (another key, store or entry ids)"
                        .into(),
                )
            })
    }
}

/// The associated data of a batch: `u32be(len(storeId)) ‖ storeId ‖ entryIds…`.
fn batch_aad(store_id: &str, entry_ids: &[[u8; ENTRY_ID_BYTES]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + store_id.len() + entry_ids.len() * ENTRY_ID_BYTES);
    aad.extend_from_slice(&(store_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(store_id.as_bytes());
    for id in entry_ids {
        aad.extend_from_slice(id);
    }
    aad
}
