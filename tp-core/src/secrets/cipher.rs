//! AES-256-GCM sealing of secret values, bound to the secret's name.
//!
//! A sealed value is `version byte ‖ ciphertext ‖ 16-byte tag`, a fresh
//! random 96-bit nonce, and the id of the key that sealed it. The associated
//! data is a fixed label, the version and the secret's name, so a ciphertext
//! copied to another row (or re-labelled with another version) does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroize;
use sha2::{Digest, Sha256};

use crate::config::{EncryptionConfig, vars};
use crate::error::{Error, Result};

/// Format version written as the first byte of every ciphertext.
pub const FORMAT_V1: u8 = 1;
/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of a key id in hex characters.
pub const KEY_ID_LEN: usize = 16;

const KEY_ID_LABEL: &[u8] = b"tenant-plane/secrets/key-id/v1\0";
const AAD_LABEL: &[u8] = b"tenant-plane/secrets/value\0";

/// The id of `key`: the first 16 hex characters of SHA-256 over a fixed
/// label and the key. It tells which key sealed a row and reveals nothing of it.
pub fn key_id(key: &[u8; 32]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(KEY_ID_LABEL);
    hasher.update(key);
    let mut id = hex::encode(hasher.finalize());
    id.truncate(KEY_ID_LEN);
    id
}

/// A value as stored: ciphertext (with version byte and tag), nonce, key id.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// `FORMAT_V1 ‖ AES-256-GCM ciphertext ‖ tag`.
    pub ciphertext: Vec<u8>,
    /// The 96-bit nonce used for this ciphertext only.
    pub nonce: Vec<u8>,
    /// Id of the key that sealed it.
    pub key_id: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

struct DataKey {
    id: String,
    cipher: Aes256Gcm,
}

impl DataKey {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            id: key_id(key),
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
        }
    }
}

/// The current key (seals and opens) and the previous one (opens only).
pub struct Keyring {
    current: DataKey,
    previous: Option<DataKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

fn associated_data(name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 1 + name.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(FORMAT_V1);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// The secret was sealed with a key this replica does not have.
pub(super) fn key_unavailable(name: &str, key_id: &str) -> Error {
    Error::unavailable(
        "encryption_key_unavailable",
        format!(
            "secret {name:?} is encrypted with key {key_id}, which is not configured; \
             set {} (or {}) to that key to read it",
            vars::ENCRYPTION_KEY_PREVIOUS,
            vars::ENCRYPTION_KEY
        ),
        None,
    )
}

/// The stored ciphertext does not authenticate: altered, moved or corrupt.
pub(super) fn decryption_failed(name: &str) -> Error {
    Error::unavailable(
        "decryption_failed",
        format!(
            "secret {name:?} could not be decrypted: its stored ciphertext does not authenticate"
        ),
        None,
    )
}

impl Keyring {
    /// A keyring of `current` and, for rotation, `previous`.
    pub fn new(current: &[u8; 32], previous: Option<&[u8; 32]>) -> Self {
        let current = DataKey::new(current);
        // The same key configured twice is one key.
        let previous = previous
            .map(DataKey::new)
            .filter(|previous| previous.id != current.id);
        Self { current, previous }
    }

    /// The keys of the configuration.
    pub fn from_config(config: &EncryptionConfig) -> Self {
        Self::new(
            config.key.expose_secret(),
            config.previous.as_ref().map(|k| k.expose_secret()),
        )
    }

    /// Id of the key new values are sealed with.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Id of the previous key, when one is configured.
    pub fn previous_key_id(&self) -> Option<&str> {
        self.previous.as_ref().map(|k| k.id.as_str())
    }

    /// Seals `plaintext` as the value of secret `name` under the current key.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Sealed> {
        use rand::TryRngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| Error::internal(format!("rng: {e}")))?;
        let aad = associated_data(name);
        let body = self
            .current
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::internal("aes-gcm encryption failed"))?;
        let mut ciphertext = Vec::with_capacity(1 + body.len());
        ciphertext.push(FORMAT_V1);
        ciphertext.extend_from_slice(&body);
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
            key_id: self.current.id.clone(),
        })
    }

    /// Opens the value of secret `name` with whichever key sealed it.
    ///
    /// Fails with `encryption_key_unavailable` when that key is not
    /// configured, and `decryption_failed` when the ciphertext does not
    /// authenticate; never returns unauthenticated bytes.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String> {
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| key_unavailable(name, &sealed.key_id))?;
        let Some((&version, body)) = sealed.ciphertext.split_first() else {
            return Err(decryption_failed(name));
        };
        let Ok(nonce) = <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice()) else {
            return Err(decryption_failed(name));
        };
        if version != FORMAT_V1 {
            return Err(decryption_failed(name));
        }
        let aad = associated_data(name);
        let plaintext = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| decryption_failed(name))?;
        String::from_utf8(plaintext).map_err(|e| {
            e.into_bytes().zeroize();
            decryption_failed(name)
        })
    }
}
